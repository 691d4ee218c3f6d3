"""`ostinato db …`: the server's database, outside the server process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ostinato.cli import output

if TYPE_CHECKING:
    from ostinato.queues.database import Database

app = output.new_app("Manage the server's database schema.")


def _revision(database: Database) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with database.engine.connect() as conn:
        revision: str | None = MigrationContext.configure(conn).get_current_revision()
        return revision


def _migrate(url: str) -> tuple[str | None, str | None]:
    """Upgrade the database at `url`; returns its schema revision before and after."""
    from ostinato.queues.database import connect
    from ostinato.queues.migrate import upgrade as upgrade_schema

    database = connect(url)
    try:
        before = _revision(database)
        upgrade_schema(database)
        return before, _revision(database)
    finally:
        database.dispose()


@app.command()
def upgrade() -> None:
    """Create or migrate the configured database to the current schema (safe to repeat).

    The database is OSTINATO_DATABASE_URL, or SQLite at $OSTINATO_HOME/ostinato.db. The server
    also upgrades it when it starts; run this first when several servers share one database.
    """
    from alembic.util import CommandError
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from ostinato.deploy.errors import OstinatoError

    url = output.load_settings().effective_database_url
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        before, after = _migrate(url)
    except (SQLAlchemyError, CommandError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise OstinatoError(f"cannot upgrade the database at {shown}: {reason}") from None
    if before == after:
        print(f"{shown}: already at schema revision {after}; nothing to do")
    else:
        print(f"{shown}: upgraded schema from {before or 'empty'} to revision {after}")
