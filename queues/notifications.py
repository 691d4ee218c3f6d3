"""Notifications in the store: webhook rules, and the deliveries that carry their documents.

A pass of the notification loop (`ostinato.scheduler.webhooks`) makes three transactions here:

- `queue_deliveries` finds the runs each rule is about and adds a pending delivery for each.
  It is insert-if-absent on (rule, run, event), so repeated passes, and several servers on one
  database, never make two documents about one run.
- `take_due` takes the due deliveries by pushing their next attempt past the time sending may
  take, in the statement that selects them (rows locked by another server are skipped), so
  two servers never send one attempt.
- `record_outcomes` marks each delivered, or schedules its retry with exponential back-off, or
  gives up on it after the last attempt.

The sending itself happens between the last two, outside any transaction.

What a rule is about: runs (not subflow runs) that ended in one of its states after it was
created, and runs still waiting (SCHEDULED) that have shown as Late for its `late_after`.
A run that ended or became late more than `LOOK_BACK` ago is left alone, which bounds the
work of a pass after a long outage. A run that fails and is retried is reported once it ends
for good: its retry happens in the same transaction as its failure.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, delete, exists, func, insert, select, update

from ostinato.deploy.errors import NotFound
from ostinato.deploy.notifications import (
    DeliveryCounts,
    Event,
    Notification,
    NotificationDelivery,
    NotificationDocument,
    NotificationSpec,
)
from ostinato.deploy.schemas import FlowRun
from ostinato.deploy.states import StateType
from ostinato.queues.database import (
    WorkNotice,
    insert_ignoring_duplicates,
    json_array_contains,
    mark_work_available,
)
from ostinato.queues.runs import to_schema
from ostinato.queues.tables import (
    deployments,
    flow_runs,
    new_id,
    notification_deliveries,
    notifications,
    utcnow,
)

LOOK_BACK = timedelta(days=1)
QUEUE_BATCH = 500  # runs per rule and event in one pass; the next pass takes the rest
MAX_ERROR = 500  # characters of a failed attempt's error kept

# --- rules ---------------------------------------------------------------------------------------


def create(conn: Connection, spec: NotificationSpec) -> Notification:
    """Store a rule; a deployment it names must exist (a typo would watch nothing)."""
    if spec.deployment is not None:
        found = select(deployments.c.id).where(deployments.c.full_name == spec.deployment)
        if conn.execute(found).first() is None:
            raise NotFound(f"deployment {spec.deployment!r} not found")
    notification_id = new_id()
    conn.execute(insert(notifications).values(id=notification_id, created=utcnow(),
                                              **spec.model_dump(mode="json")))
    return get(conn, notification_id)


def get(conn: Connection, notification_id: uuid.UUID) -> Notification:
    row = conn.execute(select(notifications)
                       .where(notifications.c.id == notification_id)).first()
    if row is None:
        raise NotFound(f"notification {notification_id} not found")
    return _notification(row, _counts(conn, [notification_id]))


def list_notifications(conn: Connection) -> list[Notification]:
    rows = conn.execute(select(notifications).order_by(notifications.c.created)).all()
    counts = _counts(conn, [row.id for row in rows])
    return [_notification(row, counts) for row in rows]


def remove(conn: Connection, notification_id: uuid.UUID) -> None:
    """Delete a rule with its deliveries (those not yet sent never will be)."""
    get(conn, notification_id)
    conn.execute(delete(notifications).where(notifications.c.id == notification_id))


def _notification(row: Any, counts: dict[uuid.UUID, DeliveryCounts]) -> Notification:
    return Notification.model_validate(
        {**row._mapping, "deliveries": counts.get(row.id, DeliveryCounts())})


def _counts(conn: Connection, ids: Collection[uuid.UUID]) -> dict[uuid.UUID, DeliveryCounts]:
    """Each rule's deliveries by status (read through the unique index, rule first)."""
    d = notification_deliveries.c
    rows = conn.execute(select(d.notification_id, d.status, func.count())
                        .where(d.notification_id.in_(ids))
                        .group_by(d.notification_id, d.status)).all()
    counts: dict[uuid.UUID, dict[str, int]] = {}
    for notification_id, status, count in rows:
        counts.setdefault(notification_id, {})[status] = count
    return {key: DeliveryCounts(**value) for key, value in counts.items()}


