"""The store's tables (SQLAlchemy 2). Alembic migrations in `migrations/` create exactly these.

Times are stored as UTC; ids are UUIDs; lists and objects are JSON (JSONB on PostgreSQL).
A run's identity — (deployment, schedule slug, nominal time) — is a unique constraint, which is
what lets any number of schedulers insert the same slot without ever creating it twice.
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> uuid.UUID:
    """A time-ordered UUID (the layout of UUIDv7: milliseconds, then random bits).

    Rows created together sit together in the primary-key index, which makes bulk inserts of
    runs markedly faster on SQLite than with random UUIDv4 keys.
    """
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 4122 variant
    return uuid.UUID(int=value)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    SQLite keeps them as naive UTC text, which sorts correctly only if every value is UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r} given to the store")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Json = JSON().with_variant(JSONB(), "postgresql")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: Json, list[Any]: Json}


def _id() -> Mapped[uuid.UUID]:
    return mapped_column(Uuid, primary_key=True, default=new_id)


def _created() -> Mapped[datetime]:
    return mapped_column(default=utcnow)


class FlowRow(Base):
    __tablename__ = "flows"
    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created: Mapped[datetime] = _created()


class DeploymentRow(Base):
    __tablename__ = "deployments"
    __table_args__ = (UniqueConstraint("flow_id", "name"),)
    id: Mapped[uuid.UUID] = _id()
    flow_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("flows.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    full_name: Mapped[str] = mapped_column(String(201), unique=True)
    entrypoint: Mapped[str] = mapped_column(Text)
    bundle: Mapped[str | None] = mapped_column(ForeignKey("bundles.sha256"))
    path: Mapped[str | None] = mapped_column(Text)
    parameters: Mapped[dict[str, Any]]
    parameter_schema: Mapped[dict[str, Any]]
    tags: Mapped[list[Any]]
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    overlap: Mapped[str] = mapped_column(String(20))
    catchup: Mapped[str] = mapped_column(String(10))
    misfire_grace: Mapped[float] = mapped_column(Float)
    retries: Mapped[int] = mapped_column(Integer)
    retry_delay: Mapped[float] = mapped_column(Float)
    retry_on: Mapped[list[Any]]
    timeout: Mapped[float | None] = mapped_column(Float)
    env: Mapped[dict[str, Any]]
    description: Mapped[str] = mapped_column(Text, default="")
    spec_hash: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = _created()
    updated: Mapped[datetime] = _created()


class ScheduleRow(Base):
    """One schedule of a deployment.

    `scheduled_until` is the last instant materialised as a run; `visit_at` is when the scheduler
    must look at the schedule again (its runs are about to fall short of the horizon or of the
    minimum count): `now` for a new, edited or resumed schedule, far in the future for a paused,
    inactive or ended one. An idle tick is one range scan of the `visit_at` index.
    """

    __tablename__ = "deployment_schedules"
    __table_args__ = (UniqueConstraint("deployment_id", "slug"),)
    id: Mapped[uuid.UUID] = _id()
    deployment_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE")
    )
    slug: Mapped[str] = mapped_column(String(63))
    position: Mapped[int] = mapped_column(Integer)
    definition: Mapped[dict[str, Any]]
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    scheduled_until: Mapped[datetime | None]
    visit_at: Mapped[datetime] = mapped_column(index=True)
    created: Mapped[datetime] = _created()


class FlowRunRow(Base):
    __tablename__ = "flow_runs"
    __table_args__ = (
        UniqueConstraint("deployment_id", "schedule_slug", "nominal_time"),
        Index("ix_flow_runs_state_scheduled_time", "state", "scheduled_time"),
        Index("ix_flow_runs_deployment_id_scheduled_time", "deployment_id", "scheduled_time"),
        # Lists of runs, newest first, however filtered (UI, `flow-run ls`): read in this order.
        Index("ix_flow_runs_scheduled_time", "scheduled_time"),
        # Partial: new runs have none of these, so creating them touches none of the indexes.
        *(Index(f"ix_flow_runs_{name}", name, postgresql_where=text(f"{name} IS NOT NULL"),
                sqlite_where=text(f"{name} IS NOT NULL"))
          for name in ("lease_expires", "agent_id", "parent_run_id")),
        # Ended runs by state and end: notifications look for the runs that just FAILED.
        Index("ix_flow_runs_state_end_time", "state", "end_time",
              postgresql_where=text("end_time IS NOT NULL"),
              sqlite_where=text("end_time IS NOT NULL")),
    )
    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(String(255))
    flow_name: Mapped[str] = mapped_column(String(100))
    deployment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("deployments.id", ondelete="SET NULL")
    )
    deployment_name: Mapped[str | None] = mapped_column(String(201))
    schedule_slug: Mapped[str | None] = mapped_column(String(63))
    nominal_time: Mapped[datetime]
    scheduled_time: Mapped[datetime]
    state: Mapped[str] = mapped_column(String(12))
    state_name: Mapped[str] = mapped_column(String(40))
    reason: Mapped[str | None] = mapped_column(String(40))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    parameters: Mapped[dict[str, Any]]
    tags: Mapped[list[Any]]
    auto_scheduled: Mapped[bool] = mapped_column(Boolean)
    work_queue: Mapped[str | None] = mapped_column(String(100))
    agent_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"))
    agent_name: Mapped[str | None] = mapped_column(String(200))
    lease_expires: Mapped[datetime | None]
    fencing_token: Mapped[int] = mapped_column(BigInteger, default=0)
    parent_run_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("flow_runs.id", ondelete="SET NULL")
    )
    start_time: Mapped[datetime | None]
    end_time: Mapped[datetime | None]
    result: Mapped[Any] = mapped_column(Json, nullable=True)
    # How the run's process tree ended and what it used, as its agent measured them.
    exit_code: Mapped[int | None] = mapped_column(Integer)
    exit_signal: Mapped[int | None] = mapped_column(Integer)
    cpu_seconds: Mapped[float | None] = mapped_column(Float)
    peak_rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created: Mapped[datetime] = _created()
    updated: Mapped[datetime] = _created()


class FlowRunStateRow(Base):
    """Append-only state history of a run: never updated, never rewritten."""

    __tablename__ = "flow_run_states"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    flow_run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("flow_runs.id", ondelete="CASCADE"), index=True
    )
    type: Mapped[str] = mapped_column(String(12))
    name: Mapped[str] = mapped_column(String(40))
    reason: Mapped[str | None] = mapped_column(String(40))
    message: Mapped[str | None] = mapped_column(Text)
    timestamp: Mapped[datetime] = _created()
    actor: Mapped[str | None] = mapped_column(String(200))
    attempt: Mapped[int] = mapped_column(Integer)


class WorkQueueRow(Base):
    __tablename__ = "work_queues"
    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(String(100), unique=True)
    filter: Mapped[dict[str, Any]]
    priority: Mapped[int] = mapped_column(Integer)
    concurrency_limit: Mapped[int | None] = mapped_column(Integer)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    description: Mapped[str] = mapped_column(Text, default="")
    last_polled: Mapped[datetime | None]
    created: Mapped[datetime] = _created()
    updated: Mapped[datetime] = _created()


class ConcurrencyLimitRow(Base):
    """A global limit on PENDING+RUNNING runs carrying a tag."""

    __tablename__ = "concurrency_limits"
    tag: Mapped[str] = mapped_column(String(100), primary_key=True)
    limit: Mapped[int] = mapped_column(Integer)
    created: Mapped[datetime] = _created()


class AgentRow(Base):
    __tablename__ = "agents"
    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(String(200), unique=True)
    host: Mapped[str] = mapped_column(String(255))
    queues: Mapped[list[Any]]
    last_heartbeat: Mapped[datetime] = _created()
    created: Mapped[datetime] = _created()


class TaskRunRow(Base):
    """The latest snapshot of a task run, as its flow run's engine reported it (upserted by id).

    Its state history is a JSON list in the row, not rows of its own: a snapshot carries the
    whole history, so storing one is one row write. A run's task runs are read through the
    `flow_run_id` index and sorted by start time in memory (thousands of rows at most); an
    index on the start time would cost every snapshot that starts a task run.
    """

    __tablename__ = "task_runs"
    id: Mapped[uuid.UUID] = _id()
    flow_run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("flow_runs.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    task_key: Mapped[str] = mapped_column(String(255))
    tags: Mapped[list[Any]]
    state: Mapped[str] = mapped_column(String(12))
    state_name: Mapped[str] = mapped_column(String(40))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    upstream: Mapped[list[Any]]
    start_time: Mapped[datetime | None]
    end_time: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    result: Mapped[Any] = mapped_column(Json, nullable=True)
    history: Mapped[list[Any]]
    created: Mapped[datetime] = _created()


class LogRow(Base):
    __tablename__ = "logs"
    # A run's lines are read in id order, from a cursor (`after`), page by page.
    __table_args__ = (Index("ix_logs_flow_run_id_id", "flow_run_id", "id"),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    flow_run_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("flow_runs.id", ondelete="CASCADE"))
    task_run_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    level: Mapped[int] = mapped_column(Integer)
    logger: Mapped[str] = mapped_column(String(255))
    message: Mapped[str] = mapped_column(Text)
    timestamp: Mapped[datetime]


class BundleRow(Base):
    """A content-addressed source archive, kept in the database so every server can serve it."""

    __tablename__ = "bundles"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[bytes] = mapped_column(LargeBinary)
    created: Mapped[datetime] = _created()


class ApiKeyRow(Base):
    """An API key: its public id and the SHA-256 of its secret, never the secret itself.

    Secrets are 256 random bits, so a fast hash is as safe as a slow one and keeps checking a
    key cheap on every request.
    """

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    scope: Mapped[str] = mapped_column(String(10))
    queues: Mapped[list[Any]]
    expires: Mapped[datetime | None]
    revoked: Mapped[datetime | None]
    created: Mapped[datetime] = _created()


class NotificationRow(Base):
    """A webhook rule: runs of a deployment or tag (or any run) that reach one of `states`, or
    stay late `late_after` seconds, are posted to `webhook`."""

    __tablename__ = "notifications"
    id: Mapped[uuid.UUID] = _id()
    states: Mapped[list[Any]]
    late_after: Mapped[float | None] = mapped_column(Float)
    deployment: Mapped[str | None] = mapped_column(String(201))
    tag: Mapped[str | None] = mapped_column(String(100))
    webhook: Mapped[str] = mapped_column(Text)
    created: Mapped[datetime] = _created()


class NotificationDeliveryRow(Base):
    """One document about one run for one rule, and how sending it went.

    Unique per (rule, run, event), so repeated passes and several servers never make two.
    `next_attempt_at` is set while the delivery is pending and cleared once it is delivered or
    failed, so the index holds only what may still be sent.
    """

    __tablename__ = "notification_deliveries"
    __table_args__ = (UniqueConstraint("notification_id", "flow_run_id", "event"),)
    id: Mapped[uuid.UUID] = _id()
    notification_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("notifications.id", ondelete="CASCADE"))
    flow_run_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("flow_runs.id", ondelete="CASCADE"), index=True)
    event: Mapped[str] = mapped_column(String(10))
    state: Mapped[str] = mapped_column(String(12))
    document: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(10))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(index=True)
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    delivered_at: Mapped[datetime | None]
    created: Mapped[datetime] = _created()


def _table(row_class: type[Base]) -> Table:
    return cast(Table, row_class.__table__)


# Core handles: the store's statements are written against these, not through an ORM session.
flows = _table(FlowRow)
deployments = _table(DeploymentRow)
schedules = _table(ScheduleRow)
flow_runs = _table(FlowRunRow)
flow_run_states = _table(FlowRunStateRow)
work_queues = _table(WorkQueueRow)
concurrency_limits = _table(ConcurrencyLimitRow)
agents = _table(AgentRow)
task_runs = _table(TaskRunRow)
logs = _table(LogRow)
bundles = _table(BundleRow)
api_keys = _table(ApiKeyRow)
notifications = _table(NotificationRow)
notification_deliveries = _table(NotificationDeliveryRow)
