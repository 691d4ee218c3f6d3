"""Settings: flags, then `OSTINATO_*` environment variables, then these defaults."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """One settings object for every process; each reads only the fields it needs."""

    model_config = SettingsConfigDict(env_prefix="OSTINATO_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".ostinato")
    database_url: str | None = None
    api_url: str = "http://127.0.0.1:4200/api"
    api_key: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=4200, ge=0, le=65535)
    late_threshold_seconds: float = Field(default=15.0, ge=0)
    max_bundle_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    log_level: str = "info"
    scheduler_interval_seconds: float = Field(default=2.0, gt=0)
    lease_seconds: float = Field(default=30.0, gt=0, le=3600)  # a claim's life between heartbeats
    cancel_grace_seconds: float = Field(default=30.0, ge=0)  # SIGTERM to SIGKILL when cancelling
    run_scheduler: bool = True  # whether `server start` also runs the scheduling loops

    @cached_property
    def effective_database_url(self) -> str:
        """The configured URL, or a SQLite file under `home`."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'ostinato.db'}"
