"""Waking long polls: a waiting claim holds no thread and no database connection, only a future
on the server's event loop, resolved when work may have become available.

Work becomes available when a transaction creates runs, puts runs back to SCHEDULED or frees a
slot (`mark_work_available`); after its commit the database calls the listeners of this process.
On PostgreSQL the same transaction sends a NOTIFY, and `PostgresListener` — one connection per
server process, not per poll — hears those of other processes.

A notice says how many runs or slots it is about, and when they are due. It wakes that many
polls — the longest waiting first, and only those that would otherwise sleep past the due time —
not all of them: with hundreds of agents waiting, one finished run must not make hundreds of
claims. A woken poll that fills its whole batch (there may be more) passes the wake on to the next
poll; one that finds nothing it can take passes it on to the next poll of *other* queues — polls of
the same queues would find nothing either — so a wake visits each set of queues at most once, and
work is never left unclaimed while some poll could take it.

When the server shuts down, `close` wakes every poll for good, so each answers at once with what
it has instead of holding the shutdown up until its wait ends.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ostinato.queues.database import WORK_CHANNEL, Database, WorkNotice

log = logging.getLogger(__name__)
FOREVER = datetime.max.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Baton:
    """A wake that may be passed on: when the work is due, and the sets of queues already found
    to have nothing for it."""

    due_at: datetime | None
    tried: frozenset[frozenset[str]] = frozenset()


@dataclass(eq=False)
class Waiter:
    """One waiting long poll."""

    future: asyncio.Future[None]
    queues: frozenset[str]
    prefetch: timedelta
    wakes_at: datetime = FOREVER  # when it wakes anyway: its next run falls due or it times out
    baton: Baton | None = None  # set when a notice woke it

    def wants(self, due_at: datetime | None) -> bool:
        """Whether work due at `due_at` is worth waking for (it is due before this wakes)."""
        return not self.future.done() and (
            due_at is None or due_at - self.prefetch < self.wakes_at)

    async def sleep(self, seconds: float) -> Baton | None:
        """Sleep up to `seconds`, or until woken (at once if woken since it was registered);
        the baton if a notice woke it."""
        self.wakes_at = datetime.now(UTC) + timedelta(seconds=seconds)
        await asyncio.wait([self.future], timeout=seconds)
        return self.baton


@dataclass
class WorkNotifier:
    """The long polls waiting in this process; `notify` may be called from any thread."""

    loop: asyncio.AbstractEventLoop
    _waiters: dict[Waiter, None] = field(default_factory=dict)  # oldest first
    closed: bool = field(default=False, init=False)  # set by `close`: answer, do not wait

    @contextmanager
    def waiter(self, queues: frozenset[str], prefetch: timedelta) -> Iterator[Waiter]:
        """Register before looking for work, so a notice that comes meanwhile is not lost."""
        waiter = Waiter(self.loop.create_future(), queues, prefetch)
        if self.closed:
            waiter.future.set_result(None)
        self._waiters[waiter] = None
        try:
            yield waiter
        finally:
            self._waiters.pop(waiter, None)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def notify(self, notice: WorkNotice | None = None) -> None:
        """Work may be available (thread-safe)."""
        self._on_loop(self._wake, notice or WorkNotice())

    def close(self) -> None:
        """The server is shutting down: wake every poll, now and from now on (thread-safe)."""
        self._on_loop(self._close)

    def _on_loop(self, callback: Callable[..., None], *args: object) -> None:
        try:
            self.loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass

    def _close(self) -> None:
        self.closed = True
        for waiter in self._waiters:
            if not waiter.future.done():
                waiter.future.set_result(None)

    def _wake(self, notice: WorkNotice) -> None:
        baton = Baton(notice.due_at)
        chosen = [w for w in self._waiters if w.wants(notice.due_at)]
        for waiter in chosen if notice.count is None else chosen[:notice.count]:
            self._hand(waiter, baton)

    def pass_on(self, baton: Baton, holder: Waiter, *, found_nothing: bool) -> None:
        """The holder of the baton is done with it: wake the next poll that may find work."""
        tried = baton.tried | {holder.queues} if found_nothing else baton.tried
        for waiter in self._waiters:
            if (waiter is not holder and waiter.queues not in tried
                    and waiter.wants(baton.due_at)):
                self._hand(waiter, Baton(baton.due_at, tried))
                return

    @staticmethod
    def _hand(waiter: Waiter, baton: Baton) -> None:
        waiter.baton = baton
        waiter.future.set_result(None)


STOP_CHECK_SECONDS = 0.2  # how long `stop()` may wait for the listening thread


class PostgresListener:
    """LISTENs for the work notices of other server and scheduler processes on one dedicated
    connection; reconnects with back-off, and wakes everyone after reconnecting, since notices
    sent meanwhile are lost."""

    def __init__(self, database: Database, notifier: WorkNotifier) -> None:
        url = database.engine.url.set(drivername="postgresql")
        self._url = url.render_as_string(hide_password=False)
        self._own_tag = database.notice_tag
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
                for message in conn.notifies(timeout=STOP_CHECK_SECONDS):
                    sender, notice = WorkNotice.parse(message.payload)
                    if sender != self._own_tag:
                        self._notifier.notify(notice)
