"""The agent protocol on the wire (DESIGN.md §5–6): registration, claims, heartbeats, state
reports; and what the server says about limits, agents and why a run is waiting.

Agents and the server share these models; like every input schema they refuse unknown fields
and out-of-range values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    Field,
    StringConstraints,
    model_validator,
)

from ostinato.deploy.jsontypes import JsonObject, JsonValue
from ostinato.deploy.limits import MAX_BIGINT, MAX_LOG_BATCH, MAX_LOG_MESSAGE
from ostinato.deploy.schemas import FlowRun, Name, Strict, Tag, UtcDatetime
from ostinato.deploy.states import StateType

MAX_WAIT_SECONDS = 60
AgentName = Annotated[str, StringConstraints(pattern=r"^[^\s\x00]{1,200}$")]
Host = Annotated[str, StringConstraints(pattern=r"^[^\s\x00]{1,255}$")]
Message = Annotated[str, StringConstraints(max_length=100_000)]
# A larger number than a BIGINT column holds would fail in the store, not here.
FencingToken = Annotated[int, Field(ge=0, le=MAX_BIGINT)]


class AgentRegistration(Strict):
    """An agent says who it is; registering again under the same name keeps its id."""

    name: AgentName
    host: Host
    queues: Annotated[list[Name], Field(min_length=1, max_length=50)]


class Agent(BaseModel):
    id: UUID
    name: str
    host: str
    queues: list[str]
    last_heartbeat: datetime
    status: Literal["online", "offline"]
    running: int


class ClaimRequest(Strict):
    agent_id: UUID
    queues: Annotated[list[Name], Field(min_length=1, max_length=50)]
    limit: Annotated[int, Field(ge=1, le=100)] = 1
    wait_seconds: Annotated[float, Field(ge=0, le=MAX_WAIT_SECONDS)] = 0
    prefetch_seconds: Annotated[float, Field(ge=0, le=300)] = 0


class ClaimedRun(FlowRun):
    """A run handed to an agent, with what it needs to launch it without another request."""

    fencing_token: int
    lease_expires: datetime
    entrypoint: str
    bundle: str | None
    path: str | None
    env: dict[str, str]
    timeout: float | None


class HeldRun(Strict):
    """A run an agent holds, named with the fencing token its claim returned."""

    id: UUID
    fencing_token: FencingToken


class Heartbeat(Strict):
    runs: Annotated[list[HeldRun], Field(max_length=10_000)] = []


class CancelOrder(BaseModel):
    id: UUID
    grace_seconds: float


class HeartbeatReply(BaseModel):
    """`cancel`: runs to stop (their state is CANCELLING; `grace_seconds` 0 means kill at
    once); `lost`: runs the agent no longer holds (reaped and perhaps re-claimed elsewhere) —
    it must stop them and never report them."""

    lease_seconds: float
    cancel: list[CancelOrder]
    lost: list[UUID]


class StateReport(Strict):
    """A holder's report of a run's new state; refused with 409 if `fencing_token` is stale.

    `time` is when the change happened on the agent: a report delayed by a network outage still
    records the true start or end (never later than its arrival). `sent` is the agent's clock
    as it sent this attempt of the report: the server moves `time` by how far that is from its
    own clock, so an agent's skewed clock does not skew the run's times. The process fields
    describe how a finished run's process tree ended and what it used."""

    state: StateType
    fencing_token: FencingToken
    reason: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,40}$")] | None = None
    message: Message | None = None
    time: AwareDatetime | None = None
    sent: AwareDatetime | None = None
    result: JsonValue = None
    exit_code: Annotated[int, Field(ge=0, le=255)] | None = None
    exit_signal: Annotated[int, Field(ge=1, le=128)] | None = None
    cpu_seconds: Annotated[float, Field(ge=0, le=1e12)] | None = None
    peak_rss_bytes: Annotated[int, Field(ge=0, le=MAX_BIGINT)] | None = None


def _without_nul(text: str) -> str:
    """A flow may print anything; PostgreSQL text cannot hold NUL, so it is replaced, not
    refused (refusing would lose the whole batch)."""
    return text.replace("\x00", "\ufffd")