def list_deliveries(conn: Connection, notification_id: uuid.UUID | None = None,
                    status: str | None = None, *, limit: int = 100, offset: int = 0
                    ) -> list[NotificationDelivery]:
    """Deliveries, newest first, of one rule or of all."""
    d = notification_deliveries.c
    if notification_id is not None:
        get(conn, notification_id)
    conditions = [d.notification_id == notification_id if notification_id else None,
                  d.status == status if status else None]
    query = (select(notification_deliveries)
             .where(*(condition for condition in conditions if condition is not None))
             .order_by(d.created.desc(), d.id.desc()).limit(limit).offset(offset))
    return [NotificationDelivery.model_validate(row._mapping) for row in conn.execute(query)]


# --- finding what to send ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Watch:
    """One event a rule watches: which runs it is about, and when it happened to each."""

    event: Event
    conditions: list[ColumnElement[bool]]
    happened: Callable[[Any], datetime]


def queue_deliveries(conn: Connection, now: datetime, late_threshold: timedelta) -> int:
    """Add a pending delivery, due now, for each run a rule is about and has none for yet;
    returns how many were added. `late_threshold` is when a waiting run shows as Late."""
    added = 0
    for rule in conn.execute(select(notifications)).all():
        for watch in _watches(rule, now, late_threshold):
            added += _queue(conn, rule, watch, now, now - late_threshold)
    return added


def _watches(rule: Any, now: datetime, late_threshold: timedelta) -> list[_Watch]:
    c = flow_runs.c
    since = max(rule.created, now - LOOK_BACK)
    watches = []
    if rule.states:
        watches.append(_Watch("state", [c.state.in_(rule.states), c.end_time >= since],
                              lambda run: run.end_time))
    if rule.late_after is not None:
        wait = late_threshold + timedelta(seconds=rule.late_after)
        watches.append(_Watch("late", [c.state == StateType.SCHEDULED.value,
                                       c.scheduled_time >= since - wait,
                                       c.scheduled_time <= now - wait],
                              lambda run: run.scheduled_time + wait))
    return watches


def _queue(conn: Connection, rule: Any, watch: _Watch, now: datetime, late_before: datetime
           ) -> int:
    c, d = flow_runs.c, notification_deliveries.c
    sent = exists().where(d.notification_id == rule.id, d.flow_run_id == c.id,
                          d.event == watch.event)
    found = conn.execute(select(flow_runs)
                         .where(*watch.conditions, *_scope(rule, conn.dialect.name),
                                c.parent_run_id.is_(None), ~sent)
                         .limit(QUEUE_BATCH)).all()
    if not found:
        return 0
    rows = [_delivery(rule, watch, to_schema(run._mapping, late_before), watch.happened(run),
                      now) for run in found]
    statement = insert_ignoring_duplicates(conn, notification_deliveries, "notification_id",
                                           "flow_run_id", "event")
    added = len(conn.execute(statement.returning(d.id), rows).all())
    if added and watch.event == "late":
        # On PostgreSQL the foreign-key check locks each late run against claims (which skip
        # locked runs) until this transaction ends: their long polls look again then.
        due_at = min(run.scheduled_time for run in found)
        mark_work_available(conn, WorkNotice(due_at, added))
    return added


def _scope(rule: Any, dialect: str) -> list[ColumnElement[bool]]:
    """The runs a rule watches: one deployment's, one tag's, or all."""
    if rule.deployment is not None:
        return [flow_runs.c.deployment_name == rule.deployment]
    if rule.tag is not None:
        return [json_array_contains(dialect, flow_runs.c.tags, rule.tag)]
    return []


