"""What a running flow run sends about itself (`POST /api/flow-runs/{id}/events`): log lines and
the latest snapshots of its subflow runs and task runs, stored in one transaction.

A batch may only speak of its run's own family: every subflow run, task run and log line must
belong to the run or to one of its subflow runs (however deep), so an agent holding one run can
never write into another, and deployment runs are out of its reach. A batch that breaks this,
or any other rule, is refused whole.

Snapshots are idempotent: the newest one of each id wins, and a batch sent twice (its answer
was lost) stores nothing twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Row, func, insert, select

from ostinato.deploy.errors import InvalidInput
from ostinato.deploy.protocol import RunEvents, StateEntryReport, SubflowReport, TaskRunReport
from ostinato.deploy.states import Reason, StateType
from ostinato.queues import logs, runs, task_runs
from ostinato.queues.database import dialect_insert, lock_names
from ostinato.queues.tables import flow_run_states, flow_runs

SUBFLOW_ACTOR = "flow run"  # who records a subflow run's states: the flow run's engine
_UPDATED = ("name", "state", "state_name", "reason", "attempt", "parameters", "start_time",
            "end_time", "result", "updated")

Report = TypeVar("Report", TaskRunReport, SubflowReport)


def add_events(conn: Connection, run_id: uuid.UUID, events: RunEvents, now: datetime) -> None:
    """Store a batch sent for the run: subflow runs first (task runs and lines may belong to
    them), then task runs, then log lines; NotFound if there is no such run, InvalidInput if
    anything in the batch does not belong to it."""
    lock_names(conn, [f"events:{run_id}"])  # a batch sent again waits for the first one
    runs.require_run(conn, run_id)
    family = _Family(conn, run_id)
    ended = _upsert_subflows(conn, family, _latest(events.flow_runs), now)
    reports = _latest(events.task_runs)
    family.require((f"task run {report.id}", report.flow_run_id) for report in reports)
    family.require((f"log line {n}", line.flow_run_id)
                   for n, line in enumerate(events.logs) if line.flow_run_id)
    task_runs.upsert(conn, reports, now)
    logs.insert_logs(conn, run_id, events.logs)
    for subflow in ended:
        runs.end_children(conn, [subflow.id], subflow.state, actor=SUBFLOW_ACTOR, now=now,
                          reason=_reason(subflow.state, subflow.state_name))


def _latest(reports: Sequence[Report]) -> list[Report]:
    """The last snapshot of each id, where its id first appeared (a run before its children)."""
    return list({report.id: report for report in reports}.values())


class _Family:
    """The run and its subflow runs, known so far: its descendants are read from the store
    (one recursive query) only when the batch names a run that is neither the run nor a
    subflow run earlier in the batch."""

    def __init__(self, conn: Connection, run_id: uuid.UUID) -> None:
        self._conn = conn
        self.run_id = run_id
        self._known = {run_id}
        self._stored_read = False

    def add(self, subflow_id: uuid.UUID) -> None:
        self._known.add(subflow_id)

    def require(self, claims: Iterable[tuple[str, uuid.UUID]]) -> None:
        """InvalidInput for the first (what, run id) whose run is not in the family."""
        missing = [(what, run_id) for what, run_id in claims if run_id not in self._known]
        if missing and not self._stored_read:
            self._known |= _descendants(self._conn, self.run_id)
            self._stored_read = True
            missing = [(what, run_id) for what, run_id in missing if run_id not in self._known]
        if missing:
            what, run_id = missing[0]
            raise InvalidInput(f"{what} names flow run {run_id}, which is neither flow run "
                               f"{self.run_id} nor one of its subflow runs")


def _descendants(conn: Connection, run_id: uuid.UUID) -> set[uuid.UUID]:
    c = flow_runs.c
    tree = select(c.id).where(c.parent_run_id == run_id).cte("tree", recursive=True)
    tree = tree.union(select(c.id).where(c.parent_run_id == tree.c.id))
    return set(conn.execute(select(tree.c.id)).scalars())


def _upsert_subflows(conn: Connection, family: _Family, reports: list[SubflowReport],
                     now: datetime) -> list[SubflowReport]:
    """Create or update the subflow runs, appending the states their history gained to the
    run's state history; returns those that have just ended in a state that ends their
    children."""
    if not reports:
        return []
    stored = _stored_subflows(conn, [report.id for report in reports])
    for report in reports:
        _check_subflow(report, stored.get(report.id))
        family.require([(f"subflow run {report.id}", report.parent_run_id)])
        family.add(report.id)
    _write_subflows(conn, [_subflow_row(report, now) for report in reports])
    entries = [_state_row(report.id, entry)
               for report in reports
               for entry in report.history[_entries_stored(stored.get(report.id)):]]
    if entries:
        conn.execute(insert(flow_run_states), entries)
    return [report for report in reports if _ends_now(report, stored.get(report.id))]


def _stored_subflows(conn: Connection, ids: list[uuid.UUID]) -> dict[uuid.UUID, Row[Any]]:
    """The stored runs with these ids, with how many states their engine reported so far."""
    c, s = flow_runs.c, flow_run_states.c
    reported = (s.flow_run_id == c.id) & (s.actor == SUBFLOW_ACTOR)
    query = (select(c.id, c.parent_run_id, c.deployment_id, c.state,
                    func.count(s.id).label("entries"))
             .outerjoin(flow_run_states, reported).where(c.id.in_(ids))
             .group_by(c.id, c.parent_run_id, c.deployment_id, c.state))
    return {row.id: row for row in conn.execute(query)}


def _check_subflow(report: SubflowReport, stored: Row[Any] | None) -> None:
    """An id already in the store must be a subflow run of the same parent."""
    if stored is not None and (stored.deployment_id is not None
                               or stored.parent_run_id != report.parent_run_id):
        raise InvalidInput(f"flow run {report.id} exists and is not a subflow run of "
                           f"{report.parent_run_id}")


def _entries_stored(stored: Row[Any] | None) -> int:
    return 0 if stored is None else int(stored.entries)


def _ends_now(report: SubflowReport, stored: Row[Any] | None) -> bool:
    was_open = stored is None or not StateType(stored.state).is_terminal
    return was_open and report.state in (StateType.FAILED, StateType.CRASHED,
                                         StateType.CANCELLED)


def _write_subflows(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert or update; the update never touches a run that is not a subflow run of the
    same parent (checked before, and guarded here too)."""
    statement = dialect_insert(conn, flow_runs)
    c, new = flow_runs.c, statement.excluded
    conn.execute(statement.on_conflict_do_update(
        index_elements=[c.id], set_={name: new[name] for name in _UPDATED},
        where=(c.parent_run_id == new.parent_run_id) & c.deployment_id.is_(None)), rows)


