"""Work queues in the store: named filters with a priority, a concurrency limit and a pause."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from ostinato.deploy.errors import Conflict, NotFound
from ostinato.deploy.schemas import FlowRun, WorkQueue, WorkQueueSpec, WorkQueueUpdate
from ostinato.deploy.states import StateType
from ostinato.queues import runs
from ostinato.queues.database import mark_work_available
from ostinato.queues.filters import sql_filter
from ostinato.queues.tables import flow_runs, new_id, utcnow, work_queues


def create(conn: Connection, spec: WorkQueueSpec) -> WorkQueue:
    if _find(conn, spec.name) is not None:
        raise Conflict(f"work queue {spec.name!r} already exists")
    now = utcnow()
    try:
        conn.execute(insert(work_queues).values(
            id=new_id(), created=now, updated=now, **spec.model_dump(mode="json")))
    except IntegrityError as exc:  # a concurrent create of the same name won
        raise Conflict(f"work queue {spec.name!r} already exists") from exc
    return get(conn, spec.name)


def _find(conn: Connection, name: str) -> Any:
    return conn.execute(select(work_queues).where(work_queues.c.name == name)).first()


def get(conn: Connection, name: str) -> WorkQueue:
    row = _find(conn, name)
    if row is None:
        raise NotFound(f"work queue {name!r} not found")
    return WorkQueue.model_validate(row._mapping)


def list_queues(conn: Connection) -> list[WorkQueue]:
    query = select(work_queues).order_by(work_queues.c.priority, work_queues.c.name)
    return [WorkQueue.model_validate(row._mapping) for row in conn.execute(query)]


def edit(conn: Connection, name: str, changes: WorkQueueUpdate) -> WorkQueue:
    get(conn, name)
    values = changes.model_dump(mode="json", exclude_unset=True)
    if values:
        conn.execute(update(work_queues).where(work_queues.c.name == name)
                     .values(updated=utcnow(), **values))
        mark_work_available(conn)  # resumed, widened or given more slots: polls look again
    return get(conn, name)


def remove(conn: Connection, name: str) -> None:
    get(conn, name)
    conn.execute(delete(work_queues).where(work_queues.c.name == name))


def preview(conn: Connection, name: str, until: datetime, limit: int,
            late_after: timedelta = runs.DEFAULT_LATE_AFTER) -> list[FlowRun]:
    """The waiting runs the queue would hand out up to `until`, in hand-out order."""
    queue = get(conn, name)
    c = flow_runs.c
    query = (select(flow_runs)
             .where(c.state == StateType.SCHEDULED.value, c.scheduled_time <= until,
                    sql_filter(queue.filter, conn.dialect.name))
             .order_by(c.scheduled_time, c.id).limit(limit))
    late_before = utcnow() - late_after
    return [runs.to_schema(row._mapping, late_before) for row in conn.execute(query)]
