"""The notification loop's pass: queue the deliveries that rules call for, then post the due
ones to their webhooks (see `ostinato.queues.notifications` for the transactions).

Posting runs on the loops' threads, never on a request's, and outside any transaction: however
slow or broken a receiver is, claims and reports never wait for it, and no lock is held while
it answers. A batch is posted in parallel, so one receiver that hangs until the timeout delays
the others by at most that timeout.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from importlib.metadata import version

import httpx

from ostinato.deploy.settings import Settings
from ostinato.queues.database import Database
from ostinato.queues.notifications import (
    Backoff,
    DueDelivery,
    Outcome,
    queue_deliveries,
    record_outcomes,
    take_due,
)

BATCH = 8  # deliveries taken at once, each posted on a thread of its own
LEASE_MARGIN = timedelta(seconds=30)


@dataclass(frozen=True)
class WebhookPolicy:
    """How the loop posts: from the server's settings, or the defaults."""

    late_threshold: timedelta = timedelta(seconds=15)  # when a waiting run shows as Late
    timeout: float = 5.0  # seconds for one POST, connecting included
    backoff: Backoff = field(default_factory=Backoff)

    @property
    def lease(self) -> timedelta:
        """How long a taken delivery is held: its POST, and the transactions around it."""
        return timedelta(seconds=self.timeout) + LEASE_MARGIN

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookPolicy:
        return cls(late_threshold=timedelta(seconds=settings.late_threshold_seconds),
                   timeout=settings.notification_timeout_seconds,
                   backoff=Backoff(first=timedelta(seconds=settings.notification_retry_seconds)))


def notify(database: Database, policy: WebhookPolicy, *, should_stop: Callable[[], bool]
           ) -> str | None:
    """One pass; what it did, or None if nothing. Stops between batches once `should_stop`."""
    now = datetime.now(UTC)
    with database.write() as conn:  # an idle pass is this one transaction
        queued = queue_deliveries(conn, now, policy.late_threshold)
        taken = take_due(conn, now, BATCH, policy.lease)
    outcomes: list[Outcome] = []
    while taken:
        done = post_all(taken, policy.timeout)
        with database.write() as conn:
            record_outcomes(conn, done, datetime.now(UTC), policy.backoff)
            more = len(taken) == BATCH and not should_stop()
            taken = take_due(conn, datetime.now(UTC), BATCH, policy.lease) if more else []
        outcomes += done
    return _summary(queued, outcomes)


def post_all(deliveries: list[DueDelivery], timeout: float) -> list[Outcome]:
    """POST each delivery's document to its webhook, in parallel; how each went."""
    headers = {"User-Agent": f"ostinato/{version('ostinato')}"}
    with (httpx.Client(timeout=timeout, headers=headers) as http,
          ThreadPoolExecutor(len(deliveries), thread_name_prefix="webhook") as pool):
        return list(pool.map(partial(_post, http), deliveries))


def _post(http: httpx.Client, delivery: DueDelivery) -> Outcome:
    """Redirects are not followed: a receiver that moved answers 3xx, which is a failure."""
    try:
        response = http.post(delivery.webhook, json=delivery.document)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        reason = (str(exc) or type(exc).__name__).splitlines()[0]
        return Outcome(delivery, None, f"{type(exc).__name__}: {reason}")
    if response.is_success:
        return Outcome(delivery, response.status_code, None)
    return Outcome(delivery, response.status_code,
                   f"HTTP {response.status_code} {response.reason_phrase}".strip())


def _summary(queued: int, outcomes: list[Outcome]) -> str | None:
    if not (queued or outcomes):
        return None
    delivered = sum(outcome.error is None for outcome in outcomes)
    return (f"notifications: {queued} queued, {len(outcomes)} posted, {delivered} delivered, "
            f"{len(outcomes) - delivered} refused or unreachable")
