"""What happens to a claimed run after the claim: the holder's state reports (fenced), user
cancellation, the reaper of expired leases, and retries.

Fencing: each claim gives the run the next fencing token. A report is a compare-and-set on
(run, token, allowed current states), so a holder that lost the run — the reaper took it back
and another agent claimed it — is refused with 409 and changes nothing.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from ostinato.deploy.errors import Conflict, InvalidInput, NotFound, StaleFencingToken
from ostinato.deploy.protocol import StateReport
from ostinato.deploy.schemas import FlowRun
from ostinato.deploy.states import Reason, StateType
from ostinato.queues import runs
from ostinato.queues.tables import deployments, flow_runs

S = StateType
REAPER = "reaper"
RETRY_NAME = "AwaitingRetry"

# What a holder may report, from each state it may hold a run in.
REPORTABLE: dict[StateType, frozenset[StateType]] = {
    S.RUNNING: frozenset({S.PENDING}),  # a run asked to stop first stays CANCELLING
    S.SCHEDULED: frozenset({S.PENDING}),  # given back before it started
    S.COMPLETED: frozenset({S.RUNNING, S.CANCELLING}),
    S.FAILED: frozenset({S.PENDING, S.RUNNING, S.CANCELLING}),
    S.CRASHED: frozenset({S.PENDING, S.RUNNING, S.CANCELLING}),
    S.CANCELLED: frozenset({S.PENDING, S.RUNNING, S.CANCELLING}),
}
_NO_OUTCOME = dict.fromkeys(runs.OUTCOME_FIELDS)
_RELEASED = {"agent_id": None, "agent_name": None, "lease_expires": None, "work_queue": None}


def report_state(conn: Connection, run_id: uuid.UUID, report: StateReport, *, now: datetime
                 ) -> FlowRun:
    """Apply a holder's report; see the module docstring for fencing."""
    allowed_from = REPORTABLE.get(report.state)
    if allowed_from is None:
        raise InvalidInput(f"an agent cannot report {report.state.value}")
    c = flow_runs.c
    held = conn.execute(select(c.agent_name, c.reason, c.state, c.start_time)
                        .where(c.id == run_id).with_for_update()).first()
    actor = held.agent_name if held else None
    asked_to_stop = held is not None and held.state == S.CANCELLING  # ends without retry
    where = ((c.id == run_id) & (c.fencing_token == report.fencing_token)
             & c.state.in_([state.value for state in allowed_from]))
    moved = runs.set_states_returning(
        conn, where, report.state, reason=_reason(report, held), message=report.message,
        actor=actor, **_columns(report, held, now))
    if not moved:
        return _refusal_or_current(conn, run_id, report, now)
    if report.state in (S.FAILED, S.CRASHED) and not asked_to_stop:
        retry(conn, moved, now=now, actor=actor)
    return runs.get_run(conn, run_id)


def _columns(report: StateReport, held: Any, now: datetime) -> dict[str, Any]:
    """The run's columns after the report. Times come from the agent (a report held up by an
    outage keeps the true time), on the server's clock, bounded by it: never in the future, and
    an end never before the start."""
    moment = min(_on_server_clock(report, now), now)
    if report.state is S.RUNNING:
        return {"start_time": moment}
    if report.state is S.SCHEDULED:
        return dict(_RELEASED)
    if held is not None and held.start_time is not None:
        moment = max(moment, held.start_time)
    return {"end_time": moment, "lease_expires": None,
            **{name: getattr(report, name) for name in runs.OUTCOME_FIELDS}}


def _on_server_clock(report: StateReport, now: datetime) -> datetime:
    """The report's time moved by the agent's clock error as the report arrived (its `sent`
    against `now`: the transit time, milliseconds, counts as error too)."""
    if report.time is None:
        return now
    if report.sent is None:
        return report.time
    return report.time + (now - report.sent)


def _reason(report: StateReport, held: Any) -> str | None:
    """The report's reason; a run stopped on request keeps the reason it was asked with."""
    if report.reason or report.state is not S.CANCELLED or held is None:
        return report.reason
    reason: str | None = held.reason
    return reason


