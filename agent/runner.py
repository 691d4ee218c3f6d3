"""The child process of one flow run: `python -m ostinato.agent.runner SPEC_FILE`.

A run gets its own process so the agent can measure, cancel and kill it (with whatever it spawned)
and so flow code never shares memory with the agent or sees its credentials. The runner reads the
spec the agent wrote (parameters travel only in that file), imports the entrypoint from the bundle
(the working directory), validates and coerces the parameters with the flow's pydantic model, sets
the run context and calls the flow. Everything the agent needs to know goes back as JSON lines on
the events pipe (ostinato.agent.events): `print()` output and stdlib logging included.

Every run pays for this module's imports, so it imports only the stdlib and the parts of
ostinato.deploy a flow file loads anyway (flows, context: pydantic).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType, TracebackType
from typing import IO, Any, NoReturn, cast

from ostinato.agent import events
from ostinato.deploy import engine
from ostinato.deploy.context import RunContext, set_run_context
from ostinato.deploy.errors import InvalidInput
from ostinato.deploy.flows import Flow
from ostinato.deploy.jsontypes import jsonable
from ostinato.deploy.limits import MAX_RESULT_CHARS
from ostinato.deploy.records import FlowRunRecord, TaskRunRecord

USAGE = "usage: python -m ostinato.agent.runner SPEC_FILE  (a JSON run spec; see agent/events.py)\n"
FALLBACK_MODULE = "ostinato_flow_file"
SPEC_TYPES: dict[str, tuple[type, ...]] = {
    "flow_run_id": (str,), "name": (str,), "deployment": (str,), "scheduled_time": (str,),
    "attempt": (int,), "parameters": (dict,), "entrypoint": (str,), "agent": (str, type(None)),
    "events_fd": (int,),
}
PARENT_CHECK_SECONDS = 0.5
MAX_PARTIAL_LINE = 64 * 1024  # output without a newline is sent once it grows this long


class CannotStart(Exception):
    """The run cannot start (bad entrypoint or parameters); `error` is what the user sees."""

    def __init__(self, reason: events.Reason, error: BaseException) -> None:
        super().__init__(str(error))
        self.reason = reason
        self.error = error


def _now() -> str:
    return datetime.now(UTC).isoformat()


class EventPipe:
    """The write end of the agent's pipe: whole lines, one writer at a time, flushed per event."""

    def __init__(self, fd: int) -> None:
        os.set_inheritable(fd, False)  # grandchildren must not keep the agent's pipe open
        self._file: IO[bytes] | None = os.fdopen(fd, "wb")
        self._lock = threading.Lock()

    def emit(self, name: str, time: str | None = None, **fields: Any) -> None:
        line = json.dumps({"event": name, "time": time or _now(), **fields}) + "\n"
        with self._lock:
            if self._file is None:
                return  # after the terminal event, e.g. from a thread the flow left running
            try:
                self._file.write(line.encode("utf-8", "backslashreplace"))
                self._file.flush()
            except OSError:  # the agent is gone: nobody can hear how the run ends
                os._exit(events.EXIT_FAILED)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
            self._file = None


class PipeRecorder:
    """The flow run's task-run and subflow records, sent to the agent as they change, and its
    log lines, attributed."""

    def __init__(self, pipe: EventPipe, run_id: str) -> None:
        self._pipe = pipe
        self._run_id = run_id

    def task_run(self, record: TaskRunRecord) -> None:
        self._pipe.emit(events.TASK_RUN, record=record)

    def flow_run(self, record: FlowRunRecord) -> None:
        self._pipe.emit(events.FLOW_RUN, record=record)

    def log(self, level: int, logger: str, message: str, time: str | None = None) -> None:
        """A log line, naming the task run and subflow run of the thread that wrote it."""
        flow_run_id, task_run_id = engine.current_ids()
        ids = {"task_run_id": task_run_id} if task_run_id else {}
        if flow_run_id and flow_run_id != self._run_id:
            ids["flow_run_id"] = flow_run_id
        self._pipe.emit(events.LOG, time, level=level, logger=logger, message=message, **ids)


