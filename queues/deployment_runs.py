"""Runs seen from their deployment, for the UI's deployments pages: each deployment's last run
and next waiting run, and one deployment's recent runs.

Every read walks the `(deployment_id, scheduled_time)` index from `now` — backwards for the last
runs, forwards for the next — so its cost does not grow with the runs a deployment has had. The
per-deployment reads of a page are one statement with a correlated subquery each, not one query
per deployment.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, ScalarSelect, select

from ostinato.deploy.schemas import FlowRun
from ostinato.deploy.states import StateType
from ostinato.queues import runs
from ostinato.queues.tables import deployments, flow_runs


def _each_deployment(ids: Sequence[uuid.UUID], column: ScalarSelect[Any]) -> Any:
    """`SELECT id, (column) FROM deployments WHERE id IN ids`: the subquery once per row."""
    return select(deployments.c.id, column.label("found")).where(deployments.c.id.in_(ids))


def last_runs(conn: Connection, ids: Sequence[uuid.UUID], now: datetime, late_before: datetime
              ) -> dict[uuid.UUID, FlowRun]:
    """Each deployment's run with the latest scheduled time not after `now` (the one that ran,
    runs or is late), by deployment id; deployments without one are left out."""
    c = flow_runs.c
    latest = (select(c.id).where(c.deployment_id == deployments.c.id, c.scheduled_time <= now)
              .order_by(c.scheduled_time.desc()).limit(1).scalar_subquery())
    found = [row.found for row in conn.execute(_each_deployment(ids, latest)) if row.found]
    if not found:
        return {}
    rows = conn.execute(select(flow_runs).where(c.id.in_(found)))
    return {row.deployment_id: runs.to_schema(row._mapping, late_before) for row in rows}


def next_run_times(conn: Connection, ids: Sequence[uuid.UUID], now: datetime
                   ) -> dict[uuid.UUID, datetime]:
    """Each deployment's earliest waiting (SCHEDULED) run after `now`, by deployment id: the
    runs the scheduler made ahead and manual runs asked for later; none while paused."""
    c = flow_runs.c
    earliest = (select(c.scheduled_time)
                .where(c.deployment_id == deployments.c.id, c.scheduled_time > now,
                       c.state == StateType.SCHEDULED.value)
                .order_by(c.scheduled_time).limit(1).scalar_subquery())
    rows = conn.execute(_each_deployment(ids, earliest))
    return {row.id: row.found for row in rows if row.found is not None}


def recent_runs(conn: Connection, deployment_id: uuid.UUID, now: datetime, late_before: datetime,
                limit: int) -> list[FlowRun]:
    """The deployment's last `limit` runs scheduled at or before `now`, newest first; the runs
    made ahead for later are not yet recent."""
    c = flow_runs.c
    query = (select(flow_runs).where(c.deployment_id == deployment_id, c.scheduled_time <= now)
             .order_by(c.scheduled_time.desc()).limit(limit))
    return [runs.to_schema(row._mapping, late_before) for row in conn.execute(query)]
