"""Counts over the store for `/metrics` (and the dashboard): runs by state, late runs, the depth
of each work queue, agents online; for the dashboard also runs by state and hour, and the
earliest waiting runs.

A scrape makes these queries every few seconds, so each is one indexed query: the run counts
read the `(state, scheduled_time)` index, and the depths of every queue come from one pass over
the due waiting runs — normally a handful, as agents take them as they fall due.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import BigInteger, ColumnElement, Connection, Integer, case, cast, func, select

from ostinato.deploy.schemas import FlowRun, WorkQueueFilter
from ostinato.deploy.states import StateType
from ostinato.queues import runs
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


def runs_by_state_and_hour(conn: Connection, since: datetime, until: datetime
                           ) -> dict[tuple[datetime, StateType], int]:
    """Runs scheduled in `[since, until)`, counted by the UTC hour of their scheduled time and
    by state; only non-zero counts. The dashboard's chart.

    By scheduled time, not start time: every run has one (SCHEDULED, late and SKIPPED runs never
    start, and they are what the chart must show), a run stays in its slot's hour as it moves
    on, and `(state, scheduled_time)` is indexed. Naming every state constrains the index's
    first column, so each state's hours are one range seek of that index, which holds every
    column the query reads.
    """
    c = flow_runs.c
    hour = _epoch_hour(conn.dialect.name, c.scheduled_time).label("hour")
    query = (select(hour, c.state, func.count())
             .where(c.state.in_([state.value for state in StateType]),
                    c.scheduled_time >= since, c.scheduled_time < until)
             .group_by(hour, c.state))
    return {(datetime.fromtimestamp(int(number) * 3600, UTC), StateType(state)): int(count)
            for number, state, count in conn.execute(query)}


def _epoch_hour(dialect: str, moment: ColumnElement[datetime]) -> ColumnElement[int]:
    """Whole hours since the Unix epoch (the UTC hour, whatever the session's time zone)."""
    if dialect == "postgresql":
        seconds = cast(func.floor(func.extract("epoch", moment)), BigInteger)
    else:  # SQLite keeps UTC text
        seconds = cast(func.strftime("%s", moment), Integer)
    return seconds // 3600


def earliest_waiting(conn: Connection, late_before: datetime, *, due_from: datetime | None = None,
                     due_before: datetime | None = None, limit: int = 10) -> list[FlowRun]:
    """SCHEDULED runs due in `[due_from, due_before)`, earliest first: with `due_before` the
    late runs that waited longest, with `due_from` the next runs. A range of the
    `(state, scheduled_time)` index, read no further than `limit` rows."""
    c = flow_runs.c
    query = select(flow_runs).where(c.state == StateType.SCHEDULED.value)
    if due_from is not None:
        query = query.where(c.scheduled_time >= due_from)
    if due_before is not None:
        query = query.where(c.scheduled_time < due_before)
    query = query.order_by(c.scheduled_time, c.id).limit(limit)
    return [runs.to_schema(row._mapping, late_before) for row in conn.execute(query)]
