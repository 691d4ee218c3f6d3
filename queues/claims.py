"""The claim (DESIGN.md §5): an agent takes due runs from its queues, atomically.

One transaction picks due runs (scheduled time ≤ now + prefetch) from the named queues — by queue
priority, then scheduled time — and moves them to PENDING with a lease and a fresh fencing token,
enforcing on the way each queue's concurrency limit, the global tag limits, each deployment's
overlap policy and its catch-up policy.

Concurrency: candidate rows are locked with `FOR UPDATE SKIP LOCKED` on PostgreSQL, so claimers
take different runs without waiting for each other. Counting free slots and active runs is only
exact if no one else decides about the same queue, tag or deployment meanwhile, so after picking
its candidates a claim locks those names (`lock_names`: advisory locks in one global order, taken
in a single step) and only then counts. SQLite's single writer serialises whole claims. Before
locking, the candidate query already leaves out full queues and tags and deployments whose
policy holds runs back, so the exact checks rarely reject anything.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import groupby
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    and_,
    exists,
    false,
    not_,
    or_,
    select,
    update,
)

from ostinato.deploy.errors import NotFound
from ostinato.deploy.protocol import ClaimedRun, ClaimRequest
from ostinato.deploy.schemas import WorkQueueFilter
from ostinato.deploy.states import StateType
from ostinato.queues import limits, runs
from ostinato.queues.catchup import skip_missed_runs
from ostinato.queues.database import json_array_contains, lock_names
from ostinato.queues.filters import matches, sql_filter
from ostinato.queues.overlap import Overlap
from ostinato.queues.tables import agents, deployments, flow_runs, work_queues

EXTRA_CANDIDATES = 8  # beyond `limit`, in case the exact checks turn a few away
POLL_MARK_EVERY = timedelta(seconds=10)
_OTHER = flow_runs.alias("other")  # another run of a candidate's deployment


@dataclass(frozen=True)
class Queue:
    name: str
    filter: WorkQueueFilter
    priority: int
    concurrency_limit: int | None


@dataclass(frozen=True)
class ClaimOutcome:
    runs: list[ClaimedRun]
    next_due: datetime | None  # when the next waiting run of these queues falls due (if none)
    contended: bool  # a due run was turned away by a check another claim made stale


@dataclass
class _Candidate:
    id: uuid.UUID
    deployment_id: uuid.UUID
    deployment: str
    flow: str
    tags: list[str]
    scheduled_time: datetime
    auto_scheduled: bool
    overlap: str
    catchup: str
    misfire_grace: float
    level: tuple[Queue, ...]  # the queues of the priority level it came through


@dataclass
class _Decisions:
    taken: dict[str, list[uuid.UUID]] = field(default_factory=lambda: defaultdict(list))
    rejected: int = 0

    @property
    def count(self) -> int:
        return sum(len(ids) for ids in self.taken.values())


def acquire_runs(conn: Connection, request: ClaimRequest, *, lease: timedelta, now: datetime
                 ) -> ClaimOutcome:
    """Claim up to `request.limit` due runs for the agent; see the module docstring."""
    agent = _agent(conn, request.agent_id)
    named = _named_queues(conn, request.queues)
    _mark_polled(conn, named, now)
    queues = [Queue(row.name, WorkQueueFilter.model_validate(row.filter), row.priority,
                    row.concurrency_limit) for row in named if not row.paused]
    cutoff = now + timedelta(seconds=request.prefetch_seconds)
    tag_limits = limits.tag_limits(conn)
    candidates = _candidates(conn, queues, tag_limits, cutoff, request.limit + EXTRA_CANDIDATES)
    candidates = _apply_catchup(conn, candidates, now)
    _lock_decisions(conn, candidates, queues, tag_limits)
    overlap = Overlap.load(conn, _overlap_policies(candidates))
    decisions = _decide(conn, candidates, queues, tag_limits, overlap, request.limit)
    overlap.apply(conn, actor=agent.name)
    claimed = _take(conn, decisions.taken, agent, now + lease)
    next_due = None if claimed else _next_due(conn, queues, cutoff)
    return ClaimOutcome(claimed, next_due, contended=decisions.rejected > 0 and not claimed)


def _overlap_policies(candidates: list[_Candidate]) -> dict[uuid.UUID, str]:
    return {c.deployment_id: c.overlap for c in candidates if c.overlap != "allow"}


def _agent(conn: Connection, agent_id: uuid.UUID) -> Any:
    row = conn.execute(select(agents.c.id, agents.c.name).where(agents.c.id == agent_id)).first()
    if row is None:
        raise NotFound(f"agent {agent_id} is not registered")
    return row


def _named_queues(conn: Connection, names: list[str]) -> list[Any]:
    """The named queues in hand-out order (priority, then name); an unknown name is an error."""
    c = work_queues.c
    rows = conn.execute(select(c.id, c.name, c.filter, c.priority, c.concurrency_limit,
                               c.paused, c.last_polled)
                        .where(c.name.in_(names)).order_by(c.priority, c.name)).all()
    missing = set(names) - {row.name for row in rows}
    if missing:
        raise NotFound(f"work queue {sorted(missing)[0]!r} not found")
    return list(rows)


def _mark_polled(conn: Connection, queues: list[Any], now: datetime) -> None:
    """Record that the queues are being polled (for `flow-run explain`), at most every few
    seconds per queue; on PostgreSQL a queue row another claim is marking is skipped rather
    than waited for."""
    stale = [row.id for row in queues
             if row.last_polled is None or row.last_polled < now - POLL_MARK_EVERY]
    if not stale:
        return
    c = work_queues.c
    rows = select(c.id).where(c.id.in_(stale))
    if conn.dialect.name == "postgresql":
        rows = rows.with_for_update(skip_locked=True)
    conn.execute(update(work_queues).where(c.id.in_(rows.scalar_subquery()))
                 .values(last_polled=now))


def _levels(queues: list[Queue]) -> list[tuple[Queue, ...]]:
    return [tuple(level) for _, level in groupby(queues, key=lambda q: q.priority)]


def _candidates(conn: Connection, queues: list[Queue], tag_limits: dict[str, int],
                cutoff: datetime, wanted: int) -> list[_Candidate]:
    """Due waiting runs, the highest-priority level first, each level in scheduled-time
    order; locked (PostgreSQL: skipping rows other claims hold)."""
    full_queues, full_tags = _full_now(conn, queues, tag_limits)
    found: list[_Candidate] = []
    for level in _levels(queues):
        open_level = [q for q in level if q.name not in full_queues]
        if len(found) >= wanted or not open_level:
            continue
        query = _candidate_query(conn, open_level, full_tags, cutoff).limit(wanted - len(found))
        found += [_Candidate(**row._mapping, level=level) for row in conn.execute(query)]
    return found


def _full_now(conn: Connection, queues: list[Queue], tag_limits: dict[str, int]
              ) -> tuple[set[str], set[str]]:
    """Queues and tags whose limits look full before locking: a hint to leave them out."""
    queue_room = _queue_room(conn, queues)
    tag_room = _tag_room(conn, tag_limits, set(tag_limits))
    return ({name for name, room in queue_room.items() if room <= 0},
            {tag for tag, room in tag_room.items() if room <= 0})


def _candidate_query(conn: Connection, level: list[Queue], full_tags: set[str],
                     cutoff: datetime) -> Any:
    r, d = flow_runs.c, deployments.c
    dialect = conn.dialect.name
    query = (
        select(r.id, r.deployment_id, r.deployment_name.label("deployment"),
               r.flow_name.label("flow"), r.tags, r.scheduled_time, r.auto_scheduled,
               d.overlap, d.catchup, d.misfire_grace)
        .join(deployments, d.id == r.deployment_id)
        .where(r.state == StateType.SCHEDULED.value, r.scheduled_time <= cutoff,
               d.paused.is_(False), or_(false(), *(sql_filter(q.filter, dialect) for q in level)),
               *(not_(json_array_contains(dialect, r.tags, tag)) for tag in sorted(full_tags)),
               not_(_held_back_by_overlap(cutoff)))
        .order_by(r.scheduled_time)
    )
    if dialect == "postgresql":
        query = query.with_for_update(of=flow_runs, skip_locked=True)
    return query


def _held_back_by_overlap(cutoff: datetime) -> ColumnElement[bool]:
    """Runs their deployment's policy makes wait for a claimed run, left out so that they never
    crowd out claimable ones: `buffer_all` ones while a run is claimed; the one `buffer_one` run
    while a run is claimed and no other is due (the claim must see newer due runs, to skip
    them); `cancel_other` ones once every claimed run is being cancelled (the claim must see
    them before that, to ask the running one to stop)."""
    d, other = deployments.c, _OTHER.c
    claimed = _another_run(other.state.in_(limits.CLAIMED))
    started = _another_run(other.state.in_([StateType.PENDING.value, StateType.RUNNING.value]))
    other_due = _another_run(other.state == StateType.SCHEDULED.value,
                             other.scheduled_time <= cutoff, other.id != flow_runs.c.id)
    return or_(and_(d.overlap == "buffer_all", claimed),
               and_(d.overlap == "buffer_one", claimed, not_(other_due)),
               and_(d.overlap == "cancel_other", claimed, not_(started)))


def _another_run(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    """Another run (`_OTHER`) of the candidate's deployment meets the conditions."""
    return exists(select(1).where(_OTHER.c.deployment_id == flow_runs.c.deployment_id,
                                  *conditions))


