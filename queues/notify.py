"""Waking long polls: a waiting claim holds no thread and no database connection, only a future
on the server's event loop, resolved when work may have become available.

Work becomes available when a transaction creates runs, puts runs back to SCHEDULED or frees a
slot (`mark_work_available`); after its commit the database calls the listeners of this process.
On PostgreSQL the same transaction sends a NOTIFY, and `PostgresListener` — one connection per
server process, not per poll — hears those of other processes. Each notice says when the new work
is due, so a poll sleeping until an earlier time is not woken by runs created for later.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from ostinato.queues.database import WORK_CHANNEL, parse_work_notice

log = logging.getLogger(__name__)
FOREVER = datetime.max.replace(tzinfo=UTC)


@dataclass(eq=False)
class Waiter:
    """One waiting long poll: woken by work due before it would wake anyway."""

    future: asyncio.Future[None]
    prefetch: timedelta
    wakes_at: datetime = FOREVER

    def wants(self, due_at: datetime | None) -> bool:
        return due_at is None or due_at - self.prefetch < self.wakes_at

    async def sleep(self, seconds: float) -> None:
        """Sleep up to `seconds`, or until notified (at once if notified since creation)."""
        self.wakes_at = datetime.now(UTC) + timedelta(seconds=seconds)
        await asyncio.wait([self.future], timeout=seconds)


@dataclass
class WorkNotifier:
    """The long polls waiting in this process; `notify` may be called from any thread."""

    loop: asyncio.AbstractEventLoop
    _waiters: set[Waiter] = field(default_factory=set)

    @contextmanager
    def waiter(self, prefetch: timedelta) -> Iterator[Waiter]:
        """Register before looking for work, so a notice that comes meanwhile is not lost."""
        waiter = Waiter(self.loop.create_future(), prefetch)
        self._waiters.add(waiter)
        try:
            yield waiter
        finally:
            self._waiters.discard(waiter)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def notify(self, due_at: datetime | None = None) -> None:
        """Work due at `due_at` (None: now) may be available."""
        try:
            self.loop.call_soon_threadsafe(self._wake, due_at)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass

    def _wake(self, due_at: datetime | None) -> None:
        for waiter in self._waiters:
            if not waiter.future.done() and waiter.wants(due_at):
                waiter.future.set_result(None)


class PostgresListener:
    """LISTENs for the work notices of other server and scheduler processes on one dedicated
    connection; reconnects with back-off, and wakes everyone after reconnecting, since notices
    sent meanwhile are lost."""

    def __init__(self, engine: Engine, notifier: WorkNotifier) -> None:
        self._url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._notifier = notifier
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ostinato-listen", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        delay = 0.5
        while not self._stopping.is_set():
            try:
                self._listen()
                delay = 0.5
            except Exception:  # any failure of the connection: reconnect after a pause
                log.warning("lost the PostgreSQL LISTEN connection; reconnecting in %.1fs",
                            delay, exc_info=True)
                self._stopping.wait(delay)
                delay = min(delay * 2, 30.0)

    def _listen(self) -> None:
        import psycopg

        with psycopg.connect(self._url, autocommit=True) as conn:
            conn.execute(f"LISTEN {WORK_CHANNEL}")
            self._notifier.notify()
            while not self._stopping.is_set():
                for notice in conn.notifies(timeout=1.0):
                    foreign, due_at = parse_work_notice(notice.payload)
                    if foreign:
                        self._notifier.notify(due_at)