class LineStream:
    """sys.stdout or sys.stderr during a run: each complete line becomes a log event.

    `fileno()` is the real descriptor, so subprocesses and C code write there; the agent forwards
    the process's own stdout and stderr as well.
    """

    def __init__(self, recorder: PipeRecorder, logger: str, level: int, real: Any) -> None:
        self._recorder, self._logger, self._level, self._real = recorder, logger, level, real
        self._partial = ""
        self._lock = threading.Lock()
        self.encoding = "utf-8"
        self.errors = "backslashreplace"

    def write(self, text: str) -> int:
        with self._lock:
            *lines, self._partial = (self._partial + text).split("\n")
            if len(self._partial) >= MAX_PARTIAL_LINE:
                lines, self._partial = [*lines, self._partial], ""
            for line in lines:
                self._send(line)
        return len(text)

    def finish(self) -> None:
        """Send what is left without a final newline."""
        with self._lock:
            if self._partial:
                self._send(self._partial)
            self._partial = ""

    def _send(self, line: str) -> None:
        self._recorder.log(self._level, self._logger, line)

    def flush(self) -> None:
        pass

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return int(self._real.fileno())


class EventHandler(logging.Handler):
    """Stdlib logging records, from any logger, as log events."""

    def __init__(self, recorder: PipeRecorder) -> None:
        super().__init__(logging.INFO)
        self._recorder = recorder
        self.setFormatter(logging.Formatter("%(message)s"))  # appends exception tracebacks

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
        except Exception:
            self.handleError(record)
            return
        time = datetime.fromtimestamp(record.created, UTC).isoformat()
        self._recorder.log(record.levelno, record.name, message, time)


def capture_output(recorder: PipeRecorder) -> list[LineStream]:
    """Send logging and Python-level stdout/stderr to the pipe; returns the streams to finish."""
    root = logging.getLogger()
    root.addHandler(EventHandler(recorder))
    root.setLevel(logging.INFO)
    out = LineStream(recorder, events.STDOUT_LOGGER, events.STDOUT_LEVEL, sys.stdout)
    err = LineStream(recorder, events.STDERR_LOGGER, events.STDERR_LEVEL, sys.stderr)
    sys.stdout, sys.stderr = out, err
    return [out, err]


def load_flow(entrypoint: str) -> Flow[..., Any]:
    """The @flow named by `relative/path.py:attribute`, imported from the working directory."""
    relative, _, attribute = entrypoint.rpartition(":")
    if not relative or not attribute:
        raise CannotStart("bad_entrypoint", ValueError(
            f"entrypoint {entrypoint!r} is not 'relative/path.py:attribute'"))
    path = Path.cwd() / relative
    if not path.is_file():
        raise CannotStart("bad_entrypoint", FileNotFoundError(
            f"{relative}: no such file in {Path.cwd()}"))
    module = import_file(path, relative)
    if not hasattr(module, attribute):
        raise CannotStart("bad_entrypoint", AttributeError(
            f"{relative} has no attribute {attribute!r}"))
    target = getattr(module, attribute)
    if not isinstance(target, Flow):
        raise CannotStart("bad_entrypoint", TypeError(
            f"{entrypoint} is a {type(target).__name__}, not a @flow"))
    return target