def _apply_catchup(conn: Connection, candidates: list[_Candidate], now: datetime
                   ) -> list[_Candidate]:
    """Leave out (and skip) the candidates their deployment's catch-up policy gives up on."""
    overdue = [c.id for c in candidates if c.auto_scheduled and c.catchup != "all"
               and c.scheduled_time < now - timedelta(seconds=c.misfire_grace)]
    if not overdue:
        return candidates
    skipped = set(skip_missed_runs(conn, now, among=overdue))
    return [c for c in candidates if c.id not in skipped]


def _lock_decisions(conn: Connection, candidates: list[_Candidate], queues: list[Queue],
                    tag_limits: dict[str, int]) -> None:
    limited_tags = {tag for c in candidates for tag in c.tags if tag in tag_limits}
    lock_names(conn, [
        *(f"queue:{q.name}" for q in queues if q.concurrency_limit is not None),
        *(f"tag:{tag}" for tag in limited_tags),
        *(f"deployment:{c.deployment_id}" for c in candidates if c.overlap != "allow"),
    ])


def _decide(conn: Connection, candidates: list[_Candidate], queues: list[Queue],
            tag_limits: dict[str, int], overlap: Overlap, limit: int) -> _Decisions:
    """Take candidates in order while slots are free; exact, as the names are locked."""
    queue_room = _queue_room(conn, queues)
    tag_room = _tag_room(conn, tag_limits, {tag for c in candidates for tag in c.tags})
    decisions = _Decisions()
    decided: set[uuid.UUID] = set()  # a run matching several levels is a candidate of each
    for candidate in candidates:
        if decisions.count >= limit:
            break
        if candidate.id in decided:
            continue
        queue = _queue_with_room(candidate, queue_room)
        if queue is None or any(tag_room.get(tag, 1) <= 0 for tag in candidate.tags):
            decisions.rejected += 1
            continue
        decided.add(candidate.id)
        if not overlap.admit(candidate.deployment_id, candidate.id):
            continue
        decisions.taken[queue].append(candidate.id)
        _use_slot(queue_room, [queue])
        _use_slot(tag_room, candidate.tags)
    return decisions


