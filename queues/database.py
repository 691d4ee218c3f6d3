"""Engines for SQLite and PostgreSQL, and the two ways to use them: read and write transactions.

The backends differ by a few flags, not by class trees. SQLite gets WAL, foreign keys and a busy
timeout, and every write transaction starts with `BEGIN IMMEDIATE` so writers queue for the lock
up front instead of failing with "database is locked" half-way; within one process writers also
take a lock, so they wait their turn without spinning on SQLite's busy handler. PostgreSQL gets
row locks with `FOR UPDATE SKIP LOCKED` where processes compete.
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    create_engine,
    event,
    exists,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.pool import NullPool

from ostinato.deploy.errors import InvalidInput

SQLITE_BUSY_TIMEOUT_MS = 60_000


@dataclass
class Database:
    """An engine plus what the code needs to know about its backend."""

    engine: Engine
    _write_lock: threading.Lock | None = field(default=None, repr=False)
    # Called after each commit that made work available.
    work_listeners: list[Callable[[WorkNotice], None]] = field(default_factory=list)
    # Signs this object's NOTIFY payloads: its own notices reached its listeners at commit.
    notice_tag: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def skip_locked(self) -> bool:
        """Whether row locks can skip rows other transactions hold (PostgreSQL)."""
        return self.dialect == "postgresql"

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction (`BEGIN IMMEDIATE` on SQLite); rolled back if the block raises.

        If the transaction made work available (see `mark_work_available`), the listeners hear
        of it after the commit, with the earliest time the new work is due.
        """
        with self._write_lock or nullcontext(), self.engine.connect() as conn:
            conn.execution_options(ostinato_write=True)
            conn.info.pop(_NOTICE, None)
            with conn.begin():
                yield conn
                notice: WorkNotice | None = conn.info.pop(_NOTICE, None)
                if notice and not self.is_sqlite:
                    conn.execute(select(func.pg_notify(WORK_CHANNEL,
                                                       notice.payload(self.notice_tag))))
        if notice:
            for listener in self.work_listeners:
                listener(notice)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: one consistent snapshot; readers never block writers in WAL mode."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()


WORK_CHANNEL = "ostinato_work"
_NOTICE = "ostinato_work_notice"


@dataclass(frozen=True)
class WorkNotice:
    """What a transaction made claimable: `count` runs or slots (None: unknown, tell every
    poll), the earliest of them due at `due_at` (None: now)."""

    due_at: datetime | None = None
    count: int | None = None

    def merge(self, other: WorkNotice) -> WorkNotice:
        due_at = (None if self.due_at is None or other.due_at is None
                  else min(self.due_at, other.due_at))
        count = None if self.count is None or other.count is None else self.count + other.count
        return WorkNotice(due_at, count)

    def payload(self, sender: str) -> str:
        due_at = "" if self.due_at is None else self.due_at.isoformat()
        return f"{sender} {due_at} {'' if self.count is None else self.count}"

    @classmethod
    def parse(cls, payload: str) -> tuple[str, WorkNotice]:
        """The sender's tag and the notice, from a NOTIFY payload (unreadable parts: now, all)."""
        sender, due_at, count = ([*payload.split(" "), "", ""])[:3]
        try:
            return sender, cls(datetime.fromisoformat(due_at) if due_at else None,
                               int(count) if count else None)
        except ValueError:
            return sender, cls()


def mark_work_available(conn: Connection, notice: WorkNotice | None = None) -> None:
    """Record that this transaction creates claimable work or frees slots. After the commit
    the long polls of this process hear of it; on PostgreSQL a NOTIFY sent with the commit (and
    dropped on rollback) tells those of other processes."""
    notice = notice or WorkNotice()
    previous: WorkNotice | None = conn.info.get(_NOTICE)
    conn.info[_NOTICE] = previous.merge(notice) if previous else notice


def lock_names(conn: Connection, names: Iterable[str]) -> None:
    """Serialise the transactions that decide about the same names (a queue's or a tag's free
    slots, a deployment's overlap) until this one ends.

    PostgreSQL: advisory transaction locks, taken in one global order so that two transactions
    never wait on each other in a cycle. SQLite's single writer serialises them already.
    """
    if conn.dialect.name != "postgresql":
        return
    keys = sorted({int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big",
                                  signed=True) for name in names})
    for key in keys:
        conn.execute(select(func.pg_advisory_xact_lock(key)))


def json_array_contains(dialect: str, column: ColumnElement[Any], value: str
                        ) -> ColumnElement[bool]:
    """`value` is an element of the JSON array in `column` (exact match, any characters)."""
    if dialect == "postgresql":
        return column.cast(JSONB).contains([value])
    elements = func.json_each(column).table_valued("value")
    return exists(select(1).select_from(elements).where(elements.c.value == value))


def dialect_insert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into `table` with the backend's `ON CONFLICT` clauses."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def insert_ignoring_duplicates(conn: Connection, table: Table, *unique: str
                               ) -> postgresql.Insert | sqlite.Insert:
    """An INSERT into `table` that skips rows whose `unique` columns match an existing row."""
    return dialect_insert(conn, table).on_conflict_do_nothing(index_elements=list(unique))


def connect(url: str, **engine_options: Any) -> Database:
    """Open a database by URL; a SQLite file's folder is created if missing.

    The URL travels as an object, never as a string: `str()` of one masks its password.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:  # some SQLAlchemy versions quote the URL, password and all
        raise InvalidInput("the database URL is not a URL such as "
                           "postgresql://user:password@host/database") from None
    if parsed.get_backend_name() == "sqlite":
        return _connect_sqlite(url, engine_options)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    # As many connections as the API has worker threads (40), so a busy server queues requests
    # on threads, not on the pool.
    engine = create_engine(parsed, pool_pre_ping=True, pool_size=10, max_overflow=30,
                           **engine_options)
    return Database(engine)


def _connect_sqlite(url: str, engine_options: dict[str, Any]) -> Database:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        poolclass=NullPool if database in (None, "", ":memory:") else None,
        **engine_options,
    )
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_sqlite_transaction)
    return Database(engine, threading.Lock())


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # The sqlite3 module's implicit BEGIN is turned off; _begin_sqlite_transaction emits our own.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _begin_sqlite_transaction(conn: Connection) -> None:
    # A writer takes the write lock at BEGIN, so it waits (busy_timeout) instead of failing later
    # when a read lock cannot be upgraded.
    write = conn.get_execution_options().get("ostinato_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
