"""A fork server (a "zygote") for flow runs: a run costs a fork instead of an interpreter start.

A fresh `python -P -m ostinato.agent.runner SPEC` spends most of a short run's CPU importing
pydantic and ostinato.deploy. The zygote, `python -P -m ostinato.agent.forkserver FD`, imports
them once; for each launch it forks a child that becomes what that command would have been: its
own session (process group), the run's stdout, stderr and events pipe, its working directory and
environment, then the runner's `main` on the spec.

The agent starts one zygote lazily, shares it between its runs and closes it after IDLE_SECONDS
without runs. They talk over an AF_UNIX SOCK_SEQPACKET socketpair, one JSON object a message:

    agent → zygote  {"id": N, "launch": FILE} + three fds: stdout, stderr and events write ends
    zygote → agent  {"id": N, "pid": PID} or {"id": N, "error": TEXT}
                    {"exited": PID, "returncode": RC, "cpu_seconds": S}   (RC < 0: a signal)

FILE is private (0600, in the run's own temporary folder, like the spec): cwd, environment and
spec path never travel through the socket. On EOF — the agent closed the socket, or died — the
zygote kills its runs' process groups and exits; if the zygote itself is killed, each run's
`runner.die_with_agent` sees its parent change and ends the run's group. The zygote is single-
threaded (forking a threaded process is unsafe) and imports the runner only in `main`: the agent
imports this module too, for ForkServer, and pays for the stdlib alone.
"""

from __future__ import annotations

import gc
import importlib
import itertools
import json
import logging
import os
import queue
import select
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from ostinato.agent import events

log = logging.getLogger(__name__)

ZYGOTE = (sys.executable, "-P", "-m", "ostinato.agent.forkserver")
# What every run imports: the runner (pydantic, ostinato.deploy.flows and .context) and what a
# flow file declares besides its @flow.
PRELOAD = ("ostinato.agent.runner", "ostinato.deploy.deployment")
# Read once when an interpreter starts or a preloaded module is imported: a run whose
# environment sets these differently gets an interpreter of its own.
INTERPRETER_PREFIXES = ("PYTHON", "PYDANTIC", "LD_", "LC_", "MALLOC_", "GLIBC_")
INTERPRETER_NAMES = frozenset({"LANG", "HOME"})
IDLE_SECONDS = 60.0
LAUNCH_TIMEOUT = 30.0  # the first launch also waits for the zygote's imports
RETRY_SECONDS = 60.0  # after the zygote failed, runs start as interpreters this long
MAX_MESSAGE = 8192


