"""Launching one flow run as a child process, and everything the agent needs from it.

The child runs in its own process group (a new session), so stopping a run reaches every
process the flow started — grandchildren included — and a Ctrl-C in the agent's terminal does
not reach the flows. The run spec (parameters included) goes in a private file, never on a
command line or through a shell. The child reports structured events on a pipe it inherits;
its stdout and stderr lines are forwarded separately. psutil samples the process tree for CPU
time and peak memory while it runs.
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

# -P: the bundle (the working directory) never shadows a module the runner imports.
RUNNER = (sys.executable, "-P", "-m", "ostinato.agent.runner")
SAMPLE_SECONDS = 0.5

EventHandler = Callable[[dict[str, Any]], None]
OutputHandler = Callable[[str, str], None]  # (stream name, line)


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
    """One launched run. `start()` spawns it; `wait()` returns its Outcome once it has ended
    and its streams are drained; `stop(grace)` ends it, process group and all."""

    def __init__(self, spec: dict[str, Any], *, cwd: Path, env: dict[str, str],
                 on_event: EventHandler, on_output: OutputHandler,
                 command: Sequence[str] = RUNNER) -> None:
        self._spec = spec
        self._cwd = cwd
        self._env = env
        self._on_event = on_event
        self._on_output = on_output
        self._command = list(command)
        self._usage = _Usage()
        self._readers: list[threading.Thread] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._spec_dir = tempfile.TemporaryDirectory(prefix="ostinato-run-")

    @property
    def pid(self) -> int:
        assert self._process is not None, "not started"
        return self._process.pid

    def start(self) -> None:
        read_end, write_end = os.pipe()
        try:
            spec_file = self._write_spec(write_end)
            self._process = subprocess.Popen(
                [*self._command, str(spec_file)], cwd=self._cwd, env=self._env,
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                start_new_session=True, pass_fds=(write_end,))
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self._read(os.fdopen(read_end, "rb"), self._event_line)
        assert self._process.stdout and self._process.stderr
        self._read(self._process.stdout, lambda line: self._on_output("stdout", line))
        self._read(self._process.stderr, lambda line: self._on_output("stderr", line))
        threading.Thread(target=self._sample_until_exit, daemon=True).start()

    def _sample_until_exit(self) -> None:
        assert self._process is not None
        root = _process_or_none(self._process.pid)
        while root is not None and self._process.poll() is None:
            self._usage.sample(root)
            time.sleep(SAMPLE_SECONDS)

    def _write_spec(self, events_fd: int) -> Path:
        path = Path(self._spec_dir.name) / "spec.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump({**self._spec, "events_fd": events_fd}, out)
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
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._signal_group(signal.SIGKILL)
        for reader in self._readers:
            reader.join(timeout=5)
        self._spec_dir.cleanup()
        code = self._process.returncode
        return Outcome(exit_code=code if code >= 0 else None,
                       signal=-code if code < 0 else None,
                       cpu_seconds=round(self._usage.cpu_seconds, 3),
                       peak_rss_bytes=self._usage.peak_rss_bytes)

    def stop(self, grace: float) -> Outcome:
        """SIGTERM to the whole process group, SIGKILL after `grace` seconds; then its outcome."""
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