def _subflow_row(report: SubflowReport, now: datetime) -> dict[str, Any]:
    return {
        "id": report.id, "name": report.name, "flow_name": report.flow, "deployment_id": None,
        "deployment_name": None, "schedule_slug": None, "nominal_time": report.start_time,
        "scheduled_time": report.start_time, "state": report.state.value,
        "state_name": report.state_name, "reason": _reason(report.state, report.state_name),
        "attempt": report.history[-1].attempt if report.history else 1,
        "parameters": report.parameters, "tags": [], "auto_scheduled": False,
        "work_queue": None, "fencing_token": 0, "parent_run_id": report.parent_run_id,
        "start_time": report.start_time, "end_time": report.end_time, "result": report.result,
        "created": now, "updated": now,
    }


def _state_row(run_id: uuid.UUID, entry: StateEntryReport) -> dict[str, Any]:
    return {"flow_run_id": run_id, "type": entry.type.value, "name": entry.name,
            "reason": _reason(entry.type, entry.name), "message": entry.message,
            "timestamp": entry.timestamp, "actor": SUBFLOW_ACTOR, "attempt": entry.attempt}


def _reason(state: StateType, name: str) -> str | None:
    """The machine-readable reason of a subflow run's end, from what its engine reported."""
    if state is StateType.COMPLETED:
        return Reason.SUCCESS
    if state is StateType.FAILED:
        return Reason.TIMEOUT if name == "TimedOut" else Reason.EXCEPTION
    return None
