"""The scheduler's periodic loops, on APScheduler: materialising runs and catching up.

Each loop is one APScheduler job with `max_instances=1` and coalescing, so a slow pass is never
run twice at once and missed firings collapse into one. `stop()` is idempotent and interrupts a
long materialisation pass between batches. The server runs these loops in-process by default;
`ostinato scheduler start` runs them alone, and any number of them may share one database.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from ostinato.queues.catchup import skip_missed_runs
from ostinato.queues.database import Database
from ostinato.scheduler.materialize import DEFAULT_POLICY, Policy, tick

log = logging.getLogger(__name__)


class SchedulerLoops:
    def __init__(self, database: Database, *, interval: float = 2.0,
                 policy: Policy = DEFAULT_POLICY) -> None:
        self.database = database
        self.policy = policy
        self._stopping = threading.Event()
        self._jobs = BackgroundScheduler(
            timezone=UTC,
            job_defaults={"max_instances": 1, "coalesce": True, "misfire_grace_time": None},
        )
        now = datetime.now(UTC)
        for loop in (self.materialize, self.catch_up):
            self._jobs.add_job(loop, "interval", seconds=interval, next_run_time=now,
                               id=loop.__name__)

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

    def materialize(self) -> None:
        try:
            result = tick(self.database, policy=self.policy, should_stop=self._stopping.is_set)
        except Exception:
            log.exception("materialisation pass failed; retrying at the next interval")
            return
        if result.runs_created:
            log.info("materialised %d runs for %d schedules", result.runs_created,
                     result.schedules)

    def catch_up(self) -> None:
        try:
            with self.database.write() as conn:
                skipped = skip_missed_runs(conn, datetime.now(UTC))
        except Exception:
            log.exception("catch-up pass failed; retrying at the next interval")
            return
        if skipped:
            log.info("skipped %d runs that missed their time", skipped)
