"""The scheduler's periodic loops, on APScheduler: materialising runs, catching up, and reaping
claims whose lease expired.

Each loop is one APScheduler job with `max_instances=1` and coalescing, so a slow pass is never
run twice at once and missed firings collapse into one. `stop()` is idempotent and interrupts a
long materialisation pass between batches. The server runs these loops in-process by default;
`ostinato scheduler start` runs them alone, and any number of them may share one database.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from ostinato.queues.catchup import skip_missed_runs
from ostinato.queues.database import Database
from ostinato.queues.leases import reap_expired
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
        self._loops = (self.materialize, self.catch_up, self.reap)
        for loop in self._loops:
            self._jobs.add_job(_logged(loop), "interval", seconds=interval, next_run_time=now,
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
        if not (returned or crashed):
            return None
        return (f"leases expired: {returned} claimed runs back in their queues, {crashed} "
                f"running runs crashed")


def _logged(loop: Callable[[], str | None]) -> Callable[[], None]:
    """A loop as a job: what it did is logged, and a failed pass is retried next interval."""
    def job() -> None:
        try:
            done = loop()
        except Exception:
            log.exception("%s pass failed; retrying at the next interval", loop.__name__)
            return
        if done:
            log.info("%s", done)

    job.__name__ = loop.__name__
    return job
