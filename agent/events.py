"""The contract between an agent and the runner it starts for a flow run, defined once.

The agent writes a `RunSpec` to a file and starts `python -m ostinato.agent.runner SPEC_FILE` with
the bundle as working directory and the write end of a pipe as `events_fd`. The runner answers on
that pipe only, one JSON object per line, flushed per line: zero or more `log` events, `started`
when the flow function is entered, `task_run` and `flow_run` events with the newest record of a
task run or subflow run (ostinato.deploy.records), then exactly one `completed` or `failed`. Its
exit status says the same thing again, so a run whose pipe broke is still classified. This module
is stdlib-only: both sides import it and neither should pay for more.
"""

from __future__ import annotations

import json
from typing import Any, Literal, NotRequired, TypedDict, cast

from ostinato.deploy.records import FlowRunRecord, TaskRunRecord

STARTED: Literal["started"] = "started"
LOG: Literal["log"] = "log"
TASK_RUN: Literal["task_run"] = "task_run"
FLOW_RUN: Literal["flow_run"] = "flow_run"
COMPLETED: Literal["completed"] = "completed"
FAILED: Literal["failed"] = "failed"
NAMES = frozenset({STARTED, LOG, TASK_RUN, FLOW_RUN, COMPLETED, FAILED})

Reason = Literal["exception", "bad_entrypoint", "bad_parameters"]

EXIT_COMPLETED = 0
EXIT_FAILED = 1  # the flow raised (or called sys.exit): a retry may succeed
EXIT_CANNOT_START = 2  # bad spec, entrypoint or parameters: a retry would fail the same way

STDOUT_LOGGER, STDOUT_LEVEL = "stdout", 20  # print() lines
STDERR_LOGGER, STDERR_LEVEL = "stderr", 30


class RunSpec(TypedDict):
    flow_run_id: str
    name: str
    deployment: str  # "flow/name"
    scheduled_time: str  # ISO-8601, UTC
    attempt: int
    parameters: dict[str, Any]  # checked and coerced by the runner, never on a command line
    entrypoint: str  # "relative/path.py:attribute", relative to the bundle root (the cwd)
    agent: str | None
    events_fd: int


class Started(TypedDict):
    event: Literal["started"]
    time: str


class Log(TypedDict):
    event: Literal["log"]
    time: str
    level: int
    logger: str
    message: str
    task_run_id: NotRequired[str]  # the task run that wrote it
    flow_run_id: NotRequired[str]  # the subflow run that wrote it (else the run itself)


class TaskRun(TypedDict):
    event: Literal["task_run"]
    time: str
    record: TaskRunRecord


class FlowRun(TypedDict):
    event: Literal["flow_run"]
    time: str
    record: FlowRunRecord


class Completed(TypedDict):
    event: Literal["completed"]
    time: str
    result: Any  # JSON as returned, or the repr string of a result JSON cannot hold


class Failed(TypedDict):
    event: Literal["failed"]
    time: str
    reason: Reason
    type: str
    message: str
    traceback: str


Event = Started | Log | TaskRun | FlowRun | Completed | Failed


def parse_event(line: str | bytes) -> Event:
    """One line from the pipe as an event; ValueError if it is not one."""
    value = json.loads(line)
    if not isinstance(value, dict) or value.get("event") not in NAMES:
        raise ValueError(f"not a runner event: {line[:200]!r}")
    return cast(Event, value)
