"""`/api/flow-runs`: list with filters and paging, read one, its state history, task runs and
logs; a holder's state reports and event batches (logs, task runs, subflow runs); cancel;
explain why a run waits."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import Connection

from ostinato.deploy.limits import MAX_BIGINT
from ostinato.deploy.protocol import Explanation, LogRecord, RunEvents, StateReport
from ostinato.deploy.schemas import FlowRun, StateRecord, TaskRun
from ostinato.deploy.states import StateType
from ostinato.queues import events, leases, logs, runs, task_runs
from ostinato.queues.explain import explain as explain_run
from ostinato.scheduler.api.dependencies import DatabaseDep, SettingsDep, as_utc, late_after
from ostinato.scheduler.auth import AgentCaller, Caller

router = APIRouter(prefix="/flow-runs", tags=["flow runs"])


@router.get("", response_model=list[FlowRun])
def list_all(
    database: DatabaseDep,
    settings: SettingsDep,
    state: Annotated[list[StateType], Query()] = [],  # noqa: B006 (FastAPI copies defaults)
    deployment: str | None = None,
    flow: str | None = None,
    tag: str | None = None,
    after: Annotated[datetime | None, Query(description="scheduled at or after")] = None,
    before: Annotated[datetime | None, Query(description="scheduled before")] = None,
    parent: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=runs.MAX_PAGE)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[FlowRun]:
    """Runs, newest scheduled time first."""
    run_filter = runs.RunFilter(
        states=state, deployment=deployment, flow=flow, tag=tag, scheduled_after=as_utc(after),
        scheduled_before=as_utc(before), parent_run_id=parent, limit=limit, offset=offset,
    )
    with database.read() as conn:
        return runs.list_runs(conn, run_filter, late_after=late_after(settings))


@router.get("/{run_id}", response_model=FlowRun)
def read(run_id: uuid.UUID, database: DatabaseDep, settings: SettingsDep) -> FlowRun:
    with database.read() as conn:
        return runs.get_run(conn, run_id, late_after=late_after(settings))


@router.get("/{run_id}/states", response_model=list[StateRecord])
def history(run_id: uuid.UUID, database: DatabaseDep) -> list[StateRecord]:
    with database.read() as conn:
        return runs.state_history(conn, run_id)


@router.post("/{run_id}/state", response_model=FlowRun)
def report(run_id: uuid.UUID, body: StateReport, caller: AgentCaller,
           database: DatabaseDep) -> FlowRun:
    """A holder reports the run's new state; 409 if its fencing token is stale."""
    with database.write() as conn:
        _require_queue_of(conn, caller, run_id)
        return leases.report_state(conn, run_id, body, now=datetime.now(UTC))


@router.post("/{run_id}/events", status_code=204)
def add_events(run_id: uuid.UUID, body: RunEvents, caller: AgentCaller,
               database: DatabaseDep) -> None:
    """Store what the agent running the run sends about it: log lines and the latest snapshots
    of its task runs and subflow runs. Refused whole (422) if anything in it is not the run's
    or its subflow runs'."""
    with database.write() as conn:
        _require_queue_of(conn, caller, run_id)
        events.add_events(conn, run_id, body, now=datetime.now(UTC))


def _require_queue_of(conn: Connection, caller: Caller, run_id: uuid.UUID) -> None:
    """An agent key touches only runs claimed through its queues."""
    if caller.limited_to_queues:
        caller.require_queues([runs.work_queue_of(conn, run_id)])


@router.get("/{run_id}/task-runs", response_model=list[TaskRun])
def read_task_runs(
    run_id: uuid.UUID,
    database: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=task_runs.MAX_TASK_RUN_PAGE)] = 1000,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[TaskRun]:
    """The run's own task runs (its subflow runs have theirs), by start time; those not
    started yet come last."""
    with database.read() as conn:
        runs.require_run(conn, run_id)
        return task_runs.list_task_runs(conn, run_id, limit=limit, offset=offset)


@router.get("/{run_id}/logs", response_model=list[LogRecord])
def read_logs(
    run_id: uuid.UUID,
    database: DatabaseDep,
    after: Annotated[int, Query(ge=0, le=MAX_BIGINT, description="only lines with a larger id")
                     ] = 0,
    limit: Annotated[int, Query(ge=1, le=logs.MAX_LOG_PAGE)] = 1000,
) -> list[LogRecord]:
    """The run's log lines in order; pass the last id seen as `after` for the next page."""
    with database.read() as conn:
        return logs.read_logs(conn, run_id, after=after, limit=limit)


@router.post("/{run_id}/cancel", response_model=FlowRun)
def cancel(run_id: uuid.UUID, database: DatabaseDep) -> FlowRun:
    """Cancel a waiting run, or ask the agent holding it to stop it (CANCELLING)."""
    with database.write() as conn:
        return leases.cancel(conn, run_id, actor="user", now=datetime.now(UTC))


@router.get("/{run_id}/explain", response_model=Explanation)
def explain(run_id: uuid.UUID, database: DatabaseDep) -> Explanation:
    """Every reason the run is not starting."""
    with database.read() as conn:
        return explain_run(conn, run_id, datetime.now(UTC))