def import_file(path: Path, relative: str) -> ModuleType:
    """Import the flow file with the bundle root, then its own folder, first on sys.path."""
    for folder in dict.fromkeys([str(path.parent), os.getcwd()]):
        sys.path.insert(0, folder)
    name = module_name(relative)
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise CannotStart("bad_entrypoint", ImportError(f"{relative}: cannot be imported"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 (user code may raise anything, even SystemExit)
        raise CannotStart("bad_entrypoint", exc) from None
    return module


def module_name(relative: str) -> str:
    """`flows/etl.py` → `flows.etl`: the name the file has with the bundle root on sys.path, so
    pickle and multiprocessing find it again; a private name if it has none or it is taken."""
    parts = Path(relative).with_suffix("").parts
    if parts and all(p.isidentifier() for p in parts) and parts[0] not in sys.modules:
        return ".".join(parts)
    return FALLBACK_MODULE


def coerce_parameters(flow: Flow[..., Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """Validated parameters as the flow receives them (a model stays a model, "5" becomes 5)."""
    try:
        flow.validate_parameters(parameters)  # the one-line message users see elsewhere
    except InvalidInput as exc:
        raise CannotStart("bad_parameters", exc) from None
    model = flow.parameter_model.model_validate(parameters)
    return {name: getattr(model, name) for name in type(model).model_fields}


def enter_run(spec: events.RunSpec, parameters: dict[str, Any]) -> None:
    scheduled = datetime.fromisoformat(spec["scheduled_time"])
    if scheduled.tzinfo is None:
        scheduled = scheduled.replace(tzinfo=UTC)
    set_run_context(RunContext(
        id=spec["flow_run_id"], name=spec["name"], deployment=spec["deployment"],
        scheduled_time=scheduled, attempt=spec["attempt"], parameters=dict(parameters),
        agent=spec["agent"],
    ))
    os.environ["OSTINATO_FLOW_RUN_ID"] = spec["flow_run_id"]


def failure(reason: events.Reason, error: BaseException) -> dict[str, str]:
    """The fields of a `failed` event, the traceback starting at the user's code."""
    if isinstance(error, SystemExit):
        message = f"the flow called sys.exit({error.code!r}) instead of returning or raising"
    elif isinstance(error, KeyboardInterrupt):
        message = "the flow was interrupted (KeyboardInterrupt)"
    else:
        message = str(error)
    tb = user_frames(error.__traceback__)
    shown = tb is not None or isinstance(error, SyntaxError)  # else there is no user code to show
    text = "".join(traceback.format_exception(type(error), error, tb)) if shown else ""
    return {"reason": reason, "type": type(error).__name__, "message": message, "traceback": text}


def user_frames(tb: TracebackType | None) -> TracebackType | None:
    """`tb` without its leading frames in the runner, the engine or the import machinery."""
    ours = {__file__, engine.__file__}
    while tb is not None and (tb.tb_frame.f_code.co_filename in ours
                              or tb.tb_frame.f_code.co_filename.startswith("<frozen ")):
        tb = tb.tb_next
    return tb


def run(spec: events.RunSpec, pipe: EventPipe) -> int:
    """Load, check, call: the exit status after exactly one terminal event."""
    recorder = PipeRecorder(pipe, spec["flow_run_id"])
    streams = capture_output(recorder)
    try:
        flow = load_flow(spec["entrypoint"])
        parameters = coerce_parameters(flow, spec["parameters"])
    except CannotStart as exc:
        return end(pipe, streams, events.FAILED, **failure(exc.reason, exc.error))
    enter_run(spec, parameters)
    pipe.emit(events.STARTED)
    try:
        result = engine.run_root(flow, spec["flow_run_id"], recorder, parameters)
    except BaseException as exc:  # noqa: BLE001 (the run reports whatever ended it)
        return end(pipe, streams, events.FAILED, **failure("exception", exc))
    return end(pipe, streams, events.COMPLETED, result=jsonable(result, MAX_RESULT_CHARS))


def end(pipe: EventPipe, streams: list[LineStream], name: str, **fields: Any) -> int:
    for stream in streams:
        stream.finish()
    pipe.emit(name, **fields)
    pipe.close()
    if name == events.COMPLETED:
        return events.EXIT_COMPLETED
    return events.EXIT_FAILED if fields["reason"] == "exception" else events.EXIT_CANNOT_START


def read_spec(argument: str) -> events.RunSpec:
    """The run spec, checked; OSError or ValueError saying what is wrong with it."""
    spec = json.loads(Path(argument).read_bytes())
    if not isinstance(spec, dict):
        raise ValueError("not a JSON object")
    for key, kind in SPEC_TYPES.items():
        if not isinstance(spec.get(key, ...), kind):
            raise ValueError(f"{key!r} is missing or not {' or '.join(k.__name__ for k in kind)}")
    datetime.fromisoformat(spec["scheduled_time"])
    return cast(events.RunSpec, spec)


def main(argv: list[str]) -> NoReturn:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        stream = sys.stdout if argv in (["-h"], ["--help"]) else sys.stderr
        stream.write(USAGE)
        sys.exit(0 if stream is sys.stdout else events.EXIT_CANNOT_START)
    try:
        spec = read_spec(argv[0])
        pipe = EventPipe(spec["events_fd"])
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"ostinato runner: bad run spec {argv[0]}: {exc}\n")
        sys.exit(events.EXIT_CANNOT_START)
    threading.Thread(target=die_with_agent, args=(os.getppid(),), daemon=True).start()
    exit_now(run(spec, pipe))


def die_with_agent(agent_pid: int) -> None:
    """If the agent dies (kill -9, a crash), end the run's whole process group: nobody would
    supervise or report it, and the reaper has already given it up when its lease expires."""
    while os.getppid() == agent_pid:
        time.sleep(PARENT_CHECK_SECONDS)
    if os.getpgid(0) == os.getpid():  # the leader of the run's own group, as agents start it
        os.killpg(os.getpid(), signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def exit_now(code: int) -> NoReturn:
    """Exit once the run is reported, without waiting for threads the flow left running."""
    logging.shutdown()
    for stream in (sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
