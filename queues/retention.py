"""Retention: finished runs older than the configured age are deleted, a small batch per
transaction, with everything recorded about them.

A run is deleted once it is finished (a terminal state) and both its scheduled time and its end
(for a run that never started, like a SKIPPED one: its last change) are older than the cutoff.
A run is never scheduled after it ends, so the scheduled time bounds the search to one range of
the `(state, scheduled_time)` index per terminal state, oldest first; the end time only filters
that range. An idle pass costs one index probe per terminal state.

The rows that hang off a run — state history, logs, task runs, notification deliveries — go with
it through their foreign keys' `ON DELETE CASCADE` (each one looked up by its `flow_run_id`
index). The finished subflow runs of a deleted run are deleted with it, so none is left orphaned
for a pass; an unfinished one keeps living, its parent set to NULL by its foreign key.

Kept whatever their age: runs of schedules with a `max_runs` countdown, which the scheduler
counts runs against (deleting them would restart the countdown).

Batches stay short so SQLite's single writer is held briefly and claims go in between: a pass
starts with a small batch, each next batch's size follows how long the previous one took, and
the pass pauses as long as a batch took before the next one. On PostgreSQL the candidates are
locked with `SKIP LOCKED`, so several schedulers purging at once take different runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Connection, and_, delete, exists, func, not_, select

from ostinato.deploy.settings import Settings
from ostinato.deploy.states import TERMINAL_STATES
from ostinato.queues.database import Database
from ostinato.queues.tables import flow_runs, schedules

_ENDED = sorted(state.value for state in TERMINAL_STATES)


@dataclass(frozen=True)
class Retention:
    """How long finished runs are kept (None: for ever) and how deleting them shares the
    database with everything else."""

    max_age: timedelta | None = None
    batch_size: int = 500  # at most, per transaction
    # A pass starts small: a run with thousands of log lines and task runs costs ~3 ms to delete
    # on SQLite, so 500 of them would hold the write lock for over a second.
    first_batch_size: int = 50
    batch_seconds: float = 0.1  # batches grow or shrink to take about this long
    pass_seconds: float = 10.0  # one pass stops after this; the next one goes on

    @classmethod
    def from_settings(cls, settings: Settings) -> Retention:
        days = settings.retention_days
        return cls(None if days is None else timedelta(days=days))


@dataclass
class PurgeResult:
    runs_deleted: int = 0
    batches: int = 0
    cutoff: datetime | None = None


def purge_finished_runs(database: Database, retention: Retention, now: datetime,
                        pause: Callable[[float], bool] = lambda _: False) -> PurgeResult:
    """Delete batches of runs finished before `now - max_age` until none is left or the pass's
    time is up. Between batches it calls `pause(seconds)`, which stops the pass by returning
    True (the loops' stop event's `wait`)."""
    if retention.max_age is None:
        return PurgeResult()
    cutoff = now - retention.max_age
    result = PurgeResult(cutoff=cutoff)
    size = min(retention.first_batch_size, retention.batch_size)
    deadline = time.monotonic() + retention.pass_seconds
    while True:
        started = time.monotonic()
        with database.write() as conn:
            deleted = delete_finished_runs(conn, cutoff, size, skip_locked=database.skip_locked)
        took = time.monotonic() - started
        result.runs_deleted += deleted
        result.batches += 1
        if deleted < size or time.monotonic() + took > deadline or pause(took):
            return result
        size = _next_size(size, took, retention)


def _next_size(size: int, took: float, retention: Retention) -> int:
    """The next batch's size: scaled towards `batch_seconds`, at most doubled."""
    scale = min(2.0, retention.batch_seconds / max(took, 1e-3))
    return max(1, min(retention.batch_size, int(size * scale)))


def delete_finished_runs(conn: Connection, cutoff: datetime, limit: int, *,
                         skip_locked: bool = False) -> int:
    """Delete up to `limit` runs finished before `cutoff`, oldest first, with up to as many of
    their finished subflow runs (a bigger family loses the rest in later batches, which keeps
    every statement's id list short); how many runs were deleted."""
    chosen: list[uuid.UUID] = []
    for state in _ENDED:
        if len(chosen) < limit:
            chosen += _expired(conn, state, cutoff, limit - len(chosen), skip_locked)
    if not chosen:
        return 0
    family = chosen + _finished_descendants(conn, chosen, cutoff, limit)
    return int(conn.execute(delete(flow_runs).where(flow_runs.c.id.in_(family))).rowcount)


def _expired(conn: Connection, state: str, cutoff: datetime, limit: int, skip_locked: bool
             ) -> Sequence[uuid.UUID]:
    c = flow_runs.c
    query = (select(c.id)
             .where(c.state == state, c.scheduled_time < cutoff, _last_change() < cutoff,
                    not_(and_(c.auto_scheduled, _counted_down())))
             .order_by(c.scheduled_time).limit(limit))
    if skip_locked:
        query = query.with_for_update(skip_locked=True)
    return conn.execute(query).scalars().all()


def _last_change() -> ColumnElement[datetime]:
    """When a finished run ended, or changed last if it never started (SKIPPED)."""
    return func.coalesce(flow_runs.c.end_time, flow_runs.c.updated)


def _counted_down() -> ColumnElement[bool]:
    """The run's schedule has a `max_runs` countdown (see `queues.schedules.runs_created`)."""
    s, c = schedules.c, flow_runs.c
    return exists(select(1).where(s.deployment_id == c.deployment_id, s.slug == c.schedule_slug,
                                  s.definition["max_runs"].as_string().is_not(None)))


def _finished_descendants(conn: Connection, parents: list[uuid.UUID], cutoff: datetime,
                          limit: int) -> list[uuid.UUID]:
    """Up to `limit` finished subflow runs under `parents`, level by level. Only
    `parent_run_id` is in the WHERE clause, so its partial index is the one to use (a condition
    on the state would let SQLite, without statistics, scan every finished run of the state
    index instead)."""
    c = flow_runs.c
    found: list[uuid.UUID] = []
    while parents and len(found) < limit:
        children = conn.execute(select(c.id, c.state, _last_change().label("changed"))
                                .where(c.parent_run_id.in_(parents))).all()
        parents = [row.id for row in children
                   if row.state in _ENDED and row.changed < cutoff][:limit - len(found)]
        found += parents
    return found
