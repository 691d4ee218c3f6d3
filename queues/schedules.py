"""Schedules in the store, as the scheduler sees them: which need a visit, and marking visits.

A tick asks for schedules whose `visit_at` has come (or is NULL: new, edited or resumed), locks
them — PostgreSQL skips rows another scheduler holds, SQLite has one writer anyway — inserts their
runs and moves `visit_at` forward, all in one transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, update

from ostinato.deploy.schedules import SCHEDULE_ADAPTER, Cron, Interval, RRule
from ostinato.queues.database import Database
from ostinato.queues.tables import deployments, flow_runs, schedules

NEVER = datetime(9999, 1, 1, tzinfo=UTC)
"""`visit_at` of a schedule that needs no visit: paused, inactive or ended."""


@dataclass(frozen=True)
class DueSchedule:
    """A schedule to visit, with what its runs inherit from the deployment."""

    id: uuid.UUID
    deployment_id: uuid.UUID
    deployment: str  # flow/name
    definition: Cron | Interval | RRule
    scheduled_until: datetime | None
    parameters: dict[str, Any]
    tags: list[str]
    catchup: str
    misfire_grace: float


def due_schedules(conn: Connection, database: Database, now: datetime, limit: int
                  ) -> list[DueSchedule]:
    """Up to `limit` active schedules of unpaused deployments whose visit time has come."""
    s, d = schedules.c, deployments.c
    query = (
        select(s.id, s.deployment_id, s.definition, s.scheduled_until, d.full_name,
               d.parameters, d.tags, d.catchup, d.misfire_grace)
        .join(deployments, d.id == s.deployment_id)
        .where(s.visit_at <= now, s.active.is_(True), d.paused.is_(False))
        .order_by(s.visit_at)
        .limit(limit)
    )
    if database.skip_locked:
        query = query.with_for_update(of=schedules, skip_locked=True)
    return [
        DueSchedule(row.id, row.deployment_id, row.full_name,
                    SCHEDULE_ADAPTER.validate_python(row.definition), row.scheduled_until,
                    row.parameters, row.tags, row.catchup, row.misfire_grace)
        for row in conn.execute(query)
    ]


def runs_created(conn: Connection, due: list[DueSchedule]) -> dict[tuple[uuid.UUID, str], int]:
    """How many runs each of these schedules has produced (their `max_runs` countdowns), in one
    query; only schedules with a countdown are counted."""
    counted = [d for d in due if d.definition.max_runs is not None]
    if not counted:
        return {}
    c = flow_runs.c
    query = (select(c.deployment_id, c.schedule_slug, func.count())
             .where(c.deployment_id.in_({d.deployment_id for d in counted}),
                    c.auto_scheduled.is_(True))
             .group_by(c.deployment_id, c.schedule_slug))
    return {(deployment_id, slug): n for deployment_id, slug, n in conn.execute(query)}


@dataclass(frozen=True)
class Visit:
    """The outcome of visiting one schedule: how far it now reaches, and when to look again."""

    schedule_id: uuid.UUID
    scheduled_until: datetime | None
    visit_at: datetime


def mark_visited(conn: Connection, visits: list[Visit]) -> None:
    if not visits:
        return
    statement = (update(schedules).where(schedules.c.id == bindparam("visited_id"))
                 .values(scheduled_until=bindparam("until"), visit_at=bindparam("visit")))
    conn.execute(statement, [
        {"visited_id": v.schedule_id, "until": v.scheduled_until, "visit": v.visit_at}
        for v in visits
    ])
