"""Run logs: stored with the batches agents send (`queues.events`), read back in order, page by
page.

A line's id orders a run's lines (ids grow with each insert), so `after` is a cursor a follower
can hold across polls without missing or repeating a line. A subflow run's lines are stored
under it, not under the run that called it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import Connection, insert, select

from ostinato.deploy.protocol import LogLine, LogRecord
from ostinato.queues.runs import require_run
from ostinato.queues.tables import logs

MAX_LOG_PAGE = 5000


def insert_logs(conn: Connection, run_id: uuid.UUID, lines: Sequence[LogLine]) -> None:
    """Store lines sent for the run: each under the subflow run it names, else under the run."""
    if lines:
        conn.execute(insert(logs), [{**line.model_dump(), "flow_run_id": line.flow_run_id or run_id}
                                    for line in lines])


def read_logs(conn: Connection, run_id: uuid.UUID, *, after: int = 0,
              limit: int = MAX_LOG_PAGE) -> list[LogRecord]:
    """The run's lines with an id above `after`, oldest first, at most `limit` of them."""
    require_run(conn, run_id)
    c = logs.c
    rows = conn.execute(
        select(c.id, c.flow_run_id, c.task_run_id, c.timestamp, c.level, c.logger, c.message)
        .where(c.flow_run_id == run_id, c.id > after)
        .order_by(c.id).limit(min(limit, MAX_LOG_PAGE)))
    return [LogRecord.model_validate(row._mapping) for row in rows]
