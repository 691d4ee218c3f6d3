"""What a flow run records about itself as it goes: its task runs and its subflow runs.

The engine (ostinato.deploy.engine) describes each task run and subflow run as a *record*: a
JSON-ready snapshot of everything known about it so far, sent again whole after every change.
Snapshots make delivery simple — the newest one wins, so a batch may keep only the last snapshot
of each run — and the server stores them as they come (`POST /api/flow-runs/{id}/events`, checked
by ostinato.deploy.protocol). A `Recorder` takes them: inside an agent's run it writes them to the
agent's event pipe; a flow called directly records nothing. Stdlib-only: the run process pays
for every import.
"""

from __future__ import annotations

from typing import Any, Protocol, TypedDict


class StateEntry(TypedDict):
    """One state a task run or subflow run was in, in order."""

    type: str  # a StateType value: PENDING, RUNNING, SCHEDULED (awaiting a retry), COMPLETED…
    name: str  # shown to users: "Running", "AwaitingRetry", "TimedOut", "UpstreamFailed"…
    timestamp: str  # ISO-8601, UTC
    attempt: int
    message: str | None


class TaskRunRecord(TypedDict):
    id: str  # a UUID the engine chose
    flow_run_id: str  # the run (or subflow run) the task ran in
    name: str  # "fetch-3": the task's name and its call number within the flow run
    task_key: str  # "module.qualname" of the task function
    tags: list[str]
    upstream: list[str]  # ids of the task runs whose future or result it was called with
    state: str
    state_name: str
    attempt: int
    start_time: str | None
    end_time: str | None
    error: str | None  # the exception with its traceback, for a failed task run
    result: Any  # JSON, or a repr cut to the cap (ostinato.deploy.jsontypes.jsonable)
    history: list[StateEntry]


class FlowRunRecord(TypedDict):
    """A subflow run: a flow called inside a flow run, run in the same process."""

    id: str
    parent_run_id: str
    flow: str
    name: str
    parameters: dict[str, Any]
    state: str
    state_name: str
    start_time: str
    end_time: str | None
    message: str | None  # why it failed: the exception's type and message
    result: Any
    history: list[StateEntry]


class Recorder(Protocol):
    """Where a flow run's records go."""

    def task_run(self, record: TaskRunRecord) -> None: ...

    def flow_run(self, record: FlowRunRecord) -> None: ...


class NullRecorder:
    """Records nothing: a flow called directly, with no server to tell."""

    def task_run(self, record: TaskRunRecord) -> None:
        pass

    def flow_run(self, record: FlowRunRecord) -> None:
        pass
