"""What happens when a flow or a task is called: the engine behind @flow and @task.

Calling a flow opens a `FlowCall`, the context everything the flow does sees (a context
variable, copied into the task runner's threads). Inside it:

- a task call becomes a `TaskRun`: it gets a record (ostinato.deploy.records), runs its
  attempts with retries and a timeout, and is linked to its *upstream* task runs — those whose
  future, or whose very result object, it was called with;
- a flow call becomes a subflow run, recorded as a child of the calling flow run.

Records go to the flow call's recorder: the agent's event pipe for the flow run an agent
started (`run_root`), nothing for a flow called directly. Log attribution reads the same
context variables (`current_ids`). This module is on every run's path and every task's:
stdlib only, no work that a plain function call would not need except the records.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future
from concurrent.futures import _base as futures_base
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ostinato.deploy import task_runners
from ostinato.deploy.context import LOGGER_NAME
from ostinato.deploy.jsontypes import jsonable
from ostinato.deploy.limits import MAX_LOG_MESSAGE, MAX_RESULT_CHARS, MAX_TASK_RESULT_CHARS
from ostinato.deploy.records import FlowRunRecord, NullRecorder, Recorder, TaskRunRecord
from ostinato.deploy.task_runners import TaskRunner, TaskTimeout

if TYPE_CHECKING:
    from ostinato.deploy.flows import Flow
    from ostinato.deploy.tasks import Task

R = TypeVar("R")
MAX_NAME, MAX_FLOW_NAME = 255, 100  # as the server's columns
_MAX_WALK_DEPTH = 3  # how deep arguments are searched for futures and task results

_flow_call: ContextVar[FlowCall | None] = ContextVar("ostinato_flow_call", default=None)
_task_run_id: ContextVar[str | None] = ContextVar("ostinato_task_run", default=None)


def now() -> str:
    return datetime.now(UTC).isoformat()


def current_ids() -> tuple[str | None, str | None]:
    """(flow run id, task run id) that logs written here belong to; None for what is not
    recorded (outside a flow, or in a flow called directly)."""
    call = _flow_call.get()
    if call is None or not call.recorded:
        return None, None
    return call.id, _task_run_id.get()


class TaskFuture(Generic[R]):
    """A submitted task run: `result()` waits and returns its value or raises its exception
    (with its traceback); passing the future to another task makes that task depend on it."""

    def __init__(self, future: Future[R], task_run_id: str, name: str) -> None:
        self._future = future
        self.task_run_id = task_run_id
        self.name = name

    def result(self, timeout: float | None = None) -> R:
        return self._future.result(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the task run has ended (or `timeout` passed); True if it has."""
        try:
            self._future.exception(timeout)
        except TimeoutError:
            return False
        except CancelledError:
            pass
        return True

    def done(self) -> bool:
        return self._future.done()

    def __repr__(self) -> str:
        return f"TaskFuture({self.name!r}, done={self.done()})"


