"""Materialisation: schedules become future runs in the store (DESIGN.md §4).

`plan()` is pure — a schedule, what it already has, the time — and decides which instants become
runs, in which state, and when the schedule needs its next visit. `tick()` runs it over every
schedule whose visit time has come, in batches, one transaction per batch.

For each schedule the scheduler keeps at least `min_runs` future runs and runs covering at least
`horizon` ahead, never more than `max_runs`. It generates a quarter of a horizon beyond that, so a
busy schedule is visited about every `horizon / 4` rather than at every tick.

Slots whose time passed without a run (the scheduler was down) by more than the deployment's
`misfire_grace` follow its catch-up policy: `all` runs each, `latest` runs the newest and records
the older ones SKIPPED (`superseded`), `none` records them SKIPPED (`catchup_missed`). At most
`max_runs` such slots are recorded per visit — the newest ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection

from ostinato.deploy.schedules import Cron, Instant, Interval, RRule
from ostinato.deploy.states import Reason, StateType
from ostinato.queues import runs
from ostinato.queues.database import Database
from ostinato.queues.schedules import (
    NEVER,
    DueSchedule,
    Visit,
    due_schedules,
    mark_visited,
    runs_created,
)


@dataclass(frozen=True)
class Policy:
    min_runs: int = 3
    horizon: timedelta = timedelta(hours=1)
    max_runs: int = 100
    # Schedules per transaction: ~7,500 runs of minutely schedules, under a second of holding
    # SQLite's write lock, so API writes made meanwhile wait little.
    batch_size: int = 100


DEFAULT_POLICY = Policy()
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedRun:
    instant: Instant
    scheduled_time: datetime
    state: StateType = StateType.SCHEDULED
    reason: Reason | None = None


@dataclass(frozen=True)
class Plan:
    runs: list[PlannedRun]
    scheduled_until: datetime | None
    visit_at: datetime


@dataclass
class TickResult:
    schedules: int = 0
    runs_created: int = 0
    batches: int = 0


def plan(schedule: Cron | Interval | RRule, *, last: datetime | None, now: datetime,
         catchup: str = "latest", misfire_grace: timedelta = timedelta(minutes=5),
         remaining: int | None = None, policy: Policy = DEFAULT_POLICY) -> Plan:
    """What one visit of `schedule` creates; `last` is its last materialised instant.

    `remaining` is what is left of the schedule's `max_runs` countdown (None: no countdown).
    """
    cutoff = now - misfire_grace
    missed = _missed(schedule, last, cutoff, policy) if last is not None else []
    after = max(last, cutoff) if last is not None else now
    room = policy.max_runs - _future_count(schedule, last, now, policy)
    if remaining is not None:
        missed = missed[max(len(missed) - max(remaining, 0), 0):]  # the countdown covers them too
        room = min(room, remaining - len(missed))
    fresh = _fresh(schedule, after, now, room, policy)
    planned = _jittered(schedule, _catch_up(missed, catchup) + [PlannedRun(i, i.time)
                                                               for i in fresh])
    newest = planned[-1].instant.time if planned else last
    capped = len(fresh) >= room
    ended = (remaining is not None and len(fresh) >= room) or not schedule.next_instants(
        fresh[-1].time if fresh else after, count=1)
    return Plan(planned, newest, _next_visit(fresh, now, policy, capped=capped, ended=ended))


def _missed(schedule: Cron | Interval | RRule, last: datetime, cutoff: datetime, policy: Policy
            ) -> list[Instant]:
    """Slots after `last` that are older than the grace period, newest `max_runs` of them."""
    if cutoff <= last:
        return []
    found: list[Instant] = []
    after = last
    while batch := schedule.next_instants(after, count=1000, until=cutoff):
        found = (found + batch)[-policy.max_runs:]
        after = batch[-1].time
    return found


def _catch_up(missed: list[Instant], catchup: str) -> list[PlannedRun]:
    if catchup == "all":
        return [PlannedRun(i, i.time) for i in missed]
    if catchup == "latest":
        older = [PlannedRun(i, i.time, StateType.SKIPPED, Reason.SUPERSEDED) for i in missed[:-1]]
        return older + [PlannedRun(i, i.time) for i in missed[-1:]]
    return [PlannedRun(i, i.time, StateType.SKIPPED, Reason.CATCHUP_MISSED) for i in missed]


def _future_count(schedule: Cron | Interval | RRule, last: datetime | None, now: datetime,
                  policy: Policy) -> int:
    if last is None or last <= now:
        return 0
    return len(schedule.next_instants(now, count=policy.max_runs, until=last))


def _target(now: datetime, policy: Policy) -> datetime:
    return now + policy.horizon * 1.25


def _fresh(schedule: Cron | Interval | RRule, after: datetime, now: datetime, room: int,
           policy: Policy) -> list[Instant]:
    """New instants after `after`: through the target horizon, at least `min_runs` in the
    future, at most `room`."""
    if room <= 0:
        return []
    found = schedule.next_instants(after, count=room, until=_target(now, policy))
    future = sum(1 for i in found if i.time > now)
    if future < policy.min_runs and len(found) < room:
        found = schedule.next_instants(after, count=min(room, len(found) - future
                                                        + policy.min_runs))
    return found


def _next_visit(fresh: list[Instant], now: datetime, policy: Policy, *, capped: bool,
                ended: bool) -> datetime:
    """When the runs will fall short of the horizon or of `min_runs` — or mid-batch if the
    `max_runs` cap, not the horizon, decided the batch."""
    if ended:
        return NEVER
    future = [i.time for i in fresh if i.time > now]
    if not future:
        return now + policy.horizon / 4
    short_of_horizon = future[-1] - policy.horizon
    short_of_count = future[-policy.min_runs] if len(future) >= policy.min_runs else now
    visit = min(short_of_horizon, short_of_count)
    if capped:
        visit = max(visit, future[len(future) // 2])
    return max(visit, now + timedelta(seconds=1))


def _jittered(schedule: Cron | Interval | RRule, planned: list[PlannedRun]) -> list[PlannedRun]:
    """Delay each run by the schedule's deterministic jitter, never up to the following slot."""
    if not schedule.jitter or not planned:
        return planned
    beyond = schedule.next_instants(planned[-1].instant.time, count=1)
    following: list[datetime | None] = [p.instant.time for p in planned[1:]]
    following.append(beyond[0].time if beyond else None)
    seed = schedule.slug
    return [
        PlannedRun(p.instant, schedule.jittered(p.instant.time, nxt, seed), p.state, p.reason)
        for p, nxt in zip(planned, following, strict=True)
    ]


