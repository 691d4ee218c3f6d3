"""`/api/work-queues`: create with a filter, list, read, edit, pause, resume, delete."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Query, status

from ostinato.deploy.schemas import FlowRun, WorkQueue, WorkQueueSpec, WorkQueueUpdate
from ostinato.queues import work_queues
from ostinato.scheduler.api.dependencies import DatabaseDep, SettingsDep, late_after

router = APIRouter(prefix="/work-queues", tags=["work queues"])


@router.post("", response_model=WorkQueue, status_code=status.HTTP_201_CREATED)
def create(body: WorkQueueSpec, database: DatabaseDep) -> WorkQueue:
    with database.write() as conn:
        return work_queues.create(conn, body)


@router.get("", response_model=list[WorkQueue])
def list_all(database: DatabaseDep) -> list[WorkQueue]:
    with database.read() as conn:
        return work_queues.list_queues(conn)


@router.get("/{name}/preview", response_model=list[FlowRun])
def preview(name: str, database: DatabaseDep, settings: SettingsDep,
            hours: Annotated[float, Query(gt=0, le=24 * 366)] = 1.0,
            limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[FlowRun]:
    """The waiting runs this queue would hand out in the next `hours`, in hand-out order."""
    until = datetime.now(UTC) + timedelta(hours=hours)
    with database.read() as conn:
        return work_queues.preview(conn, name, until, limit, late_after(settings))


@router.get("/{name}", response_model=WorkQueue)
def read(name: str, database: DatabaseDep) -> WorkQueue:
    with database.read() as conn:
        return work_queues.get(conn, name)


@router.patch("/{name}", response_model=WorkQueue)
def edit(name: str, body: WorkQueueUpdate, database: DatabaseDep) -> WorkQueue:
    with database.write() as conn:
        return work_queues.edit(conn, name, body)


@router.post("/{name}/pause", response_model=WorkQueue)
def pause(name: str, database: DatabaseDep) -> WorkQueue:
    with database.write() as conn:
        return work_queues.edit(conn, name, WorkQueueUpdate(paused=True))


@router.post("/{name}/resume", response_model=WorkQueue)
def resume(name: str, database: DatabaseDep) -> WorkQueue:
    with database.write() as conn:
        return work_queues.edit(conn, name, WorkQueueUpdate(paused=False))


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
def remove(name: str, database: DatabaseDep) -> None:
    with database.write() as conn:
        work_queues.remove(conn, name)