def write_private(path: Path, value: Any) -> None:
    """`value` as JSON in a new file only this user can read: where parameters may go."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(value, out)


def interpreter_env(env: Mapping[str, str]) -> dict[str, str]:
    """The variables of `env` that shape an interpreter: all the zygote is started with, so no
    credential of the agent's environment lingers in the children's memory."""
    return {name: value for name, value in env.items()
            if name.startswith(INTERPRETER_PREFIXES) or name in INTERPRETER_NAMES}


# --- the agent's side ----------------------------------------------------------------------------


class ForkedChild:
    """A run forked by the zygote, with what RunProcess uses of a Popen: `pid`, `returncode`,
    `poll()` and `wait(timeout)`. The zygote is its parent; its exit status arrives by message,
    with the CPU time it used (its reaped descendants' included), which sampling every half
    second misses for a run shorter than that."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.cpu_seconds = 0.0
        self._ended = threading.Event()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(f"forked run {self.pid}", timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def end(self, returncode: int, cpu_seconds: float = 0.0) -> None:
        self.returncode, self.cpu_seconds = returncode, cpu_seconds
        self._ended.set()


Reply = queue.SimpleQueue[ForkedChild | str]  # the child, or why there is none


@dataclass
class _Link:
    """One started zygote: its process, the agent's end of its socket, what waits on it."""

    process: subprocess.Popen[bytes]
    sock: socket.socket
    replies: dict[int, Reply] = field(default_factory=dict)
    children: dict[int, ForkedChild] = field(default_factory=dict)
    used: float = field(default_factory=time.monotonic)  # last launch or exit
    closing: bool = False  # the agent ended it: no failure
    reader: threading.Thread | None = None


class ForkServer:
    """The agent's zygote: started on the first launch, shared by all its runs (thread-safe),
    ended after `idle_seconds` without runs and restarted on the next launch. `launch()` returns
    None whenever the zygote cannot serve, and the caller starts an interpreter instead: a run
    never fails for want of the zygote."""

    def __init__(self, *, idle_seconds: float = IDLE_SECONDS) -> None:
        self._idle_seconds = idle_seconds
        self._env = interpreter_env(os.environ)
        self._lock = threading.Lock()
        self._link: _Link | None = None
        self._numbers = itertools.count()
        self._closed = False
        self._retry_at = 0.0
        self._warned = False

    def launch(self, spec_file: Path, *, cwd: Path, env: Mapping[str, str],
               fds: tuple[int, int, int]) -> ForkedChild | None:
        """Fork the runner on `spec_file` with the run's stdout, stderr and events write ends
        (`fds`). The events one keeps its number in the child, as with Popen's `pass_fds`, so
        one spec serves either way. None if the run must start as an interpreter."""
        if interpreter_env(env) != self._env:
            return None
        launch_file = spec_file.with_name("launch.json")
        write_private(launch_file, {"cwd": str(cwd), "env": dict(env), "spec": str(spec_file),
                                    "events_fd": fds[2]})
        sent = self._request(launch_file, fds)
        if sent is None:
            return None
        link, number, reply = sent
        try:
            answer = reply.get(timeout=LAUNCH_TIMEOUT)
        except queue.Empty:
            answer = f"no answer within {LAUNCH_TIMEOUT} s"
            self._abandon(link, number)
        if isinstance(answer, str):
            self._fall_back(answer)
            return None
        return answer

    def close(self) -> None:
        """End the zygote, and any run still forked from it; launch nothing more (idempotent)."""
        with self._lock:
            self._closed = True
            link, self._link = self._link, None
            if link is None:
                return
            link.closing = True
            with suppress(OSError):  # closed already, if its zygote has gone
                link.sock.shutdown(socket.SHUT_RDWR)  # its reader sees EOF and cleans up
        if link.reader is not None:
            link.reader.join(timeout=10)

    def _request(self, launch_file: Path, fds: Sequence[int]) -> tuple[_Link, int, Reply] | None:
        with self._lock:
            link = self._current_link()
            if link is None:
                return None
            number, reply = next(self._numbers), Reply()
            link.replies[number] = reply
            link.used = time.monotonic()
            try:
                socket.send_fds(link.sock, [_encode({"id": number, "launch": str(launch_file)})],
                                fds)
            except OSError as exc:
                del link.replies[number]
                self._fall_back(f"cannot reach it: {exc}")
                return None
        return link, number, reply

    def _current_link(self) -> _Link | None:
        if self._closed or time.monotonic() < self._retry_at:
            return None
        if self._link is None:
            try:
                self._link = self._start()
            except OSError as exc:
                self._retry_at = time.monotonic() + RETRY_SECONDS
                self._fall_back(f"cannot start it: {exc}")
        return self._link

    def _start(self) -> _Link:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = subprocess.Popen(
                [*ZYGOTE, str(theirs.fileno())], env=self._env, cwd="/",
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),), start_new_session=True)  # no Ctrl-C from a terminal
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        link = _Link(process, ours)
        link.reader = threading.Thread(target=self._read, args=(link,), daemon=True,
                                       name="ostinato-fork-server")
        link.reader.start()
        return link

    def _read(self, link: _Link) -> None:
        """The link's only reader: hands each message to whoever waits for it, until the zygote
        is gone or idle."""
        readable = select.poll()
        readable.register(link.sock, select.POLLIN)
        try:
            while (message := self._receive(link, readable)) is not None:
                self._dispatch(link, message)
        except (OSError, ValueError) as exc:
            log.debug("fork server link broken: %s", exc)
        finally:
            self._finish(link)

    def _receive(self, link: _Link, readable: select.poll) -> dict[str, Any] | None:
        """The next message; None at EOF, or once the link has been idle long enough."""
        while not readable.poll(self._idle_seconds / 4 * 1000):
            if self._end_if_idle(link):
                return None
        data = link.sock.recv(MAX_MESSAGE)
        return json.loads(data) if data else None

    def _end_if_idle(self, link: _Link) -> bool:
        with self._lock:
            idle = time.monotonic() - link.used >= self._idle_seconds
            if idle and not link.replies and not link.children:
                link.closing = True
                if self._link is link:
                    self._link = None
            return link.closing

    def _dispatch(self, link: _Link, message: dict[str, Any]) -> None:
        with self._lock:
            link.used = time.monotonic()
            if "exited" in message:
                child = link.children.pop(message["exited"], None)
                if child is not None:
                    child.end(message["returncode"], message["cpu_seconds"])
                return
            reply, pid = link.replies.pop(message["id"], None), message.get("pid")
            if reply is None:
                if pid is not None:  # its launch gave up waiting and started an interpreter
                    _kill_run(pid)
            elif pid is None:
                reply.put(message["error"])
            else:
                reply.put(link.children.setdefault(pid, ForkedChild(pid)))

    def _abandon(self, link: _Link, number: int) -> None:
        """A zygote that does not answer is killed: its runs die with it (die_with_agent)."""
        with self._lock:
            link.replies.pop(number, None)
        with suppress(OSError):
            link.process.kill()

    def _finish(self, link: _Link) -> None:
        """The zygote has gone, or is going: whatever waited on it is answered."""
        with self._lock:
            if self._link is link:
                self._link = None
            if not link.closing:
                self._retry_at = time.monotonic() + RETRY_SECONDS
            waiting, running = list(link.replies.values()), list(link.children.values())
            link.replies.clear()
            link.children.clear()
            link.sock.close()  # EOF for the zygote, if it still runs
        for reply in waiting:
            reply.put("it exited")
        for child in running:
            child.end(-signal.SIGKILL)  # as the zygote, or die_with_agent, ends them
        try:
            code = link.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            link.process.kill()
            code = link.process.wait()
        if not link.closing:
            self._fall_back(f"it exited with code {code}")

    def _fall_back(self, why: str) -> None:
        level = logging.DEBUG if self._warned else logging.WARNING
        self._warned = True
        log.log(level, "fork server unavailable (%s): runs start as new interpreters", why)


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def _kill_run(pid: int) -> None:
    """End a forked run nobody supervises, its process group included."""
    for kill in (os.killpg, os.kill):  # os.kill: in case it has not made its group yet
        with suppress(OSError):
            kill(pid, signal.SIGKILL)