def _queue_room(conn: Connection, queues: list[Queue]) -> dict[str, int]:
    limited = {q.name: q.concurrency_limit for q in queues if q.concurrency_limit is not None}
    active = limits.active_by_queue(conn, list(limited))
    return {name: limit - active[name] for name, limit in limited.items()}


def _tag_room(conn: Connection, tag_limits: dict[str, int], tags: set[str]) -> dict[str, int]:
    limited = {tag: n for tag, n in tag_limits.items() if tag in tags}
    active = limits.active_by_tag(conn, list(limited))
    return {tag: n - active[tag] for tag, n in limited.items()}


def _use_slot(room: dict[str, int], names: list[str]) -> None:
    for name in names:
        if name in room:
            room[name] -= 1


def _queue_with_room(candidate: _Candidate, queue_room: dict[str, int]) -> str | None:
    """The first queue of the candidate's level that matches it and has a free slot."""
    for queue in candidate.level:
        if queue_room.get(queue.name, 1) > 0 and matches(
                queue.filter, tags=candidate.tags, deployment=candidate.deployment,
                flow=candidate.flow):
            return queue.name
    return None


def _take(conn: Connection, taken: dict[str, list[uuid.UUID]], agent: Any,
          lease_expires: datetime) -> list[ClaimedRun]:
    """Move the chosen runs to PENDING: a lease, the next fencing token, the queue and agent.

    They are still SCHEDULED: locked since they were picked (PostgreSQL), or the only writer
    (SQLite). Matching on ids alone keeps the plan on the primary key whatever the statistics.
    """
    c = flow_runs.c
    rows: list[Any] = []
    for queue, ids in taken.items():
        rows += runs.set_states_returning(
            conn, c.id.in_(ids), StateType.PENDING,
            actor=agent.name, work_queue=queue, agent_id=agent.id, agent_name=agent.name,
            lease_expires=lease_expires, fencing_token=c.fencing_token + 1)
    return _with_launch_details(conn, rows)


def _with_launch_details(conn: Connection, rows: list[Any]) -> list[ClaimedRun]:
    d = deployments.c
    ids = {row.deployment_id for row in rows}
    found = {row.id: row for row in conn.execute(
        select(d.id, d.entrypoint, d.bundle, d.path, d.env, d.timeout).where(d.id.in_(ids)))}
    claimed = []
    for row in sorted(rows, key=lambda row: row.scheduled_time):
        launch = found[row.deployment_id]
        claimed.append(ClaimedRun(
            **runs.run_fields(row._mapping, row.scheduled_time),  # a claimed run is never Late
            fencing_token=row.fencing_token,
            lease_expires=row.lease_expires, entrypoint=launch.entrypoint, bundle=launch.bundle,
            path=launch.path, env=launch.env, timeout=launch.timeout))
    return claimed


def _next_due(conn: Connection, queues: list[Queue], cutoff: datetime) -> datetime | None:
    """When the earliest waiting run these queues could hand out falls due (for long polls)."""
    if not queues:
        return None
    r, d = flow_runs.c, deployments.c
    dialect = conn.dialect.name
    query = (select(r.scheduled_time).join(deployments, d.id == r.deployment_id)
             .where(r.state == StateType.SCHEDULED.value, r.scheduled_time > cutoff,
                    d.paused.is_(False),
                    or_(false(), *(sql_filter(q.filter, dialect) for q in queues)))
             .order_by(r.scheduled_time).limit(1))
    due: datetime | None = conn.execute(query).scalar()
    return due

