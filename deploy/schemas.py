"""Wire schemas (DESIGN.md §10): what the API accepts and returns, and what `--json` prints.

Input models refuse unknown fields and out-of-range values, so bad requests become 422s with a
message, never a 500 from deeper down.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from ostinato.deploy.jsontypes import JsonObject, Parameters
from ostinato.deploy.schedules import Schedule, within_supported_years
from ostinato.deploy.states import StateType

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
Name = Annotated[str, StringConstraints(pattern=NAME_PATTERN)]
Tag = Annotated[str, StringConstraints(pattern=r"^[^\s,\x00]{1,100}$")]
DeploymentName = Annotated[str, StringConstraints(pattern=r"^[^/\s]{1,100}/[^/\s]{1,100}$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Seconds = Annotated[float, Field(ge=0, le=366 * 86400)]
# What an agent can put in a process's environment (no `=` in a name, no NUL anywhere).
EnvName = Annotated[str, StringConstraints(pattern=r"^[^=\x00]{1,255}$")]
EnvValue = Annotated[str, StringConstraints(max_length=32 * 1024, pattern=r"^[^\x00]*$")]
def _to_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{value.isoformat()} is out of range once converted to UTC") from None


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]
ScheduleTime = Annotated[UtcDatetime, AfterValidator(within_supported_years)]


class _PropertyShape(BaseModel):
    """The parts of a JSON-schema property the server reads; anything else passes through."""

    model_config = ConfigDict(extra="allow")
    type: str | list[str] | None = None
    anyOf: list[_PropertyShape] | None = None  # noqa: N815 (JSON schema's spelling)
    oneOf: list[_PropertyShape] | None = None  # noqa: N815


class _ParameterSchemaShape(BaseModel):
    model_config = ConfigDict(extra="allow")
    properties: dict[str, _PropertyShape] = {}
    required: list[str] = []

OverlapPolicy = Literal[
    "allow", "skip", "buffer_one", "buffer_all", "cancel_other", "terminate_other"
]
CatchupPolicy = Literal["all", "latest", "none"]
RetryOn = Literal["failure", "crash", "timeout"]



class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DeploymentSpec(Strict):
    """What `deployment create` sends: one deployment, upserted by `flow/name`."""

    flow: Name
    name: Name
    entrypoint: Annotated[str, StringConstraints(max_length=1000,
                                                 pattern=r"^[^:]+:[A-Za-z_][A-Za-z0-9_.]*$")]
    bundle: Sha256 | None = None
    path: Annotated[str, StringConstraints(min_length=1, max_length=4096)] | None = None
    parameters: Parameters = {}
    parameter_schema: Parameters = {}
    tags: Annotated[list[Tag], Field(max_length=50)] = []
    schedules: Annotated[list[Schedule], Field(max_length=50)] = []
    paused: bool = False
    overlap: OverlapPolicy = "allow"
    catchup: CatchupPolicy = "latest"
    misfire_grace: Seconds = 300.0
    retries: Annotated[int, Field(ge=0, le=100)] = 0
    retry_delay: Seconds = 0.0
    retry_on: Annotated[list[RetryOn], Field(max_length=3)] = ["failure", "crash"]
    timeout: Annotated[float, Field(gt=0, le=366 * 86400)] | None = None
    env: Annotated[dict[EnvName, EnvValue], Field(max_length=200)] = {}
    description: Annotated[str, StringConstraints(max_length=10_000)] = ""

    @field_validator("parameter_schema")
    @classmethod
    def _schema_shape(cls, value: dict[str, Any]) -> dict[str, Any]:
        _ParameterSchemaShape.model_validate(value)
        return value

    @model_validator(mode="after")
    def _check(self) -> DeploymentSpec:
        if (self.bundle is None) == (self.path is None):
            raise ValueError("a deployment needs exactly one of bundle (sha256) or path")
        slugs = [s.slug for s in self.schedules]
        duplicates = sorted({s for s in slugs if slugs.count(s) > 1})
        if duplicates:
            raise ValueError(f"schedule slugs must be unique, repeated: {', '.join(duplicates)} "
                             "(schedules firing at the same times need explicit slugs)")
        return self

    @property
    def full_name(self) -> str:
        return f"{self.flow}/{self.name}"


class DeploymentUpdate(Strict):
    """A partial edit; fields left out keep their value."""

    parameters: Parameters | None = None
    tags: Annotated[list[Tag], Field(max_length=50)] | None = None
    schedules: Annotated[list[Schedule], Field(max_length=50)] | None = None
    overlap: OverlapPolicy | None = None
    catchup: CatchupPolicy | None = None
    misfire_grace: Seconds | None = None
    retries: Annotated[int, Field(ge=0, le=100)] | None = None
    retry_delay: Seconds | None = None
    timeout: Annotated[float, Field(gt=0, le=366 * 86400)] | None = None
    description: Annotated[str, StringConstraints(max_length=10_000)] | None = None


class Deployment(BaseModel):
    id: UUID
    name: str  # flow/deployment
    flow: str
    entrypoint: str
    bundle: str | None
    path: str | None
    parameters: JsonObject
    parameter_schema: JsonObject
    tags: list[str]
    schedules: list[Schedule]
    paused: bool
    overlap: OverlapPolicy
    catchup: CatchupPolicy
    misfire_grace: float
    retries: int
    retry_delay: float
    retry_on: list[RetryOn]
    timeout: float | None
    env: dict[str, str]
    description: str
    created: datetime
    updated: datetime


class ApplyResult(BaseModel):
    """The outcome of upserting a file's deployments: which were created, changed or left alone."""

    created: list[str] = []
    updated: list[str] = []
    unchanged: list[str] = []
    deployments: list[Deployment] = []