# --- the zygote's side ---------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    """Preload, then fork runs on request until EOF on the socket `argv[0]` (an fd number)."""
    link = socket.socket(fileno=int(argv[0]))
    for name in PRELOAD:
        importlib.import_module(name)
    warm_up()
    gc.freeze()  # the preloaded objects stay out of the children's collections: fewer copies
    zygote = Zygote(link)
    try:
        zygote.serve()
    except ConnectionError:
        pass  # the agent went away while an answer was on its way: the same as EOF
    finally:
        zygote.kill_runs()


def warm_up() -> None:
    """Build and use a flow's parameter model, as every run does: pydantic imports the rest of
    itself and looks up its plugins (reading every installed package's metadata) on the first
    model, not on import — a third of a run's CPU if each child did it again."""
    from ostinato.deploy.flows import Flow

    Flow(_sample_flow).validate_parameters({"n": "1"})


def _sample_flow(n: int) -> None:
    """What `warm_up` builds a parameter model for."""


class Zygote:
    """The loop: one thread, a selector on the agent's socket and on SIGCHLD (via the signal
    module's wakeup fd), so launches are answered and exits reported in the order they happen."""

    def __init__(self, link: socket.socket) -> None:
        self.link = link
        self.runs: set[int] = set()
        self.wakeup, wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, _wake)
        signal.set_wakeup_fd(wakeup_write, warn_on_full_buffer=False)
        self.selector = selectors.DefaultSelector()
        self.selector.register(link, selectors.EVENT_READ)
        self.selector.register(self.wakeup, selectors.EVENT_READ)

    def serve(self) -> None:
        while True:
            for key, _ in self.selector.select():
                if key.fd == self.wakeup:
                    self.reap()
                elif not self.answer():
                    return

    def answer(self) -> bool:
        """Launch what the next request asks for; False at EOF."""
        message, fds, _, _ = socket.recv_fds(self.link, MAX_MESSAGE, 3)
        if not message:
            return False
        request = json.loads(message)
        try:
            reply: dict[str, Any] = {"pid": self.fork(Path(request["launch"]), fds)}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for fd in fds:
                os.close(fd)
        self.link.send(_encode({"id": request["id"], **reply}))
        return True

    def fork(self, launch_file: Path, fds: list[int]) -> int:
        launch = json.loads(launch_file.read_bytes())
        if len(fds) != 3 or launch["events_fd"] < 3:
            raise ValueError(f"bad launch: {len(fds)} fds, events on {launch['events_fd']}")
        if not os.path.isdir(launch["cwd"]):  # an interpreter's start fails as it always has
            raise NotADirectoryError(launch["cwd"])
        ready, ready_write = os.pipe()
        with os.fdopen(ready, "rb", buffering=0) as ready_file:
            try:
                pid = os.fork()
                if pid == 0:
                    become_run(launch, fds)
            finally:
                os.close(ready_write)
            self.runs.add(pid)
            # As Popen returns: once the child is in a session of its own (its pid a group the
            # agent may signal) and holds only the run's descriptors — closing them is our EOF.
            ready_file.read(1)
        return pid

    def reap(self) -> None:
        os.read(self.wakeup, 4096)  # what is left makes the selector call again
        while self.runs:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                return
            self.runs.discard(pid)
            self.link.send(_encode({"exited": pid, "returncode": os.waitstatus_to_exitcode(status),
                                    "cpu_seconds": usage.ru_utime + usage.ru_stime}))

    def kill_runs(self) -> None:
        for pid in self.runs:
            _kill_run(pid)