def _delivery(rule: Any, watch: _Watch, run: FlowRun, happened: datetime, now: datetime
              ) -> dict[str, Any]:
    delivery_id = new_id()
    document = NotificationDocument(
        id=delivery_id, event=watch.event, notification=rule.id, state=run.state,
        state_name=run.state_name, timestamp=happened, text=_text(watch.event, run),
        flow_run=run)
    return {"id": delivery_id, "notification_id": rule.id, "flow_run_id": run.id,
            "event": watch.event, "state": run.state.value,
            "document": document.model_dump(mode="json"), "status": "pending", "attempts": 0,
            "next_attempt_at": now, "created": now}


def _text(event: str, run: FlowRun) -> str:
    """One line for people, e.g. `etl/nightly: run nightly-20300101-020000 FAILED (exception)`."""
    where = f"{run.deployment or run.flow}: run {run.name}"
    if event == "late":
        return f"{where} is late: due at {run.scheduled_time:%Y-%m-%d %H:%M:%S} UTC, not started"
    return f"{where} {run.state.value}" + (f" ({run.reason})" if run.reason else "")


# --- sending -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """When a failed delivery is tried again: `first` after the first failure, twice as long
    after each next one, never more than `cap`; after `max_attempts` attempts it has failed."""

    first: timedelta = timedelta(seconds=5)
    max_attempts: int = 8
    cap: timedelta = timedelta(hours=1)

    def delay(self, attempts: int) -> timedelta:
        """The wait after the `attempts`-th failed attempt (1 for the first)."""
        return min(self.cap, self.first * (1 << min(attempts - 1, 30)))


@dataclass(frozen=True)
class DueDelivery:
    id: uuid.UUID
    webhook: str
    document: dict[str, Any]
    attempts: int  # made before this one


@dataclass(frozen=True)
class Outcome:
    """How one attempt went: `error` is None if the receiver took the document (2xx)."""

    delivery: DueDelivery
    status_code: int | None
    error: str | None


def take_due(conn: Connection, now: datetime, limit: int, lease: timedelta
             ) -> list[DueDelivery]:
    """Up to `limit` due deliveries, oldest due first, each held for `lease`: no other pass
    takes it again before then, and if this one dies before recording an outcome, it is sent
    again once the lease has run out."""
    d, n = notification_deliveries.c, notifications.c
    due = select(d.id).where(d.next_attempt_at <= now).order_by(d.next_attempt_at).limit(limit)
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    taken = conn.execute(update(notification_deliveries)
                         .where(d.id.in_(due.scalar_subquery()))
                         .values(next_attempt_at=now + lease)
                         .returning(d.id, d.notification_id, d.document, d.attempts)).all()
    if not taken:
        return []
    webhooks: dict[uuid.UUID, str] = {row.id: row.webhook for row in conn.execute(
        select(n.id, n.webhook).where(n.id.in_({row.notification_id for row in taken})))}
    return [DueDelivery(row.id, webhooks[row.notification_id], row.document, row.attempts)
            for row in taken]


def record_outcomes(conn: Connection, outcomes: list[Outcome], now: datetime, backoff: Backoff
                    ) -> None:
    """Store how each attempt went. An attempt is recorded only if no other attempt of the same
    delivery was recorded since it was taken (a pass that outlived its lease changes nothing)."""
    d = notification_deliveries.c
    for outcome in outcomes:
        conn.execute(update(notification_deliveries)
                     .where(d.id == outcome.delivery.id, d.attempts == outcome.delivery.attempts)
                     .values(**_after(outcome, now, backoff)))


def _after(outcome: Outcome, now: datetime, backoff: Backoff) -> dict[str, Any]:
    attempts = outcome.delivery.attempts + 1
    error = None if outcome.error is None else outcome.error[:MAX_ERROR]
    recorded = {"attempts": attempts, "last_status_code": outcome.status_code,
                "last_error": error}
    if error is None:
        return {**recorded, "status": "delivered", "delivered_at": now, "next_attempt_at": None}
    if attempts >= backoff.max_attempts:
        return {**recorded, "status": "failed", "next_attempt_at": None}
    return {**recorded, "next_attempt_at": now + backoff.delay(attempts)}
