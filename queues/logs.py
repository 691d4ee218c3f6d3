"""Run logs: stored in the batches agents send, read back in order, page by page.

A line's id orders a run's lines (ids grow with each insert), so `after` is a cursor a follower
can hold across polls without missing or repeating a line.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Connection, insert, select

from ostinato.deploy.errors import NotFound
from ostinato.deploy.protocol import LogLine, LogRecord
from ostinato.queues.tables import flow_runs, logs

MAX_LOG_PAGE = 5000


def add_logs(conn: Connection, run_id: uuid.UUID, lines: list[LogLine]) -> int:
    """Store a batch of the run's log lines; NotFound if there is no such run."""
    _require_run(conn, run_id)
    conn.execute(insert(logs), [{"flow_run_id": run_id, **line.model_dump()} for line in lines])
    return len(lines)


def read_logs(conn: Connection, run_id: uuid.UUID, *, after: int = 0,
              limit: int = MAX_LOG_PAGE) -> list[LogRecord]:
    """The run's lines with an id above `after`, oldest first, at most `limit` of them."""
    _require_run(conn, run_id)
    rows = conn.execute(
        select(logs.c.id, logs.c.flow_run_id, logs.c.timestamp, logs.c.level, logs.c.logger,
               logs.c.message)
        .where(logs.c.flow_run_id == run_id, logs.c.id > after)
        .order_by(logs.c.id).limit(min(limit, MAX_LOG_PAGE)))
    return [LogRecord.model_validate(row._mapping) for row in rows]


def _require_run(conn: Connection, run_id: uuid.UUID) -> None:
    if conn.execute(select(flow_runs.c.id).where(flow_runs.c.id == run_id)).first() is None:
        raise NotFound(f"flow run {run_id} not found")