class ManualRunRequest(Strict):
    """A run now, at a given time, or after a delay measured on the server's clock."""

    parameters: Parameters = {}
    scheduled_time: UtcDatetime | None = None
    start_in: Seconds | None = None
    tags: Annotated[list[Tag], Field(max_length=50)] = []

    @model_validator(mode="after")
    def _one_time(self) -> ManualRunRequest:
        if self.scheduled_time is not None and self.start_in is not None:
            raise ValueError("give scheduled_time or start_in, not both")
        return self


class ScheduledInstant(BaseModel):
    """One instant a schedule produces (`deployment upcoming`, `deployment backfill`)."""

    scheduled_time: datetime
    local_time: datetime
    schedule: str
    dst: Literal["shifted", "fold"] | None


class BackfillRequest(Strict):
    start: ScheduleTime
    end: ScheduleTime
    dry_run: bool = False


class BackfillResult(BaseModel):
    """The runs the window gets (or would get, in a dry run); slots with a run are left out."""

    deployment: str
    dry_run: bool
    runs: list[ScheduledInstant]
    already_present: int


class FlowRun(BaseModel):
    id: UUID
    name: str
    flow: str
    deployment: str | None
    deployment_id: UUID | None
    state: StateType
    state_name: str
    reason: str | None
    attempt: int
    schedule: str | None
    scheduled_time: datetime
    start_time: datetime | None
    end_time: datetime | None
    parameters: JsonObject
    tags: list[str]
    work_queue: str | None
    agent: str | None
    auto_scheduled: bool
    created: datetime
    result: Any = None
    exit_code: int | None = None
    exit_signal: int | None = None
    cpu_seconds: float | None = None
    peak_rss_bytes: int | None = None
    parent_run_id: UUID | None = None  # set for a subflow run: the run it was called in


class StateRecord(BaseModel):
    type: StateType
    name: str
    reason: str | None
    message: str | None
    timestamp: datetime
    actor: str | None
    attempt: int


class TaskRunState(BaseModel):
    """One state a task run was in; the engine reports them, the server adds only the end of
    a task run whose flow run ended first."""

    type: StateType
    name: str
    timestamp: datetime
    attempt: int
    message: str | None


class TaskRun(BaseModel):
    """A task run as its flow run last reported it; `upstream` are the ids of the task runs
    whose future or result it was called with."""

    id: UUID
    flow_run_id: UUID
    name: str
    task_key: str
    tags: list[str]
    upstream: list[UUID]
    state: StateType
    state_name: str
    attempt: int
    start_time: datetime | None
    end_time: datetime | None
    error: str | None
    result: Any
    history: list[TaskRunState]
    created: datetime


class WorkQueueFilter(Strict):
    tags: Annotated[list[Tag], Field(max_length=50)] = []
    exclude_tags: Annotated[list[Tag], Field(max_length=50)] = []
    deployments: Annotated[list[DeploymentName], Field(max_length=500)] = []
    flows: Annotated[list[Name], Field(max_length=500)] = []


Priority = Annotated[int, Field(ge=-1_000_000, le=1_000_000)]
ConcurrencyLimit = Annotated[int, Field(ge=0, le=1_000_000)]


class WorkQueueSpec(Strict):
    name: Name
    filter: WorkQueueFilter = WorkQueueFilter()
    priority: Priority = 10
    concurrency_limit: ConcurrencyLimit | None = None
    paused: bool = False
    description: Annotated[str, StringConstraints(max_length=10_000)] = ""


class WorkQueueUpdate(Strict):
    """A partial edit; `concurrency_limit: null` removes the limit, leaving it out keeps it."""

    filter: WorkQueueFilter | None = None
    priority: Priority | None = None
    concurrency_limit: ConcurrencyLimit | None = None
    paused: bool | None = None
    description: Annotated[str, StringConstraints(max_length=10_000)] | None = None

    @model_validator(mode="after")
    def _only_the_limit_may_be_null(self) -> WorkQueueUpdate:
        for name in self.model_fields_set - {"concurrency_limit"}:
            if getattr(self, name) is None:
                raise ValueError(f"{name} cannot be null")
        return self


class WorkQueue(BaseModel):
    id: UUID
    name: str
    filter: WorkQueueFilter
    priority: int
    concurrency_limit: int | None
    paused: bool
    description: str
    created: datetime
    updated: datetime


class BundleInfo(BaseModel):
    sha256: str
    size: int
    created: datetime


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    version: str
    database: Literal["sqlite", "postgresql"]


class Scope(StrEnum):
    """What an API key may do: everything, an agent's work for its queues, or only read."""

    ADMIN = "admin"
    AGENT = "agent"
    READ = "read"


class TokenRequest(Strict):
    name: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    scope: Scope
    queues: Annotated[list[Name], Field(max_length=50)] = []
    expires_in: Annotated[float | None, Field(gt=0, le=10 * 366 * 86400)] = None  # seconds

    @model_validator(mode="after")
    def _queues_only_for_agents(self) -> TokenRequest:
        if self.scope is Scope.AGENT and not self.queues:
            raise ValueError("an agent key needs the queues it may claim from (--queue)")
        if self.scope is not Scope.AGENT and self.queues:
            raise ValueError(f"a {self.scope} key is not limited to queues; drop --queue")
        return self


TokenStatus = Literal["active", "expired", "revoked"]


class Token(BaseModel):
    """An API key as listed: never its secret."""

    id: str
    name: str
    scope: Scope
    queues: list[str]
    created: datetime
    expires: datetime | None
    revoked: datetime | None
    status: TokenStatus


class CreatedToken(Token):
    key: str  # shown once, at creation: the server keeps only its hash