Line = Annotated[str, StringConstraints(max_length=255), AfterValidator(_without_nul)]
NonEmptyLine = Annotated[str, StringConstraints(min_length=1, max_length=255),
                         AfterValidator(_without_nul)]
LogText = Annotated[str, StringConstraints(max_length=MAX_LOG_MESSAGE),
                    AfterValidator(_without_nul)]
StateName = Annotated[str, StringConstraints(min_length=1, max_length=40),
                      AfterValidator(_without_nul)]
FlowName = Annotated[str, StringConstraints(min_length=1, max_length=100),
                    AfterValidator(_without_nul)]
Attempt = Annotated[int, Field(ge=1, le=1_000_000)]


class LogLine(Strict):
    """One log line of a run: print() output, stdlib logging, the runner's own notes.

    `task_run_id` names the task run that logged it; `flow_run_id` the subflow run it belongs
    to (None: the run the batch is sent for)."""

    timestamp: AwareDatetime
    level: Annotated[int, Field(ge=0, le=100)]
    logger: Line
    message: LogText
    task_run_id: UUID | None = None
    flow_run_id: UUID | None = None


class LogRecord(LogLine):
    """A stored log line; `id` orders a run's lines and pages through them (`after`)."""

    id: int
    flow_run_id: UUID


class StateEntryReport(Strict):
    """One state a task run or subflow run was in (ostinato.deploy.records.StateEntry)."""

    type: StateType
    name: StateName
    timestamp: UtcDatetime
    attempt: Attempt
    message: LogText | None


History = Annotated[list[StateEntryReport], Field(max_length=1000)]


class TaskRunReport(Strict):
    """A snapshot of a task run (ostinato.deploy.records.TaskRunRecord); the newest wins."""

    id: UUID
    flow_run_id: UUID
    name: NonEmptyLine
    task_key: NonEmptyLine
    tags: Annotated[list[Tag], Field(max_length=50)]
    upstream: Annotated[list[UUID], Field(max_length=10_000)]
    state: StateType
    state_name: StateName
    attempt: Attempt
    start_time: UtcDatetime | None
    end_time: UtcDatetime | None
    error: LogText | None
    result: JsonValue
    history: History


class SubflowReport(Strict):
    """A snapshot of a subflow run (ostinato.deploy.records.FlowRunRecord): a flow called
    inside a flow run; the newest wins."""

    id: UUID
    parent_run_id: UUID
    flow: FlowName
    name: NonEmptyLine
    parameters: JsonObject
    state: StateType
    state_name: StateName
    start_time: UtcDatetime
    end_time: UtcDatetime | None
    message: LogText | None
    result: JsonValue
    history: History


class RunEvents(Strict):
    """What an agent sends for a run it holds (`POST /api/flow-runs/{id}/events`): log lines
    and the latest snapshots of task runs and subflow runs, stored in one transaction."""

    logs: Annotated[list[LogLine], Field(max_length=MAX_LOG_BATCH)] = []
    task_runs: Annotated[list[TaskRunReport], Field(max_length=MAX_LOG_BATCH)] = []
    flow_runs: Annotated[list[SubflowReport], Field(max_length=MAX_LOG_BATCH)] = []

    @model_validator(mode="after")
    def _not_empty(self) -> RunEvents:
        if not (self.logs or self.task_runs or self.flow_runs):
            raise ValueError("a batch needs at least one log line, task run or flow run")
        return self


class ConcurrencyLimitSpec(Strict):
    tag: Tag
    limit: Annotated[int, Field(ge=0, le=1_000_000)]


class ConcurrencyLimit(BaseModel):
    tag: str
    limit: int
    active: int
    created: datetime


class Hold(BaseModel):
    """One reason a waiting run is not starting; `holders` are the runs occupying a full limit
    or blocking under the overlap policy."""

    code: Literal["not_due", "deployment_paused", "no_matching_queue", "queue_paused",
                  "no_agent_polling", "queue_limit_full", "tag_limit_full", "overlap",
                  "not_waiting"]
    message: str
    holders: list[UUID] = []


class Explanation(BaseModel):
    run: FlowRun
    claimable: bool
    holds: list[Hold]

