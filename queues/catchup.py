"""Catch-up for runs already waiting: slots whose time passed by more than the deployment's
`misfire_grace` without a start (agents down, queue paused, limits full).

`latest` keeps the newest missed run of each schedule and skips the older ones (`superseded`);
`none` skips them all (`catchup_missed`); `all` keeps everything. Manual and backfilled runs
(`auto_scheduled` false) are exempt.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, func, select

from ostinato.deploy.states import Reason, StateType
from ostinato.queues import runs
from ostinato.queues.tables import deployments, flow_runs

ACTOR = "scheduler"


def skip_missed_runs(conn: Connection, now: datetime,
                     among: Collection[uuid.UUID] | None = None) -> list[uuid.UUID]:
    """Apply the catch-up policies to waiting runs (all of them, or only those `among` the
    given ids); returns the ids of the runs it skipped."""
    superseded, missed = _decide(_overdue(conn, now, among), now)
    if among is not None:  # touch no other row: a claim must not wait for another's locks
        superseded, missed = ([i for i in ids if i in among] for ids in (superseded, missed))
    waiting = flow_runs.c.state == StateType.SCHEDULED.value
    skipped: list[uuid.UUID] = []
    for ids, reason in ((superseded, Reason.SUPERSEDED), (missed, Reason.CATCHUP_MISSED)):
        if ids:  # counted as moved: another scheduler may have skipped some already
            skipped += runs.set_states(
                conn, flow_runs.c.id.in_(ids) & waiting, StateType.SKIPPED, reason=reason,
                actor=ACTOR, message="missed its time by more than the misfire grace")
    return skipped


def _overdue(conn: Connection, now: datetime, among: Collection[uuid.UUID] | None
             ) -> list[Any]:
    """Auto-scheduled runs already due and not skipped, of deployments that do not catch up
    `all`. Claimed and finished ones count too: `latest` keeps the newest *slot*, so an older
    one still waiting is superseded even when the newest is already running."""
    r, d = flow_runs.c, deployments.c
    due_waiting = and_(r.state == StateType.SCHEDULED.value, r.scheduled_time < now)
    if among is not None:
        due_waiting = and_(due_waiting, r.id.in_(among))
    query = (
        select(r.id, r.state, r.deployment_id, r.schedule_slug, r.nominal_time,
               r.scheduled_time, d.catchup, d.misfire_grace)
        .join(deployments, d.id == r.deployment_id)
        .where(r.auto_scheduled.is_(True), d.catchup != "all",
               # only schedules with a waiting due run, and no older slot than those: small
               r.deployment_id.in_(select(r.deployment_id).where(due_waiting)),
               r.schedule_slug.in_(select(r.schedule_slug).where(due_waiting)),
               r.nominal_time >= select(func.min(r.nominal_time)).where(due_waiting)
               .scalar_subquery(),
               r.state != StateType.SKIPPED.value, r.nominal_time < now)
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
        waiting = [row.id for row in group if row.state == StateType.SCHEDULED.value]
        if group[0].catchup == "latest":
            newest = group[-1].id
            superseded.extend(run_id for run_id in waiting if run_id != newest)
        else:
            skipped.extend(waiting)
    return superseded, skipped
