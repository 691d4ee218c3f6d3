"""Backfill: the runs a past window would have had, created with the same identity rule as
scheduled runs, so slots that already have a run are never duplicated.

Backfilled runs are not auto-scheduled: schedule edits leave them alone and the catch-up policy
does not skip them (they are late on purpose).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Connection, and_, select

from ostinato.deploy.schemas import Deployment
from ostinato.queues import runs
from ostinato.queues.tables import flow_runs

Slot = tuple[str, datetime]  # (schedule slug, nominal time)


def missing_slots(conn: Connection, deployment_id: uuid.UUID, slots: Sequence[Slot]) -> list[Slot]:
    """The slots that have no run yet, in the order given."""
    if not slots:
        return []
    times = [time for _, time in slots]
    c = flow_runs.c
    query = select(c.schedule_slug, c.nominal_time).where(and_(
        c.deployment_id == deployment_id, c.schedule_slug.is_not(None),
        c.nominal_time >= min(times), c.nominal_time <= max(times)))
    existing = {(slug, nominal) for slug, nominal in conn.execute(query)}
    return [slot for slot in slots if slot not in existing]


def create(conn: Connection, deployment: Deployment, slots: Sequence[Slot],
           parameters_by_slug: dict[str, dict[str, object]]) -> int:
    """Insert a SCHEDULED run for each slot (existing identities are ignored)."""
    rows = [
        runs.slot_run_values(
            deployment.id, deployment.name, slug, nominal, scheduled_time=nominal,
            parameters={**deployment.parameters, **parameters_by_slug.get(slug, {})},
            tags=deployment.tags, auto_scheduled=False)
        for slug, nominal in slots
    ]
    return runs.insert_runs(conn, rows)
