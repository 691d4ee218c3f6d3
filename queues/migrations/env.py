"""Alembic environment: runs on the connection `ostinato.queues.migrate` hands it.

Running `alembic` from the repository (alembic.ini) works too, with `OSTINATO_DATABASE_URL`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from ostinato.deploy.settings import Settings
from ostinato.queues.database import connect
from ostinato.queues.tables import Base


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    database = connect(Settings().effective_database_url)
    with database.engine.connect() as conn:
        _run(conn)
        conn.commit()
    database.dispose()
