"""Schema migrations: bring any database to the current schema, idempotently."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from ostinato.queues.database import Database

MIGRATIONS = Path(__file__).parent / "migrations"


def _config(database: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(database: Database) -> None:
    """Apply every migration not yet applied (a no-op on an up-to-date database)."""
    config = _config(database)
    with database.engine.connect() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        conn.commit()