def _wake(signum: int, frame: FrameType | None) -> None:
    """SIGCHLD's handler: its only job is to exist, so the signal reaches the wakeup fd."""


def become_run(launch: dict[str, Any], fds: list[int]) -> NoReturn:
    """In the forked child: become `python -P -m ostinato.agent.runner SPEC` as the agent would
    have started it. Never returns into the zygote's loop, whatever happens."""
    code = events.EXIT_CANNOT_START
    try:
        _leave_zygote(fds, launch["events_fd"])
        _enter_run(launch["cwd"], launch["env"])
        from ostinato.agent import runner

        sys.argv = [str(runner.__file__), launch["spec"]]
        runner.main([launch["spec"]])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else events.EXIT_CANNOT_START
    except BaseException:  # noqa: BLE001 (reported on the run's stderr, then exit)
        traceback.print_exc()
    finally:
        os._exit(code)


def _leave_zygote(fds: list[int], events_fd: int) -> None:
    """Own session, default SIGCHLD, and the run's descriptors only: stdin stays the zygote's
    /dev/null, stdout and stderr become the run's, the events pipe goes to `events_fd`."""
    os.setsid()
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    stdout, stderr, events_pipe = fds
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    os.dup2(events_pipe, events_fd)
    # The zygote's socket, selector, wakeup pipe and ready pipe go too (the objects are never
    # used again): the zygote, waiting for EOF on the last, may now answer with our pid.
    os.closerange(3, events_fd)
    os.closerange(events_fd + 1, os.sysconf("SC_OPEN_MAX"))


def _enter_run(cwd: str, env: dict[str, str]) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    time.tzset()  # the run's TZ, as a new interpreter would have read it


if __name__ == "__main__":
    main(sys.argv[1:])
