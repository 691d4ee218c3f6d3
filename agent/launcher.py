"""Launching one flow run as a child process, and everything the agent needs from it.

The child runs in its own process group (a new session), so stopping a run reaches every
process the flow started — grandchildren included — and a Ctrl-C in the agent's terminal does
not reach the flows. The run spec (parameters included) goes in a private file, never on a
command line or through a shell. The child reports structured events on a pipe it inherits;
its stdout and stderr lines are forwarded separately. psutil samples the process tree for CPU
time and peak memory while it runs.

The child is forked from the agent's fork server when it has one (ostinato.agent.forkserver: a
run then costs a fork, not an interpreter's imports), else — or whenever the fork server cannot
serve — it is a new `python -P -m ostinato.agent.runner SPEC`. Either way the same pipes and
spec, and a child with what this module uses of a Popen.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from ostinato.agent.forkserver import ForkedChild, ForkServer, write_private

# -P: the bundle (the working directory) never shadows a module the runner imports.
RUNNER = (sys.executable, "-P", "-m", "ostinato.agent.runner")
SAMPLE_SECONDS = 0.5

EventHandler = Callable[[dict[str, Any]], None]
OutputHandler = Callable[[str, str], None]  # (stream name, line)
Child = subprocess.Popen[bytes] | ForkedChild


@dataclass(frozen=True)
class Outcome:
    """How the child ended: its exit code, or the signal that killed it."""

    exit_code: int | None
    signal: int | None
    cpu_seconds: float
    peak_rss_bytes: int


@dataclass
class _Usage:
    cpu_seconds: float = 0.0
    peak_rss_bytes: int = 0
    by_pid: dict[int, float] = field(default_factory=dict)  # CPU seen per process of the tree

    def sample(self, root: psutil.Process) -> None:
        try:
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss = 0
        for process in tree:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    rss += process.memory_info().rss
            except psutil.Error:
                continue
            self.by_pid[process.pid] = times.user + times.system
        self.peak_rss_bytes = max(self.peak_rss_bytes, rss)
        self.cpu_seconds = sum(self.by_pid.values())


class RunProcess:
    """One launched run. `start()` spawns it (forked from `fork_server` when there is one and
    it can, else `command` as a new process); `wait()` returns its Outcome once it has ended
    and its streams are drained; `stop(grace)` ends it, process group and all."""

    def __init__(self, spec: dict[str, Any], *, cwd: Path, env: dict[str, str],
                 on_event: EventHandler, on_output: OutputHandler,
                 command: Sequence[str] = RUNNER, fork_server: ForkServer | None = None) -> None:
        self._spec = spec
        self._cwd = cwd
        self._env = env
        self._on_event = on_event
        self._on_output = on_output
        self._command = list(command)
        self._fork_server = fork_server
        self._usage = _Usage()
        self._readers: list[threading.Thread] = []
        self._process: Child | None = None
        self._spawned = threading.Event()  # start() is over, whether a child exists or not
        self._spec_dir = tempfile.TemporaryDirectory(prefix="ostinato-run-")

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def start(self) -> None:
        events, stdout, stderr = os.pipe(), os.pipe(), os.pipe()
        writers = (stdout[1], stderr[1], events[1])
        try:
            self._process = self._spawn(self._write_spec(events[1]), writers)
        except BaseException:
            for read_end, _ in (events, stdout, stderr):
                os.close(read_end)
            raise
        finally:
            for write_end in writers:
                os.close(write_end)
            self._spawned.set()
        self._read(os.fdopen(events[0], "rb"), self._event_line)
        self._read(os.fdopen(stdout[0], "rb"), lambda line: self._on_output("stdout", line))
        self._read(os.fdopen(stderr[0], "rb"), lambda line: self._on_output("stderr", line))
        threading.Thread(target=self._sample_until_exit, daemon=True).start()

    def _spawn(self, spec_file: Path, writers: tuple[int, int, int]) -> Child:
        """The child, given the write ends of its stdout, stderr and events pipes."""
        if self._fork_server is not None:
            forked = self._fork_server.launch(spec_file, cwd=self._cwd, env=self._env,
                                              fds=writers)
            if forked is not None:
                return forked
        stdout, stderr, events = writers
        return subprocess.Popen(
            [*self._command, str(spec_file)], cwd=self._cwd, env=self._env,
            stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True,
            pass_fds=(events,))

    def _sample_until_exit(self) -> None:
        assert self._process is not None
        root = _process_or_none(self._process.pid)
        while root is not None and self._process.poll() is None:
            self._usage.sample(root)
            time.sleep(SAMPLE_SECONDS)

    def _write_spec(self, events_fd: int) -> Path:
        path = Path(self._spec_dir.name) / "spec.json"
        write_private(path, {**self._spec, "events_fd": events_fd})
        return path

    def _read(self, stream: IO[bytes], handle: Callable[[str], None]) -> None:
        def pump() -> None:
            with stream:
                for raw in stream:
                    handle(raw.decode(errors="replace").rstrip("\n"))

        thread = threading.Thread(target=pump, daemon=True)
        thread.start()
        self._readers.append(thread)

    def _event_line(self, line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            self._on_output("events", line)  # not ours: keep it as output rather than lose it
            return
        if isinstance(event, dict):
            self._on_event(event)

    def wait(self, timeout: float | None = None) -> Outcome | None:
        """The outcome once the child has exited (None if still running after `timeout`).
        Whatever the run left behind in its process group is killed then: no orphan outlives
        its run."""
        assert self._process is not None, "not started"
        try:
            code = self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._signal_group(signal.SIGKILL)
        for reader in self._readers:
            reader.join(timeout=5)
        self._spec_dir.cleanup()
        cpu_seconds = self._usage.cpu_seconds
        if isinstance(self._process, ForkedChild):  # measured whole by its parent, the zygote
            cpu_seconds = max(cpu_seconds, self._process.cpu_seconds)
        return Outcome(exit_code=code if code >= 0 else None,
                       signal=-code if code < 0 else None,
                       cpu_seconds=round(cpu_seconds, 3),
                       peak_rss_bytes=self._usage.peak_rss_bytes)

    def stop(self, grace: float) -> Outcome:
        """SIGTERM to the whole process group, SIGKILL after `grace` seconds; then its outcome.
        A stop that comes while `start()` is launching (a fork server starting up, say) waits
        for the child to exist, so no run escapes it."""
        self._spawned.wait()
        self._signal_group(signal.SIGTERM)
        outcome = self.wait(timeout=grace)
        if outcome is None:
            self._signal_group(signal.SIGKILL)
            outcome = self.wait()
        assert outcome is not None
        return outcome

    def _signal_group(self, signum: int) -> None:
        assert self._process is not None, "not started"
        try:
            os.killpg(self._process.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already


def _process_or_none(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.Error:
        return None
