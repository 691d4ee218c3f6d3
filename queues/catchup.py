"""Catch-up for runs already waiting: slots whose time passed by more than the deployment's
`misfire_grace` without a start (agents down, queue paused, limits full).

`latest` keeps the newest missed run of each schedule and skips the older ones (`superseded`);
`none` skips them all (`catchup_missed`); `all` keeps everything. Manual and backfilled runs
(`auto_scheduled` false) are exempt.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, select

from ostinato.deploy.states import Reason, StateType
from ostinato.queues import runs
from ostinato.queues.tables import deployments, flow_runs

ACTOR = "scheduler"


def skip_missed_runs(conn: Connection, now: datetime) -> int:
    """Apply the catch-up policies to waiting runs; returns how many runs were skipped."""
    superseded, missed = _decide(_overdue(conn, now), now)
    for ids, reason in ((superseded, Reason.SUPERSEDED), (missed, Reason.CATCHUP_MISSED)):
        if ids:
            runs.set_states(conn, flow_runs.c.id.in_(ids) & (flow_runs.c.state == "SCHEDULED"),
                            StateType.SKIPPED, reason=reason, actor=ACTOR,
                            message="missed its time by more than the misfire grace")
    return len(superseded) + len(missed)


def _overdue(conn: Connection, now: datetime) -> list[Any]:
    """Waiting auto-scheduled runs already due, of deployments that do not catch up `all`."""
    r, d = flow_runs.c, deployments.c
    query = (
        select(r.id, r.deployment_id, r.schedule_slug, r.nominal_time, r.scheduled_time,
               d.catchup, d.misfire_grace)
        .join(deployments, d.id == r.deployment_id)
        .where(and_(r.state == StateType.SCHEDULED.value, r.scheduled_time < now,
                    r.auto_scheduled.is_(True), d.catchup != "all"))
    )
    return list(conn.execute(query))


def _decide(rows: list[Any], now: datetime) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
    missed = [row for row in rows
              if row.scheduled_time < now - timedelta(seconds=row.misfire_grace)]
    by_schedule: dict[tuple[uuid.UUID, str], list[Any]] = defaultdict(list)
    for row in missed:
        by_schedule[(row.deployment_id, row.schedule_slug)].append(row)
    superseded: list[uuid.UUID] = []
    skipped: list[uuid.UUID] = []
    for group in by_schedule.values():
        group.sort(key=lambda row: row.nominal_time)
        if group[0].catchup == "latest":
            superseded.extend(row.id for row in group[:-1])
        else:
            skipped.extend(row.id for row in group)
    return superseded, skipped
