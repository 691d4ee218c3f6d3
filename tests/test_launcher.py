"""The launcher with real child processes: the spec reaches the child by file, events and output
come back, and stopping a run — or the run ending — leaves no process of its group alive."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psutil

from ostinato.agent.launcher import RunProcess

T = TypeVar("T")

# A stand-in for the runner: reads the spec, reports on the events pipe, then does what the
# spec's "mode" says.
CHILD = textwrap.dedent("""
    import json, os, signal, subprocess, sys, time
    spec = json.load(open(sys.argv[1]))
    events = os.fdopen(spec["events_fd"], "w", buffering=1)
    events.write(json.dumps({"event": "started", "parameters": spec["parameters"]}) + "\\n")
    print("to stdout", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    mode = spec["mode"]
    if mode in ("grandchild", "linger"):
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        events.write(json.dumps({"event": "grandchild", "pid": grandchild.pid}) + "\\n")
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        events.write(json.dumps({"event": "ignoring"}) + "\\n")
    if mode in ("grandchild", "stubborn"):
        time.sleep(60)
    if mode == "signal":
        os.kill(os.getpid(), signal.SIGKILL)
    events.write(json.dumps({"event": "completed"}) + "\\n")
""")


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.output: list[tuple[str, str]] = []

    def until(self, name: str, timeout: float = 10) -> dict[str, Any]:
        return self.found(lambda: next((event for event in self.events
                                        if event.get("event") == name), None),
                          f"{name!r} event", timeout)

    def found(self, find: Callable[[], T | None], what: str, timeout: float = 10) -> T:
        """What `find` returns once it is not None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (value := find()) is not None:
                return value
            time.sleep(0.01)
        raise AssertionError(f"no {what} within {timeout} s: {self.events} {self.output}")


def _launch(tmp_path: Path, mode: str, **spec: Any) -> tuple[RunProcess, Recorder]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    seen = Recorder()
    run = RunProcess({"mode": mode, "parameters": {"secret": "s3cr3t"}, **spec}, cwd=tmp_path,
                     env={**os.environ}, on_event=seen.events.append,
                     on_output=lambda stream, line: seen.output.append((stream, line)),
                     command=[sys.executable, str(script)])
    run.start()
    return run, seen


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone_soon(*pids: int, timeout: float = 10) -> bool:
    """Whether these processes have all ended within `timeout` (a SIGKILL takes effect when
    its target next runs, not when kill() returns)."""
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_the_spec_travels_by_file_and_events_and_output_come_back(tmp_path: Path) -> None:
    run, seen = _launch(tmp_path, "plain")
    cmdline = " ".join(psutil.Process(run.pid).cmdline()) if alive(run.pid) else ""
    outcome = run.wait(timeout=20)
    assert outcome is not None and outcome.exit_code == 0 and outcome.signal is None
    assert "s3cr3t" not in cmdline
    assert [e["event"] for e in seen.events] == ["started", "completed"]
    assert seen.events[0]["parameters"] == {"secret": "s3cr3t"}
    assert sorted(seen.output) == [("stderr", "to stderr"), ("stdout", "to stdout")]


def test_the_spec_file_is_private_and_removed_after_the_run(tmp_path: Path) -> None:
    run, seen = _launch(tmp_path, "grandchild")
    seen.until("started")
    spec_file = Path(psutil.Process(run.pid).cmdline()[-1])
    mode = spec_file.stat().st_mode & 0o777
    run.stop(grace=5)
    assert mode == 0o600
    assert not spec_file.exists()


def test_stopping_a_run_ends_its_whole_process_group(tmp_path: Path) -> None:
    run, seen = _launch(tmp_path, "grandchild")
    grandchild = seen.until("grandchild")["pid"]
    assert alive(grandchild)
    outcome = run.stop(grace=5)
    assert outcome.signal == signal.SIGTERM
    assert gone_soon(grandchild)


def test_a_run_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    run, seen = _launch(tmp_path, "stubborn")
    seen.until("ignoring")
    started = time.monotonic()
    outcome = run.stop(grace=1)
    assert outcome.signal == signal.SIGKILL
    assert 1 <= time.monotonic() - started < 10


def test_what_a_finished_run_left_running_is_killed(tmp_path: Path) -> None:
    run, seen = _launch(tmp_path, "linger")
    outcome = run.wait(timeout=20)
    grandchild = seen.until("grandchild")["pid"]
    assert outcome is not None and outcome.exit_code == 0
    assert gone_soon(grandchild)


def test_death_by_signal_is_reported_as_the_signal(tmp_path: Path) -> None:
    run, _ = _launch(tmp_path, "signal")
    outcome = run.wait(timeout=20)
    assert outcome is not None
    assert (outcome.exit_code, outcome.signal) == (None, signal.SIGKILL)


def test_resource_use_of_the_tree_is_measured(tmp_path: Path) -> None:
    run, seen = _launch(tmp_path, "grandchild")
    seen.until("grandchild")
    time.sleep(1.2)  # at least two samples of the tree
    outcome = run.stop(grace=5)
    assert outcome.peak_rss_bytes > 10 * 1024 * 1024  # two Python processes
    assert outcome.cpu_seconds > 0


def test_a_wait_that_times_out_returns_none(tmp_path: Path) -> None:
    run, seen = _launch(tmp_path, "grandchild")
    seen.until("started")
    assert run.wait(timeout=0.2) is None
    assert run.stop(grace=5).signal == signal.SIGTERM

