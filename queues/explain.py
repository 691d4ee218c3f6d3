"""`ostinato flow-run explain`: every reason a waiting run is not starting.

It asks the same questions as the claim — is it due, is its deployment paused, which queues
match it and are they open and polled, are their limits and its tags' limits full, does its
deployment's overlap policy hold it back — and answers all of them, not just the first.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select

from ostinato.deploy.protocol import Explanation, Hold
from ostinato.deploy.schemas import FlowRun, WorkQueueFilter
from ostinato.deploy.states import StateType
from ostinato.queues import limits, runs
from ostinato.queues.filters import matches
from ostinato.queues.tables import deployments, flow_runs, work_queues

POLLED_WITHIN = timedelta(minutes=1)
OVERLAP_HOLDS = {
    "skip": "it will be skipped when claimed",
    "buffer_one": "it waits for it to finish (newer runs will be skipped)",
    "buffer_all": "it waits for it to finish",
    "cancel_other": "it waits for it to be cancelled",
}


def explain(conn: Connection, run_id: uuid.UUID, now: datetime) -> Explanation:
    run = runs.get_run(conn, run_id)
    if run.state is not StateType.SCHEDULED:
        hold = Hold(code="not_waiting", message=f"the run is {run.state.value}, not waiting")
        return Explanation(run=run, claimable=False, holds=[hold])
    holds = [*_timing(run, now), *_deployment(conn, run), *_queues(conn, run, now),
             *_tag_limits(conn, run)]
    return Explanation(run=run, claimable=not holds, holds=holds)


def _timing(run: FlowRun, now: datetime) -> list[Hold]:
    if run.scheduled_time <= now:
        return []
    wait = str(run.scheduled_time - now).split(".")[0]
    return [Hold(code="not_due", message=f"not due until {run.scheduled_time.isoformat()} "
                                         f"(in {wait})")]


def _deployment(conn: Connection, run: FlowRun) -> list[Hold]:
    if run.deployment_id is None:
        return []
    row = conn.execute(select(deployments.c.paused, deployments.c.overlap)
                       .where(deployments.c.id == run.deployment_id)).first()
    if row is None:
        return []
    holds = [Hold(code="deployment_paused", message=f"deployment {run.deployment} is paused")
             ] if row.paused else []
    return holds + _overlap(conn, run, row.overlap)


def _overlap(conn: Connection, run: FlowRun, policy: str) -> list[Hold]:
    if policy not in OVERLAP_HOLDS:
        return []
    c = flow_runs.c
    active = list(conn.execute(select(c.id).where(
        c.deployment_id == run.deployment_id, limits.holding_a_slot())).scalars())
    if not active:
        return []
    return [Hold(code="overlap", holders=active,
                 message=f"overlap policy {policy}: another run of {run.deployment} is "
                         f"claimed or running, so {OVERLAP_HOLDS[policy]}")]


def _queues(conn: Connection, run: FlowRun, now: datetime) -> list[Hold]:
    matching = [row for row in conn.execute(select(work_queues).order_by(work_queues.c.name))
                if matches(WorkQueueFilter.model_validate(row.filter), tags=run.tags,
                           deployment=run.deployment, flow=run.flow)]
    if not matching:
        return [Hold(code="no_matching_queue", message="no work queue's filter matches it")]
    open_queues = [row for row in matching if not row.paused]
    if not open_queues:
        names = ", ".join(row.name for row in matching)
        return [Hold(code="queue_paused", message=f"every queue that matches it is paused: "
                                                  f"{names}")]
    return [*_polling(open_queues, now), *_queue_limits(conn, open_queues)]


def _polling(queues: list[Any], now: datetime) -> list[Hold]:
    if any(row.last_polled and row.last_polled >= now - POLLED_WITHIN for row in queues):
        return []
    names = ", ".join(row.name for row in queues)
    return [Hold(code="no_agent_polling",
                 message=f"no agent has polled a matching queue in the last minute ({names})")]


def _queue_limits(conn: Connection, queues: list[Any]) -> list[Hold]:
    limited = {row.name: row.concurrency_limit for row in queues
               if row.concurrency_limit is not None}
    if len(limited) < len(queues):
        return []  # a matching open queue has no limit
    active = limits.active_by_queue(conn, list(limited))
    if any(active[name] < limit for name, limit in limited.items()):
        return []
    return [Hold(code="queue_limit_full", holders=limits.holders(conn, queue=name),
                 message=f"work queue {name} is at its concurrency limit "
                         f"({active[name]}/{limit})")
            for name, limit in limited.items()]


def _tag_limits(conn: Connection, run: FlowRun) -> list[Hold]:
    tag_limits = {tag: n for tag, n in limits.tag_limits(conn).items() if tag in run.tags}
    active = limits.active_by_tag(conn, list(tag_limits))
    return [Hold(code="tag_limit_full", holders=limits.holders(conn, tag=tag),
                 message=f"tag {tag} is at its concurrency limit ({active[tag]}/{n})")
            for tag, n in tag_limits.items() if active[tag] >= n]
