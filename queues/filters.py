"""Work-queue filters (DESIGN.md §5): which runs a queue may hand out.

Every field is ANDed and an empty field constrains nothing: `tags` — the run carries all of
them; `exclude_tags` — none of them; `deployments` — it is a run of one of these `flow/name`s;
`flows` — of one of these flows. `matches` is the reference semantics in Python; `sql_filter`
is the same test compiled to SQL for the claim and the preview, and the two are tested against
each other on the same cases.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import ColumnElement, and_, not_, true

from ostinato.deploy.schemas import WorkQueueFilter
from ostinato.queues.database import json_array_contains
from ostinato.queues.tables import flow_runs


def matches(queue_filter: WorkQueueFilter, *, tags: Collection[str], deployment: str | None,
            flow: str) -> bool:
    """Whether a run with these facts passes the filter."""
    f = queue_filter
    return (
        all(tag in tags for tag in f.tags)
        and not any(tag in tags for tag in f.exclude_tags)
        and (not f.deployments or deployment in f.deployments)
        and (not f.flows or flow in f.flows)
    )


def sql_filter(queue_filter: WorkQueueFilter, dialect: str) -> ColumnElement[bool]:
    """The same test as `matches`, as a condition on `flow_runs`."""
    f, c = queue_filter, flow_runs.c
    conditions: list[ColumnElement[Any]] = [
        *(json_array_contains(dialect, c.tags, tag) for tag in f.tags),
        *(not_(json_array_contains(dialect, c.tags, tag)) for tag in f.exclude_tags),
    ]
    if f.deployments:
        conditions.append(c.deployment_name.in_(f.deployments))
    if f.flows:
        conditions.append(c.flow_name.in_(f.flows))
    return and_(true(), *conditions)
