"""Schema migrations: bring any database to the current schema, idempotently."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from ostinato.queues.database import Database

MIGRATIONS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x05717A70  # an arbitrary, fixed advisory-lock key


def _config(database: Database) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def upgrade(database: Database) -> None:
    """Apply every migration not yet applied (a no-op on an up-to-date database)."""
    config = _config(database)
    with database.engine.connect() as conn:
        if database.dialect == "postgresql":
            # Servers and schedulers starting together on a fresh database take turns.
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        conn.commit()
