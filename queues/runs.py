"""Flow runs in the store: creating them, moving them between states, reading them back.

Every state change goes through `set_state`/`set_states`, which update the run row and append to
the state history in the same transaction — the history is never rewritten — and end the
subflow runs and task runs a failed, crashed or cancelled run leaves behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Connection,
    Select,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    union_all,
    update,
)

from ostinato.deploy.errors import NotFound
from ostinato.deploy.schemas import FlowRun, StateRecord
from ostinato.deploy.states import LATE_NAME, TERMINAL_STATES, StateType
from ostinato.queues import task_runs
from ostinato.queues.bulk import insert_runs_ignoring_duplicates
from ostinato.queues.database import WorkNotice, json_array_contains, mark_work_available
from ostinato.queues.tables import flow_run_states, flow_runs, new_id, utcnow
from ostinato.queues.tables import task_runs as task_run_rows

DEFAULT_LATE_AFTER = timedelta(seconds=15)
_FREEING_SLOTS = TERMINAL_STATES - {StateType.SKIPPED}  # SKIPPED runs never held a slot
# How a run's unfinished subflow runs and task runs end when it ends in one of these states.
_CHILDREN_ENDING = {StateType.FAILED: StateType.CANCELLED,
                    StateType.CANCELLED: StateType.CANCELLED,
                    StateType.CRASHED: StateType.CRASHED}
_ENDED = sorted(state.value for state in TERMINAL_STATES)
MAX_PAGE = 1000
# What a finished run's holder reports about its end; cleared when the run is retried.
OUTCOME_FIELDS = ("result", "exit_code", "exit_signal", "cpu_seconds", "peak_rss_bytes")


@dataclass(frozen=True)
class RunFilter:
    """What `flow-run ls` and `GET /api/flow-runs` may filter on; every field is optional."""

    states: Sequence[StateType] = ()
    deployment: str | None = None
    flow: str | None = None
    tag: str | None = None
    scheduled_after: datetime | None = None
    scheduled_before: datetime | None = None
    parent_run_id: uuid.UUID | None = None
    limit: int = 100
    offset: int = 0


def new_run_values(**values: Any) -> dict[str, Any]:
    """Column values of a fresh SCHEDULED run; callers give identity, times, parameters, tags."""
    now = utcnow()
    return {
        "id": new_id(),
        "state": StateType.SCHEDULED.value,
        "state_name": StateType.SCHEDULED.display_name,
        "attempt": 1,
        "fencing_token": 0,
        "created": now,
        "updated": now,
        **values,
    }


def slot_run_values(deployment_id: uuid.UUID, deployment: str, slug: str, nominal: datetime, *,
                    scheduled_time: datetime, parameters: dict[str, Any], tags: list[str],
                    auto_scheduled: bool, state: StateType = StateType.SCHEDULED,
                    reason: str | None = None, created: datetime | None = None
                    ) -> dict[str, Any]:
    """Column values of the run of one schedule slot (materialised or backfilled).

    Built in one literal, with `created` given once per batch: a tick builds ~750,000 of these.
    """
    flow, name = deployment.split("/", 1)
    created = created or utcnow()
    return {
        "id": new_id(), "name": f"{name}-{nominal:%Y%m%d-%H%M%S}", "flow_name": flow,
        "deployment_id": deployment_id, "deployment_name": deployment, "schedule_slug": slug,
        "nominal_time": nominal, "scheduled_time": scheduled_time, "state": state.value,
        "state_name": state.display_name, "reason": reason, "attempt": 1, "fencing_token": 0,
        "parameters": parameters, "tags": tags, "auto_scheduled": auto_scheduled,
        "created": created, "updated": created,
    }


def insert_runs(conn: Connection, runs: Sequence[dict[str, Any]]) -> int:
    """Insert runs; returns how many were new.

    A run whose identity (deployment, schedule slug, nominal time) exists already is ignored,
    which is what makes any number of concurrent schedulers safe. A run's creation — SCHEDULED,
    by its creator, at its `created` time — is the first entry of its history and is read from
    the run row (see `state_history`), which halves the writes of materialising runs. A run
    created in another state (a slot skipped by catch-up) gets that transition stored.
    """
    if not runs:
        return 0
    inserted = insert_runs_ignoring_duplicates(conn, runs)
    if inserted:
        due_at = min(run["scheduled_time"] for run in runs)
        mark_work_available(conn, WorkNotice(due_at, inserted))
    skipped_at_birth = [run["id"] for run in runs if run["state"] != StateType.SCHEDULED]
    for chunk in _chunks(skipped_at_birth, 5000):
        _record_creation_states(conn, chunk)
    return inserted


def _chunks(items: list[uuid.UUID], size: int) -> Iterable[list[uuid.UUID]]:
    return (items[i:i + size] for i in range(0, len(items), size))


def _record_creation_states(conn: Connection, ids: list[uuid.UUID]) -> None:
    """History entries for runs created in a state other than SCHEDULED (only those that went
    in)."""
    c = flow_runs.c
    created = select(c.id, c.state, c.state_name, c.reason, c.created, _creator(), c.attempt)
    conn.execute(insert(flow_run_states).from_select(
        ["flow_run_id", "type", "name", "reason", "timestamp", "actor", "attempt"],
        created.where(c.id.in_(ids))))


def _creator() -> ColumnElement[str]:
    """Who created a run, from its row: the scheduler, a backfill, or a user (manual run)."""
    c = flow_runs.c
    return case((c.auto_scheduled, literal("scheduler")),
                (c.schedule_slug.is_not(None), literal("backfill")), else_=literal("user"))


def set_states(conn: Connection, where: Any, state: StateType, **options: Any
               ) -> list[uuid.UUID]:
    """Move every run matching `where` to `state`; returns the ids it moved."""
    return [row.id for row in set_states_returning(conn, where, state, **options)]


def set_states_returning(
    conn: Connection,
    where: Any,
    state: StateType,
    *,
    name: str | None = None,
    reason: str | None = None,
    message: str | None = None,
    actor: str | None = None,
    **values: Any,
) -> list[Any]:
    """Move every run matching `where` to `state` (shown as `name`, by default the state's
    own); returns the moved rows as they are now.

    A run going back to SCHEDULED is new work, and a run ending may free a slot under a limit,
    so both wake the long polls (subflow runs are never claimed, so theirs do not).
    """
    now = utcnow()
    name = name or state.display_name
    moved = conn.execute(
        update(flow_runs)
        .where(where)
        .values(state=state.value, state_name=name, reason=reason, updated=now, **values)
        .returning(*flow_runs.c)
    ).all()
    append_history(conn, ((row.id, row.attempt) for row in moved), state, name=name,
                   reason=reason, message=message, actor=actor)
    queued = [row for row in moved if row.parent_run_id is None]  # subflow runs hold no slot
    if queued and (state is StateType.SCHEDULED or state in _FREEING_SLOTS):
        mark_work_available(conn, WorkNotice(count=len(queued)))
    end_children(conn, [row.id for row in moved], state, reason=reason, actor=actor, now=now)
    return list(moved)


def end_children(conn: Connection, run_ids: list[uuid.UUID], state: StateType, *,
                 reason: str | None, actor: str | None, now: datetime) -> None:
    """Runs that ended FAILED, CRASHED or CANCELLED take with them their subflow runs and task
    runs still going, which nothing would end otherwise (the process that ran them is gone or
    gave up on them): CRASHED if the runs crashed, else CANCELLED, for the same reason.

    Subflow runs end through `set_states_returning`, so their own children follow. Without
    children this costs one query on the indexes of `parent_run_id` and `flow_run_id`.
    """
    ending = _CHILDREN_ENDING.get(state)
    if ending is None:
        return
    for chunk in _chunks(run_ids, 5000):
        found = conn.execute(_OPEN_CHILDREN, {"run_ids": chunk}).all()
        subflows = [row.id for row in found if row.subflow]
        if subflows:
            still_open = flow_runs.c.id.in_(subflows) & flow_runs.c.state.not_in(_ENDED)
            set_states_returning(conn, still_open, ending, reason=reason,
                                 message=task_runs.ENDED_FIRST, actor=actor, end_time=now)
        task_run_ids = [row.id for row in found if not row.subflow]
        if task_run_ids:
            task_runs.end_open(conn, task_run_ids, ending, now)


def _open_children_query() -> CompoundSelect[Any]:
    """The subflow runs and task runs of the runs `run_ids` that have not ended (built once:
    every transition to FAILED, CRASHED or CANCELLED runs it)."""
    run_ids = bindparam("run_ids", expanding=True, type_=flow_runs.c.id.type)
    f, t = flow_runs.c, task_run_rows.c
    return union_all(
        select(f.id, literal(True).label("subflow"))
        .where(f.parent_run_id.in_(run_ids), f.state.not_in(_ENDED)),
        select(t.id, literal(False).label("subflow"))
        .where(t.flow_run_id.in_(run_ids), t.state.not_in(_ENDED)))


_OPEN_CHILDREN = _open_children_query()


def append_history(
    conn: Connection,
    runs: Iterable[tuple[uuid.UUID, int]],
    state: StateType,
    *,
    name: str,
    reason: str | None,
    message: str | None,
    actor: str | None,
) -> None:
    now = utcnow()
    entries = [
        {"flow_run_id": run_id, "type": state.value, "name": name, "reason": reason,
         "message": message, "timestamp": now, "actor": actor, "attempt": attempt}
        for run_id, attempt in runs
    ]
    if entries:
        conn.execute(insert(flow_run_states), entries)


def require_run(conn: Connection, run_id: uuid.UUID) -> None:
    """NotFound unless the run exists."""
    if conn.execute(select(flow_runs.c.id).where(flow_runs.c.id == run_id)).first() is None:
        raise NotFound(f"flow run {run_id} not found")


def work_queue_of(conn: Connection, run_id: uuid.UUID) -> str | None:
    """The queue the run was claimed through (None if no queue claimed it)."""
    row = conn.execute(select(flow_runs.c.work_queue).where(flow_runs.c.id == run_id)).first()
    if row is None:
        raise NotFound(f"flow run {run_id} not found")
    queue: str | None = row.work_queue
    return queue


def get_run(conn: Connection, run_id: uuid.UUID, *, late_after: timedelta = DEFAULT_LATE_AFTER
            ) -> FlowRun:
    row = conn.execute(select(flow_runs).where(flow_runs.c.id == run_id)).first()
    if row is None:
        raise NotFound(f"flow run {run_id} not found")
    return to_schema(row._mapping, utcnow() - late_after)


def list_runs(conn: Connection, run_filter: RunFilter, *,
              late_after: timedelta = DEFAULT_LATE_AFTER) -> list[FlowRun]:
    """Runs matching the filter, newest scheduled time first, one page at a time."""
    query = _filtered(select(flow_runs), run_filter, conn.dialect.name)
    query = query.order_by(flow_runs.c.scheduled_time.desc(), flow_runs.c.id)
    query = query.limit(min(run_filter.limit, MAX_PAGE)).offset(run_filter.offset)
    late_before = utcnow() - late_after
    return [to_schema(row._mapping, late_before) for row in conn.execute(query)]


def count_runs(conn: Connection, run_filter: RunFilter) -> int:
    query = _filtered(select(func.count()).select_from(flow_runs), run_filter, conn.dialect.name)
    return int(conn.execute(query).scalar_one())


def _filtered(query: Select[Any], f: RunFilter, dialect: str) -> Select[Any]:
    c = flow_runs.c
    conditions = [
        c.state.in_([s.value for s in f.states]) if f.states else None,
        c.deployment_name == f.deployment if f.deployment else None,
        c.flow_name == f.flow if f.flow else None,
        c.scheduled_time >= f.scheduled_after if f.scheduled_after else None,
        c.scheduled_time < f.scheduled_before if f.scheduled_before else None,
        c.parent_run_id == f.parent_run_id if f.parent_run_id else None,
        json_array_contains(dialect, c.tags, f.tag) if f.tag else None,
    ]
    return query.where(*(condition for condition in conditions if condition is not None))


def state_history(conn: Connection, run_id: uuid.UUID) -> list[StateRecord]:
    """Every state the run has been in, oldest first: its creation, then each transition.

    A subflow run was never waiting: its history is the states its flow run reported, from
    its start."""
    c = flow_runs.c
    run = conn.execute(select(c.created, c.parent_run_id, _creator().label("creator"))
                       .where(c.id == run_id)).first()
    if run is None:
        raise NotFound(f"flow run {run_id} not found")
    creation = StateRecord(type=StateType.SCHEDULED, name=StateType.SCHEDULED.display_name,
                           reason=None, message=None, timestamp=run.created, actor=run.creator,
                           attempt=1)
    rows = conn.execute(
        select(flow_run_states)
        .where(flow_run_states.c.flow_run_id == run_id)
        .order_by(flow_run_states.c.id)
    )
    reported = [StateRecord.model_validate(row._mapping) for row in rows]
    return reported if run.parent_run_id else [creation, *reported]


def to_schema(row: Any, late_before: datetime) -> FlowRun:
    """A run row as the API shows it; a SCHEDULED run past the late threshold is named Late."""
    return FlowRun(**run_fields(row, late_before))


def run_fields(row: Any, late_before: datetime) -> dict[str, Any]:
    """The fields of `FlowRun` from a run row (for schemas that extend it)."""
    state = StateType(row["state"])
    late = state is StateType.SCHEDULED and row["scheduled_time"] < late_before
    return {
        "id": row["id"], "name": row["name"], "flow": row["flow_name"],
        "deployment": row["deployment_name"], "deployment_id": row["deployment_id"],
        "state": state, "state_name": LATE_NAME if late else row["state_name"],
        "reason": row["reason"], "attempt": row["attempt"], "schedule": row["schedule_slug"],
        "scheduled_time": row["scheduled_time"], "start_time": row["start_time"],
        "end_time": row["end_time"], "parameters": row["parameters"], "tags": row["tags"],
        "work_queue": row["work_queue"], "agent": row["agent_name"],
        "auto_scheduled": row["auto_scheduled"], "created": row["created"],
        "parent_run_id": row["parent_run_id"], **{name: row[name] for name in OUTCOME_FIELDS},
    }
