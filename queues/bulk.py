"""Bulk insert of runs — the materialisation hot path — without per-row bind processing.

SQLAlchemy converts every value of every row through its type processors, which costs more
than the database's own work for tens of thousands of runs. Here each value is converted once
to what the driver takes, and handed over in one go: SQLite gets a plain `executemany`;
PostgreSQL gets COPY into a temporary table and one `INSERT … SELECT … ON CONFLICT DO NOTHING`.
The stored values are exactly those SQLAlchemy would store (tests/test_bulk.py reads both back).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.exc import DataError

from ostinato.queues.tables import flow_runs

_IDENTITY = "deployment_id, schedule_slug, nominal_time"


def insert_runs_ignoring_duplicates(conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """Insert `rows` (all with the same keys) into flow_runs; returns how many went in."""
    if conn.dialect.name == "postgresql":
        return _copy_then_insert(conn, rows)
    columns = list(rows[0])
    values = _converted(rows, columns, _sqlite_converter)
    placeholders = ", ".join("?" * len(columns))
    before = conn.exec_driver_sql("SELECT total_changes()").scalar_one()
    conn.exec_driver_sql(
        f"INSERT INTO flow_runs ({', '.join(columns)}) VALUES ({placeholders}) "
        f"ON CONFLICT ({_IDENTITY}) DO NOTHING", values)
    return int(conn.exec_driver_sql("SELECT total_changes()").scalar_one() - before)


def _converted(rows: Sequence[dict[str, Any]], columns: list[str],
               converter: Callable[[Any], Callable[[Any], Any]]) -> list[tuple[Any, ...]]:
    convert = [converter(rows[0][name]) for name in columns]
    return [tuple(f(row[name]) for f, name in zip(convert, columns, strict=True))
            for row in rows]


def _sqlite_converter(sample: Any) -> Callable[[Any], Any]:
    """How to store a column's values, chosen once from its first value: what SQLAlchemy's
    types store in SQLite (hex UUIDs, naive-UTC `YYYY-MM-DD HH:MM:SS.ffffff`, JSON text)."""
    if isinstance(sample, uuid.UUID):
        return _maybe(lambda value: value.hex)
    if isinstance(sample, datetime):
        return _maybe(lambda value: value.astimezone(UTC).replace(tzinfo=None)
                      .isoformat(" ", "microseconds"))
    if isinstance(sample, dict | list):
        return _json_once()
    return _identity


def _postgres_converter(sample: Any) -> Callable[[Any], Any]:
    """psycopg adapts UUIDs and aware times itself; JSON goes as text (COPY parses it)."""
    return _json_once() if isinstance(sample, dict | list) else _identity


def _identity(value: Any) -> Any:
    return value


def _maybe(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


def _json_once() -> Callable[[Any], str | None]:
    """JSON text, serialised once per object: the runs of one schedule share their
    parameters and tags."""
    done: dict[int, tuple[Any, str]] = {}

    def convert(value: Any) -> str | None:
        if value is None:
            return None
        kept = done.get(id(value))
        if kept is None or kept[0] is not value:
            kept = done[id(value)] = (value, json.dumps(value))
        return kept[1]
    return convert


def _copy_then_insert(conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    import psycopg

    try:
        return _copy_into(conn, rows)
    except psycopg.DataError as exc:  # what SQLAlchemy would raise, so the API answers 422
        raise DataError("COPY runs_in", None, exc) from exc


def _copy_into(conn: Connection, rows: Sequence[dict[str, Any]]) -> int:
    """COPY the columns that vary from row to row; the ones every row shares (state, times of
    creation, flags — about half of them) go once, as parameters of the INSERT … SELECT."""
    first = rows[0]
    shared = [name for name, value in first.items() if name != "id"
              and all(row[name] == value for row in rows)]
    copied = [name for name in first if name not in shared]
    constants = [_postgres_converter(first[name])(first[name]) for name in shared]
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    cursor.execute("CREATE TEMP TABLE IF NOT EXISTS runs_in ON COMMIT DELETE ROWS "
                   "AS SELECT * FROM flow_runs WITH NO DATA")  # no NOT NULLs: some stay empty
    with cursor.copy(f"COPY runs_in ({', '.join(copied)}) FROM STDIN") as copy:
        for row in _converted(rows, copied, _postgres_converter):
            copy.write_row(row)
    typed = [f"CAST(%s AS {_postgres_type(conn, name)})" for name in shared]
    cursor.execute(f"INSERT INTO flow_runs ({', '.join(copied + shared)}) "
                   f"SELECT {', '.join(copied + typed)} FROM runs_in "
                   f"ON CONFLICT ({_IDENTITY}) DO NOTHING", constants)
    inserted = int(cursor.rowcount)
    cursor.execute("TRUNCATE runs_in")
    return inserted


def _postgres_type(conn: Connection, column: str) -> str:
    return str(flow_runs.c[column].type.compile(dialect=conn.dialect))
