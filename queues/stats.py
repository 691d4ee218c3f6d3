"""Counts over the store for `/metrics` (and the dashboard): runs by state, late runs, the depth
of each work queue, agents online.

A scrape makes these queries every few seconds, so each is one indexed query: the run counts
read the `(state, scheduled_time)` index, and the depths of every queue come from one pass over
the due waiting runs — normally a handful, as agents take them as they fall due.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, case, func, select

from ostinato.deploy.schemas import WorkQueueFilter
from ostinato.deploy.states import StateType
from ostinato.queues.filters import sql_filter
from ostinato.queues.tables import agents, deployments, flow_runs, work_queues


def runs_by_state(conn: Connection) -> dict[StateType, int]:
    """How many runs are in each state; every state is present, with 0 if none."""
    c = flow_runs.c
    query = select(c.state, func.count()).group_by(c.state)
    counts: dict[str, int] = dict(conn.execute(query).all())
    return {state: counts.get(state.value, 0) for state in StateType}


def late_runs(conn: Connection, late_before: datetime) -> int:
    """Waiting runs due before `late_before`: the ones the API names Late."""
    c = flow_runs.c
    query = select(func.count()).where(c.state == StateType.SCHEDULED.value,
                                       c.scheduled_time < late_before)
    return int(conn.execute(query).scalar_one())


def queue_depths(conn: Connection, now: datetime) -> dict[str, int]:
    """Per work queue, the due waiting runs its filter lets it hand out (deployment not
    paused), counted whether or not the queue is paused or at its limit, so that a backlog
    shows; a run that several queues match counts in each."""
    queues = conn.execute(select(work_queues.c.name, work_queues.c.filter)
                          .order_by(work_queues.c.name)).all()
    if not queues:
        return {}
    r, d = flow_runs.c, deployments.c
    dialect = conn.dialect.name
    counts = [func.coalesce(func.sum(case(
        (sql_filter(WorkQueueFilter.model_validate(q.filter), dialect), 1), else_=0)), 0)
        for q in queues]
    row = conn.execute(select(*counts).join_from(flow_runs, deployments,
                                                 d.id == r.deployment_id)
                       .where(r.state == StateType.SCHEDULED.value, r.scheduled_time <= now,
                              d.paused.is_(False))).one()
    return {q.name: int(count) for q, count in zip(queues, row, strict=True)}


def agents_online(conn: Connection, heard_since: datetime) -> int:
    """Agents whose last heartbeat is at or after `heard_since`."""
    query = select(func.count()).where(agents.c.last_heartbeat >= heard_since)
    return int(conn.execute(query).scalar_one())
