"""Settings: flags, then `OSTINATO_*` environment variables, then these defaults."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """One settings object for every process; each reads only the fields it needs."""

    # Secrets stay out of reprs and of validation errors (which quote a bad value otherwise).
    model_config = SettingsConfigDict(env_prefix="OSTINATO_", extra="ignore",
                                      hide_input_in_errors=True)

    home: Path = Field(default_factory=lambda: Path.home() / ".ostinato")
    database_url: str | None = Field(default=None, repr=False)  # may hold a password
    api_url: str = "http://127.0.0.1:4200/api"
    api_key: str | None = Field(default=None, repr=False)  # what clients send
    # A key the server accepts as admin besides those in its database: for a first start where
    # clients are not on the server's host (containers), before `token create` has been run.
    admin_key: SecretStr | None = Field(default=None, min_length=32)
    host: str = "127.0.0.1"
    port: int = Field(default=4200, ge=0, le=65535)
    late_threshold_seconds: float = Field(default=15.0, ge=0)
    max_bundle_bytes: int = Field(default=50 * 1024 * 1024, gt=0)
    log_level: str = "info"
    scheduler_interval_seconds: float = Field(default=2.0, gt=0)
    lease_seconds: float = Field(default=30.0, gt=0, le=3600)  # a claim's life between heartbeats
    cancel_grace_seconds: float = Field(default=30.0, ge=0)  # SIGTERM to SIGKILL when cancelling
    run_scheduler: bool = True  # whether `server start` also runs the scheduling loops
    # Finished runs (with their logs and task runs) older than this are deleted; `none` keeps all.
    retention_days: float | None = Field(default=90, gt=0, le=36_500)
    # Webhook deliveries: wait before the first retry (doubling after each failure), per POST.
    notification_retry_seconds: float = Field(default=5.0, gt=0, le=3600)
    notification_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    ssl_certfile: Path | None = None  # `server start` serves HTTPS with this certificate (PEM)…
    ssl_keyfile: Path | None = None  # …and this private key; both or neither
    ca_bundle: Path | None = None  # clients trust these CAs (PEM) for https:// API URLs

    @field_validator("retention_days", mode="before")
    @classmethod
    def _keep_all(cls, value: object) -> object:
        """`none` keeps every run: an environment variable cannot say None."""
        return None if isinstance(value, str) and value.strip().lower() == "none" else value

    @cached_property
    def effective_database_url(self) -> str:
        """The configured URL, or a SQLite file under `home`."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'ostinato.db'}"
