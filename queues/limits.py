"""Concurrency limits: global ones by tag (`ostinato concurrency-limit`), and the counts that
queue and tag limits are checked against.

A run holds a slot while it is claimed: PENDING, RUNNING or CANCELLING. Queue slots are counted
by the queue a run was claimed through, tag slots by the tags it carries.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

from sqlalchemy import Connection, case, delete, func, insert, select, update

from ostinato.deploy.errors import NotFound
from ostinato.deploy.protocol import ConcurrencyLimit, ConcurrencyLimitSpec
from ostinato.deploy.states import CLAIMED_STATES
from ostinato.queues.database import json_array_contains, mark_work_available
from ostinato.queues.tables import concurrency_limits, flow_runs, utcnow

CLAIMED = sorted(state.value for state in CLAIMED_STATES)


def holding_a_slot() -> Any:
    return flow_runs.c.state.in_(CLAIMED)


def set_limit(conn: Connection, spec: ConcurrencyLimitSpec) -> ConcurrencyLimit:
    """Create the tag's limit, or change it; a raised limit frees slots at once."""
    c = concurrency_limits.c
    changed = conn.execute(update(concurrency_limits).where(c.tag == spec.tag)
                           .values(limit=spec.limit)).rowcount
    if not changed:
        conn.execute(insert(concurrency_limits).values(tag=spec.tag, limit=spec.limit,
                                                       created=utcnow()))
    mark_work_available(conn)
    return get_limit(conn, spec.tag)


def get_limit(conn: Connection, tag: str) -> ConcurrencyLimit:
    row = conn.execute(select(concurrency_limits).where(concurrency_limits.c.tag == tag)).first()
    if row is None:
        raise NotFound(f"no concurrency limit on tag {tag!r}")
    return ConcurrencyLimit(tag=row.tag, limit=row.limit, created=row.created,
                            active=active_by_tag(conn, [tag])[tag])


def list_limits(conn: Connection) -> list[ConcurrencyLimit]:
    rows = conn.execute(select(concurrency_limits).order_by(concurrency_limits.c.tag)).all()
    active = active_by_tag(conn, [row.tag for row in rows])
    return [ConcurrencyLimit(tag=row.tag, limit=row.limit, created=row.created,
                             active=active[row.tag]) for row in rows]


def remove_limit(conn: Connection, tag: str) -> None:
    get_limit(conn, tag)
    conn.execute(delete(concurrency_limits).where(concurrency_limits.c.tag == tag))
    mark_work_available(conn)


def tag_limits(conn: Connection) -> dict[str, int]:
    """Every tag limit (a short table: read whole by each claim)."""
    return dict(conn.execute(select(concurrency_limits.c.tag, concurrency_limits.c.limit)).all())


def active_by_tag(conn: Connection, tags: Collection[str]) -> dict[str, int]:
    """How many claimed runs carry each tag, in one pass over the claimed runs."""
    if not tags:
        return {}
    dialect = conn.dialect.name
    counts = [func.coalesce(func.sum(case((json_array_contains(dialect, flow_runs.c.tags, tag),
                                           1), else_=0)), 0) for tag in tags]
    row = conn.execute(select(*counts).where(holding_a_slot())).one()
    return {tag: int(count) for tag, count in zip(tags, row, strict=True)}


def active_by_queue(conn: Connection, queues: Collection[str]) -> dict[str, int]:
    if not queues:
        return {}
    c = flow_runs.c
    counts: dict[str, int] = dict(conn.execute(select(c.work_queue, func.count()).where(
        holding_a_slot(), c.work_queue.in_(queues)).group_by(c.work_queue)).all())
    return {queue: counts.get(queue, 0) for queue in queues}


def holders(conn: Connection, *, queue: str | None = None, tag: str | None = None
            ) -> list[uuid.UUID]:
    """The claimed runs occupying a queue's or a tag's slots, oldest claim first."""
    c = flow_runs.c
    query = select(c.id).where(holding_a_slot()).order_by(c.updated, c.id)
    if queue is not None:
        query = query.where(c.work_queue == queue)
    if tag is not None:
        query = query.where(json_array_contains(conn.dialect.name, c.tags, tag))
    return list(conn.execute(query).scalars())
