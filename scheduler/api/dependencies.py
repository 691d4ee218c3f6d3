"""Request dependencies: the app's database and settings, resolved per request (no globals)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import Depends, Request

from ostinato.deploy.errors import InvalidInput
from ostinato.deploy.settings import Settings
from ostinato.queues.database import Database
from ostinato.queues.notify import WorkNotifier


def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _notifier(request: Request) -> WorkNotifier:
    notifier: WorkNotifier = request.app.state.notifier
    return notifier


DatabaseDep = Annotated[Database, Depends(_database)]
NotifierDep = Annotated[WorkNotifier, Depends(_notifier)]
SettingsDep = Annotated[Settings, Depends(_settings)]


def late_after(settings: Settings) -> timedelta:
    return timedelta(seconds=settings.late_threshold_seconds)


def as_utc(moment: datetime | None) -> datetime | None:
    """Query times without an offset are taken as UTC."""
    if moment is None:
        return None
    try:
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    except OverflowError:
        raise InvalidInput(f"{moment.isoformat()} is out of range once converted to UTC") from None
