"""`/api/notifications`: webhook rules (create, list, read, delete) and their deliveries."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, status

from ostinato.deploy.notifications import (
    DeliveryStatus,
    Notification,
    NotificationDelivery,
    NotificationSpec,
)
from ostinato.queues import notifications
from ostinato.scheduler.api.dependencies import DatabaseDep
from ostinato.scheduler.auth import AdminOnly

router = APIRouter(prefix="/notifications", tags=["notifications"])


@router.post("", response_model=Notification, status_code=status.HTTP_201_CREATED)
def create(body: NotificationSpec, database: DatabaseDep) -> Notification:
    with database.write() as conn:
        return notifications.create(conn, body)


# Reading rules is for admins: webhook URLs often carry the receiver's secret.
@router.get("", response_model=list[Notification], dependencies=[AdminOnly])
def list_all(database: DatabaseDep) -> list[Notification]:
    """Rules, oldest first, each with its deliveries counted by status."""
    with database.read() as conn:
        return notifications.list_notifications(conn)


@router.get("/deliveries", response_model=list[NotificationDelivery])
def list_deliveries(
    database: DatabaseDep,
    notification: uuid.UUID | None = None,
    delivery_status: Annotated[DeliveryStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[NotificationDelivery]:
    """Deliveries, newest first: of every rule, or of one (`notification`)."""
    with database.read() as conn:
        return notifications.list_deliveries(conn, notification, delivery_status,
                                             limit=limit, offset=offset)


@router.get("/{notification_id}", response_model=Notification, dependencies=[AdminOnly])
def read(notification_id: uuid.UUID, database: DatabaseDep) -> Notification:
    with database.read() as conn:
        return notifications.get(conn, notification_id)


@router.delete("/{notification_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove(notification_id: uuid.UUID, database: DatabaseDep) -> None:
    """Delete a rule and its deliveries; documents not yet sent are dropped."""
    with database.write() as conn:
        notifications.remove(conn, notification_id)
