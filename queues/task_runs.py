"""Task runs in the store: the engine's snapshots upserted by id, read back in start order, and
ended by the server when their flow run ends first.

A snapshot carries everything known about the task run, its state history included, so storing
one is a single row write, and the newest snapshot simply replaces the row.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, select, update

from ostinato.deploy.errors import InvalidInput
from ostinato.deploy.protocol import TaskRunReport
from ostinato.deploy.schemas import TaskRun, TaskRunState
from ostinato.deploy.states import TERMINAL_STATES, StateType
from ostinato.queues.database import dialect_insert
from ostinato.queues.tables import task_runs

MAX_TASK_RUN_PAGE = 5000
ENDED_FIRST = "its flow run ended first"
# Columns a snapshot stores as JSON, dumped in JSON mode (UUIDs and times as text).
_JSON_FIELDS = {"upstream", "history"}
_ENDED = sorted(state.value for state in TERMINAL_STATES)
_KEPT = frozenset({"id", "flow_run_id", "created"})  # a later snapshot never changes these


def upsert(conn: Connection, reports: Sequence[TaskRunReport], now: datetime) -> None:
    """Store each snapshot: a new task run, or the latest state of a known one.

    A task run stays under the flow run it was first reported for: a snapshot naming the id
    under another run is refused (InvalidInput) rather than allowed to move or clobber it.
    """
    if not reports:
        return
    insert = dialect_insert(conn, task_runs)
    statement = insert.on_conflict_do_update(
        index_elements=[task_runs.c.id],
        set_={name: insert.excluded[name] for name in task_runs.c.keys() if name not in _KEPT},
        where=task_runs.c.flow_run_id == insert.excluded.flow_run_id,
    ).returning(task_runs.c.id)
    stored = set(conn.execute(statement, [_row(report, now) for report in reports]).scalars())
    foreign = [report for report in reports if report.id not in stored]
    if foreign:
        raise InvalidInput(f"task run {foreign[0].id} belongs to another flow run than "
                           f"{foreign[0].flow_run_id}")


def _row(report: TaskRunReport, now: datetime) -> dict[str, Any]:
    return {**report.model_dump(exclude=_JSON_FIELDS),
            **report.model_dump(mode="json", include=_JSON_FIELDS), "created": now}


def end_open(conn: Connection, ids: Sequence[uuid.UUID], state: StateType, now: datetime
             ) -> None:
    """End these task runs (their flow run ended while they had not): `state` now, with an
    entry saying why at the end of their history.

    Read, changed and written back row by row: the history is JSON, which the two backends
    append to differently, and only the few task runs left running get here.
    """
    c = task_runs.c
    rows = conn.execute(select(c.id, c.attempt, c.history)
                        .where(c.id.in_(ids), c.state.not_in(_ENDED))).all()
    if not rows:
        return
    conn.execute(
        update(task_runs).where(c.id == bindparam("row_id")),
        [{"row_id": row.id, "state": state.value, "state_name": state.display_name,
          "end_time": now, "history": [*row.history, _entry(state, now, row.attempt)]}
         for row in rows])


def _entry(state: StateType, now: datetime, attempt: int) -> dict[str, Any]:
    return TaskRunState(type=state, name=state.display_name, timestamp=now, attempt=attempt,
                        message=ENDED_FIRST).model_dump(mode="json")


def list_task_runs(conn: Connection, flow_run_id: uuid.UUID, *, limit: int = MAX_TASK_RUN_PAGE,
                   offset: int = 0) -> list[TaskRun]:
    """The run's own task runs (not its subflows'), by start time — those not started last —
    then by when they were first reported."""
    c = task_runs.c
    rows = conn.execute(
        select(task_runs).where(c.flow_run_id == flow_run_id)
        .order_by(c.start_time.asc().nulls_last(), c.created, c.id)
        .limit(min(limit, MAX_TASK_RUN_PAGE)).offset(offset))
    return [TaskRun.model_validate(row._mapping) for row in rows]
