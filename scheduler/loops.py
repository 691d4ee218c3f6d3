"""The scheduler's periodic loops, on APScheduler: materialising runs, catching up, reaping
claims whose lease expired, posting notifications, and deleting finished runs past their
retention (once a minute: their deletion need not be prompt).

Each loop is one APScheduler job with `max_instances=1` and coalescing, so a slow pass is never
run twice at once and missed firings collapse into one. `stop()` is idempotent and interrupts a
long materialisation pass between batches. The server runs these loops in-process by default;
`ostinato scheduler start` runs them alone, and any number of them may share one database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from functools import partial
from typing import Any

from apscheduler.events import EVENT_JOB_SUBMITTED
from apscheduler.schedulers.background import BackgroundScheduler

from ostinato.queues.catchup import skip_missed_runs
from ostinato.queues.database import Database
from ostinato.queues.leases import reap_expired
from ostinato.queues.retention import Retention, purge_finished_runs
from ostinato.scheduler.materialize import DEFAULT_POLICY, Policy, tick
from ostinato.scheduler.metrics import Metrics
from ostinato.scheduler.webhooks import WebhookPolicy, notify

log = logging.getLogger(__name__)
PURGE_INTERVAL = 60.0  # seconds between retention passes, at least


class SchedulerLoops:
    def __init__(self, database: Database, *, interval: float = 2.0,
                 policy: Policy = DEFAULT_POLICY, metrics: Metrics | None = None,
                 webhooks: WebhookPolicy | None = None, retention: Retention | None = None
                 ) -> None:
        self.database = database
        self.policy = policy
        self.webhooks = webhooks or WebhookPolicy()
        self.retention = retention or Retention()
        self.metrics = metrics
        self._stopping = threading.Event()
        self._jobs = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
        )
        now = datetime.now(UTC)
        self._loops = (self.materialize, self.catch_up, self.reap, self.notify, self.purge)
        for loop in self._loops:
            every = max(interval, PURGE_INTERVAL) if loop == self.purge else interval
            self._jobs.add_job(_logged(loop, metrics), "interval", seconds=every,
                               next_run_time=now, id=loop.__name__)
        if metrics:
            self._jobs.add_listener(partial(_record_lag, metrics), EVENT_JOB_SUBMITTED)

    def start(self) -> None:
        self._jobs.start()

    def stop(self) -> None:
        """Stop the loops and wait for a running pass to end (idempotent)."""
        self._stopping.set()
        if self._jobs.running:
            self._jobs.shutdown(wait=True)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop() is called (for `ostinato scheduler start`)."""
        return self._stopping.wait(timeout)

    def run_once(self) -> list[str]:
        """One pass of every loop, now, in this thread; what each did (`scheduler start
        --once`)."""
        return [f"{loop.__name__}: {loop() or 'nothing to do'}" for loop in self._loops]

    def materialize(self) -> str | None:
        result = tick(self.database, policy=self.policy, should_stop=self._stopping.is_set)
        if not result.runs_created:
            return None
        return f"materialised {result.runs_created} runs for {result.schedules} schedules"

    def catch_up(self) -> str | None:
        with self.database.write() as conn:
            skipped = len(skip_missed_runs(conn, datetime.now(UTC)))
        return f"skipped {skipped} runs that missed their time" if skipped else None

    def reap(self) -> str | None:
        with self.database.write() as conn:
            returned, crashed = reap_expired(conn, datetime.now(UTC))
        if self.metrics:
            self.metrics.reaped(returned, crashed)
        if not (returned or crashed):
            return None
        return (f"leases expired: {returned} claimed runs back in their queues, {crashed} "
                f"running runs crashed")

    def notify(self) -> str | None:
        """Post the documents notification rules call for (a slow receiver delays only this
        loop)."""
        return notify(self.database, self.webhooks, should_stop=self._stopping.is_set)

    def purge(self) -> str | None:
        """Delete finished runs past their retention, a few short batches at a time."""
        done = purge_finished_runs(self.database, self.retention, datetime.now(UTC),
                                   pause=self._stopping.wait)
        if not done.runs_deleted:
            return None
        return (f"deleted {done.runs_deleted} runs finished before {done.cutoff:%Y-%m-%d %H:%M} "
                f"UTC, with their logs and task runs, in {done.batches} batches")


def _logged(loop: Callable[[], str | None], metrics: Metrics | None) -> Callable[[], None]:
    """A loop as a job: what it did is logged, and a failed pass is retried next interval."""
    def job() -> None:
        try:
            with metrics.timing_pass(loop.__name__) if metrics else nullcontext():
                done = loop()
        except Exception:
            log.exception("%s pass failed; retrying at the next interval", loop.__name__)
            return
        if done:
            log.info("%s", done)

    job.__name__ = loop.__name__
    return job


def _record_lag(metrics: Metrics, event: Any) -> None:
    """How late APScheduler submitted a pass (to a thread pool with a free thread: it starts at
    once): the time since the firing it was due at, the latest one if it coalesced several."""
    metrics.started_late(event.job_id, datetime.now(UTC) - event.scheduled_run_times[-1])