def tick(database: Database, now: datetime | None = None, policy: Policy = DEFAULT_POLICY,
         should_stop: Callable[[], bool] = lambda: False) -> TickResult:
    """One pass: visit every schedule that is due, a batch per transaction.

    `should_stop` is asked between batches, so a long first pass can be interrupted.
    """
    now = now or datetime.now(UTC)
    result = TickResult()
    while not should_stop():
        with database.write() as conn:
            due = due_schedules(conn, database, now, policy.batch_size)
            visits, rows = _visit_all(conn, due, now, policy)
            result.runs_created += runs.insert_runs(conn, rows)
            mark_visited(conn, visits)
        result.schedules += len(due)
        result.batches += 1
        if len(due) < policy.batch_size:
            break
    return result


def _visit_all(conn: Connection, due: list[DueSchedule], now: datetime, policy: Policy
               ) -> tuple[list[Visit], list[dict[str, Any]]]:
    """Plan every due schedule. One that cannot be planned is logged and looked at again a
    horizon later, so it never holds up the others."""
    visits: list[Visit] = []
    rows: list[dict[str, Any]] = []
    created = runs_created(conn, due)
    made_at = datetime.now(UTC)
    for item in due:
        schedule = item.definition
        remaining = None
        if schedule.max_runs is not None:
            remaining = schedule.max_runs - created.get((item.deployment_id, schedule.slug), 0)
        try:
            result = plan(schedule, last=item.scheduled_until, now=now, catchup=item.catchup,
                          misfire_grace=timedelta(seconds=item.misfire_grace),
                          remaining=remaining, policy=policy)
        except Exception:
            log.exception("cannot plan schedule %s of %s", schedule.slug, item.deployment)
            visits.append(Visit(item.id, item.scheduled_until, now + policy.horizon))
            continue
        parameters = {**item.parameters, **schedule.parameters}  # one object for all its runs
        rows.extend(_run_values(item, p, parameters, made_at) for p in result.runs)
        visits.append(Visit(item.id, result.scheduled_until, result.visit_at))
    return visits, rows


def _run_values(item: DueSchedule, planned: PlannedRun, parameters: dict[str, Any],
                made_at: datetime) -> dict[str, Any]:
    return runs.slot_run_values(
        item.deployment_id, item.deployment, item.definition.slug, planned.instant.time,
        scheduled_time=planned.scheduled_time, parameters=parameters, tags=item.tags,
        created=made_at,
        auto_scheduled=True, state=planned.state, reason=planned.reason,
    )