def _refusal_or_current(conn: Connection, run_id: uuid.UUID, report: StateReport,
                        now: datetime) -> FlowRun:
    row = conn.execute(select(flow_runs.c.state, flow_runs.c.fencing_token)
                       .where(flow_runs.c.id == run_id)).first()
    if row is None:
        raise NotFound(f"flow run {run_id} not found")
    if row.fencing_token != report.fencing_token:
        raise StaleFencingToken(
            f"flow run {run_id}: fencing token {report.fencing_token} is stale (current "
            f"{row.fencing_token}); the run was taken back and claimed again")
    if row.state == S.CANCELLING and report.state is S.RUNNING:  # started, and must stop
        conn.execute(update(flow_runs)  # a report sent again keeps the first start time
                     .where(flow_runs.c.id == run_id, flow_runs.c.start_time.is_(None))
                     .values(start_time=now, updated=now))
        return runs.get_run(conn, run_id)
    raise Conflict(f"flow run {run_id} is {row.state}; it cannot become {report.state.value}")


def cancel(conn: Connection, run_id: uuid.UUID, *, actor: str, now: datetime) -> FlowRun:
    """A waiting run is cancelled at once; a claimed one is asked to stop (CANCELLING) and its
    agent learns it from its next heartbeat."""
    c = flow_runs.c
    by_user = {"reason": Reason.CANCELLED_BY_USER, "actor": actor, "message": "cancelled"}
    if not runs.set_states(conn, (c.id == run_id) & (c.state == S.SCHEDULED.value),
                           S.CANCELLED, end_time=now, **by_user):
        stoppable = [S.PENDING.value, S.RUNNING.value]
        if not runs.set_states(conn, (c.id == run_id) & c.state.in_(stoppable), S.CANCELLING,
                               **by_user):
            run = runs.get_run(conn, run_id)
            if run.state is not S.CANCELLING:
                raise Conflict(f"flow run {run_id} is {run.state.value}; nothing to cancel")
    return runs.get_run(conn, run_id)


def reap_expired(conn: Connection, now: datetime) -> tuple[int, int]:
    """Claims whose lease ran out: PENDING runs go back to SCHEDULED, RUNNING ones are CRASHED
    (`lease_expired`) and follow the retry policy, CANCELLING ones are CRASHED without retry.
    Returns (returned, crashed)."""
    c = flow_runs.c
    expired = c.lease_expires < now
    returned = runs.set_states(
        conn, expired & (c.state == S.PENDING.value), S.SCHEDULED, reason=Reason.LEASE_EXPIRED,
        actor=REAPER, message="the agent stopped heartbeating before the run started",
        **_RELEASED)
    crashed = runs.set_states_returning(
        conn, expired & (c.state == S.RUNNING.value), S.CRASHED, reason=Reason.LEASE_EXPIRED,
        actor=REAPER, message="the agent stopped heartbeating", end_time=now, lease_expires=None)
    stopped = runs.set_states(
        conn, expired & (c.state == S.CANCELLING.value), S.CRASHED,
        reason=Reason.LEASE_EXPIRED, actor=REAPER, end_time=now, lease_expires=None,
        message="the agent stopped heartbeating while the run was being cancelled")
    retry(conn, crashed, now=now, actor=REAPER)
    return len(returned), len(crashed) + len(stopped)


def retry(conn: Connection, ended: list[Any], *, now: datetime, actor: str | None
          ) -> list[uuid.UUID]:
    """Give runs that FAILED or CRASHED their next attempt, as their deployment's retry
    policy allows: back to SCHEDULED, attempt + 1, after `retry_delay`."""
    ids = _retryable(conn, ended)
    retried: list[uuid.UUID] = []
    c = flow_runs.c
    for (delay, attempts), group in ids.items():
        retried += runs.set_states(
            conn, c.id.in_(group), S.SCHEDULED, name=RETRY_NAME, actor=actor,
            message=f"retrying (at most {attempts} retries)", attempt=c.attempt + 1,
            scheduled_time=now + timedelta(seconds=delay), start_time=None, end_time=None,
            **_NO_OUTCOME, **_RELEASED)
    return retried


def _retryable(conn: Connection, ended: list[Any]) -> dict[tuple[float, int], list[uuid.UUID]]:
    """The ended runs with retries left for what ended them, grouped by (delay, retries)."""
    deployment_ids = {row.deployment_id for row in ended if row.deployment_id}
    if not deployment_ids:
        return {}
    d = deployments.c
    policies = {row.id: row for row in conn.execute(
        select(d.id, d.retries, d.retry_delay, d.retry_on).where(d.id.in_(deployment_ids)))}
    groups: dict[tuple[float, int], list[uuid.UUID]] = {}
    for row in ended:
        policy = policies.get(row.deployment_id)
        if policy and row.attempt <= policy.retries and _cause(row) in policy.retry_on:
            groups.setdefault((policy.retry_delay, policy.retries), []).append(row.id)
    return groups


def _cause(row: Any) -> str:
    if row.state == S.CRASHED:
        return "crash"
    return "timeout" if row.reason == Reason.TIMEOUT else "failure"