class FlowCall:
    """One call of a flow: its run id, task runner, recorder, and what its tasks produced."""

    def __init__(self, flow: Flow[..., Any], run_id: str, recorder: Recorder, *,
                 recorded: bool) -> None:
        self.flow = flow
        self.id = run_id
        self.recorder = recorder
        self.recorded = recorded
        self.runner: TaskRunner = flow.task_runner.open()
        self._lock = threading.Lock()
        self._calls: dict[str, int] = {}  # calls of each task name so far, to number them
        # Results by identity, kept alive so an id is never reused while the flow runs.
        self._produced: dict[int, tuple[Any, str]] = {}
        self._submitted: list[tuple[TaskRun, Future[Any]]] = []

    def task_run(self, task: Task[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
                 upstream: list[str] | None = None) -> TaskRun:
        with self._lock:
            number = self._calls.get(task.name, 0)
            self._calls[task.name] = number + 1
        return TaskRun(self, task, f"{task.name}-{number}", args, kwargs, upstream or [])

    def submit(self, run: TaskRun) -> TaskFuture[Any]:
        run.move("PENDING", "Pending")
        future = self.runner.submit(run.execute)
        with self._lock:
            self._submitted.append((run, future))
        return TaskFuture(future, run.id, run.name)

    def remember(self, result: Any, task_run_id: str) -> None:
        if _trackable(result):
            with self._lock:
                self._produced[id(result)] = (result, task_run_id)

    def producer(self, value: Any) -> str | None:
        """The task run that returned this very object, if one did."""
        found = self._produced.get(id(value))
        return found[1] if found is not None and found[0] is value else None

    def finish(self, *, failed: bool) -> None:
        """End the call: wait for every submitted task run, or — if the flow failed — cancel
        those that have not started (they are recorded CANCELLED) and wait for the rest."""
        with self._lock:
            submitted, self._submitted = self._submitted, []
        for run, future in submitted:
            if failed and future.cancel():
                run.move("CANCELLED", "Cancelled", message="the flow failed before it started")
        try:
            for _, future in submitted:
                if not future.cancelled():
                    future.exception()
        finally:
            self.runner.close()


def _trackable(value: Any) -> bool:
    """Results worth linking by identity: not None, booleans or small ints, which every part
    of a program shares."""
    return not (value is None or isinstance(value, bool)
                or (type(value) is int and -5 <= value <= 256))


class TaskRun:
    """One call of a task in a flow call: its record, kept current and recorded on change."""

    def __init__(self, call: FlowCall, task: Task[..., Any], name: str,
                 args: tuple[Any, ...], kwargs: dict[str, Any], upstream: list[str]) -> None:
        self.call, self.task = call, task
        self.id = str(uuid.uuid4())
        self.name = name[:MAX_NAME]
        self.args, self.kwargs = args, kwargs
        found = dict.fromkeys(upstream)
        self._has_futures = (_walk_upstream(call, args, found, 0)
                             | _walk_upstream(call, kwargs, found, 0))
        self.record: TaskRunRecord = {
            "id": self.id, "flow_run_id": call.id, "name": self.name, "task_key": task.key,
            "tags": list(task.tags), "upstream": list(found), "state": "PENDING",
            "state_name": "Pending", "attempt": 1, "start_time": None, "end_time": None,
            "error": None, "result": None, "history": [],
        }

    def move(self, state: str, name: str, *, message: str | None = None, **fields: Any
             ) -> None:
        """Change state (and any other fields) and record the new snapshot."""
        record = self.record
        record.update(fields)  # type: ignore[typeddict-item]
        record["state"], record["state_name"] = state, name
        record["history"].append({"type": state, "name": name, "timestamp": now(),
                                  "attempt": record["attempt"], "message": message})
        self.call.recorder.task_run(record)

    def execute(self) -> Any:
        """The task run's life: wait for its upstream, then attempt until it succeeds or its
        retries are spent. Returns the result or raises the last exception."""
        token = _task_run_id.set(self.id)
        try:
            args, kwargs = self._arguments()
            return self._attempts(args, kwargs)
        finally:
            _task_run_id.reset(token)

    def _arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if not self._has_futures:
            return self.args, self.kwargs
        try:
            return _resolve(self.args, 0), _resolve(self.kwargs, 0)
        except BaseException as exc:
            self.move("FAILED", "UpstreamFailed", end_time=now(),
                      message=f"an upstream task run failed: {_one_line(exc)}")
            raise

    def _attempts(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        task, retries = self.task, self.task.retries
        for attempt in range(1, retries + 2):
            self.move("RUNNING", "Running", attempt=attempt,
                      start_time=self.record["start_time"] or now())
            try:
                result = self.call.runner.invoke(task.fn, args, kwargs, timeout=task.timeout,
                                                 name=self.name)
            except Exception as exc:
                if attempt > retries:
                    self._fail(exc)
                    raise
                self.move("SCHEDULED", "AwaitingRetry", message=_one_line(exc))
                time.sleep(task.retry_delay)
                continue
            except BaseException as exc:  # KeyboardInterrupt, SystemExit: no retry
                self._fail(exc)
                raise
            self.move("COMPLETED", "Completed", end_time=now(),
                      result=jsonable(result, MAX_TASK_RESULT_CHARS))
            self.call.remember(result, self.id)
            return result
        raise AssertionError("unreachable")

    def _fail(self, exc: BaseException) -> None:
        name = "TimedOut" if isinstance(exc, TaskTimeout) else "Failed"
        self.move("FAILED", name, message=_one_line(exc), end_time=now(),
                  error=format_error(exc)[:MAX_LOG_MESSAGE])


def _walk_upstream(call: FlowCall, value: Any, found: dict[str, None], depth: int) -> bool:
    """Add to `found` the task runs `value` came from; True if it holds a future."""
    if isinstance(value, TaskFuture):
        found[value.task_run_id] = None
        return True
    producer = call.producer(value)
    if producer is not None:
        found[producer] = None
    if depth >= _MAX_WALK_DEPTH or not isinstance(value, list | tuple | set | frozenset | dict):
        return False
    items = value.values() if isinstance(value, dict) else value
    has_futures = False
    for item in items:
        has_futures |= _walk_upstream(call, item, found, depth + 1)
    return has_futures


def _resolve(value: Any, depth: int) -> Any:
    """`value` with every future in it (to the walk's depth) replaced by its result."""
    if isinstance(value, TaskFuture):
        return value.result()
    if depth >= _MAX_WALK_DEPTH:
        return value
    if isinstance(value, dict):
        return {key: _resolve(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(_resolve(item, depth + 1) for item in value)
    return value


def format_error(exc: BaseException) -> str:
    """The exception with its traceback from the user's code on (the engine's frames cut)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename in _ENGINE_FILES:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb))


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".splitlines()
    return (text[0] if text else type(exc).__name__)[:1000]


# --- task calls -------------------------------------------------------------------------------

def call_task(task: Task[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
    """A task called like a function: a task run in this thread inside a flow; outside one,
    the function with the task's retries and timeout."""
    call = _flow_call.get()
    if call is None:
        return _unrecorded(task, args, kwargs)
    result: R = call.task_run(task, args, kwargs).execute()
    return result


def submit_task(task: Task[..., R], args: tuple[Any, ...], kwargs: dict[str, Any], *,
                upstream: list[str] | None = None) -> TaskFuture[R]:
    """A task run on the flow's task runner, depending also on `upstream` task runs;
    outside a flow, run at once."""
    call = _flow_call.get()
    if call is None:
        future: Future[R] = TaskRunner().submit(lambda: _unrecorded(task, args, kwargs))
        return TaskFuture(future, str(uuid.uuid4()), task.name)
    return call.submit(call.task_run(task, args, kwargs, upstream))


def _unrecorded(task: Task[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
    for attempt in range(task.retries + 1):
        try:
            return TaskRunner().invoke(task.fn, args, kwargs, timeout=task.timeout,
                                       name=task.name)
        except Exception:
            if attempt == task.retries:
                raise
            time.sleep(task.retry_delay)
    raise AssertionError("unreachable")


# --- flow calls -------------------------------------------------------------------------------

def call_flow(flow: Flow[..., R], args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
    """A flow called like a function: a subflow run inside a flow, else a local call that
    records nothing and logs to the console."""
    parent = _flow_call.get()
    result: R
    if parent is None:
        with _console_logging():
            result = _run(FlowCall(flow, str(uuid.uuid4()), NullRecorder(), recorded=False),
                          args, kwargs)
        return result
    child = FlowCall(flow, str(uuid.uuid4()), parent.recorder, recorded=parent.recorded)
    subflow = SubflowRun(child, parent.id, flow.bind_parameters(args, kwargs))
    try:
        result = _run(child, args, kwargs)
    except BaseException as exc:
        subflow.end("FAILED", "Failed", message=_one_line(exc))
        raise
    subflow.end("COMPLETED", "Completed", result=jsonable(result, MAX_RESULT_CHARS))
    return result


def run_root(flow: Flow[..., R], run_id: str, recorder: Recorder, parameters: dict[str, Any]
             ) -> R:
    """The flow of a run an agent started: its task runs and subflows are recorded."""
    result: R = _run(FlowCall(flow, run_id, recorder, recorded=True), (), parameters)
    return result


def _run(call: FlowCall, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    flow_token, task_token = _flow_call.set(call), _task_run_id.set(None)
    try:
        result = _resolve(call.flow.fn(*args, **kwargs), 0)
    except BaseException:
        call.finish(failed=True)
        raise
    else:
        call.finish(failed=False)
    finally:
        _flow_call.reset(flow_token)
        _task_run_id.reset(task_token)
    return result


class SubflowRun:
    """The record of a subflow run, created RUNNING when it is called."""

    def __init__(self, call: FlowCall, parent_id: str, parameters: dict[str, Any]) -> None:
        self.call = call
        started = now()
        self.record: FlowRunRecord = {
            "id": call.id, "parent_run_id": parent_id, "flow": call.flow.name[:MAX_FLOW_NAME],
            "name": f"{call.flow.name}-{call.id[:8]}"[:MAX_NAME],
            "parameters": {key: jsonable(value, MAX_TASK_RESULT_CHARS)
                           for key, value in parameters.items()},
            "state": "RUNNING", "state_name": "Running", "start_time": started,
            "end_time": None, "message": None, "result": None,
            "history": [{"type": "RUNNING", "name": "Running", "timestamp": started,
                         "attempt": 1, "message": None}],
        }
        call.recorder.flow_run(self.record)

    def end(self, state: str, name: str, *, message: str | None = None, result: Any = None
            ) -> None:
        ended = now()
        self.record.update({"state": state, "state_name": name, "end_time": ended,
                            "message": message, "result": result})
        self.record["history"].append({"type": state, "name": name, "timestamp": ended,
                                       "attempt": 1, "message": message})
        self.call.recorder.flow_run(self.record)


@contextmanager
def _console_logging() -> Iterator[None]:
    """A flow called directly shows its run logger's INFO lines on stderr, unless logging is
    configured already."""
    logger = logging.getLogger(LOGGER_NAME)
    if logger.handlers or logging.getLogger().handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


_ENGINE_FILES = frozenset({__file__, task_runners.__file__, futures_base.__file__})
