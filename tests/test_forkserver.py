"""The fork server with real processes: a run forked from the zygote behaves as one started as a
new interpreter — result, events, output, process group, cwd, environment, exit codes and
signals — and dies with the agent; whenever the zygote cannot serve, runs start as interpreters."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ostinato.agent.forkserver import ForkServer
from ostinato.agent.launcher import Outcome, RunProcess
from tests.test_launcher import Recorder, alive, gone_soon

DEADLINE = 20.0

FLOWS = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    from ostinato.deploy import flow

    def announce():  # on the run's own stdout, so it arrives even from a run that dies
        os.write(1, f"parent {os.getppid()}\\n".encode())

    @flow
    def describe():
        announce()
        return {"pid": os.getpid(), "pgid": os.getpgid(0), "cwd": os.getcwd(),
                "agent_only": os.environ.get("AGENT_ONLY"), "run_only": os.environ.get("RUN_ONLY"),
                "agent_only_in_memory": b"AGENT_ONLY" in open("/proc/self/environ", "rb").read()}

    @flow
    def speak():
        announce()
        os.write(2, b"to stderr\\n")
        print("printed")
        return "spoke"

    @flow
    def exit_3():
        announce()
        os._exit(3)

    @flow
    def kill_itself():
        announce()
        os.kill(os.getpid(), signal.SIGKILL)

    @flow
    def hang():
        announce()
        grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(f"grandchild {grandchild.pid}")
        time.sleep(60)
""")

# A stand-in agent: owns a fork server, launches `hang`, says who is who, then waits to be killed.
OWNER = textwrap.dedent("""
    import json, os, sys, threading
    from pathlib import Path
    import psutil
    from ostinato.agent.forkserver import ForkServer
    from ostinato.agent.launcher import RunProcess

    started = threading.Event()
    run = RunProcess(json.loads(sys.argv[1]), cwd=Path(sys.argv[2]), env=dict(os.environ),
                     on_event=lambda event: started.set(), on_output=lambda *line: None,
                     fork_server=ForkServer())
    run.start()
    started.wait(20)
    print(json.dumps({"run": run.pid, "zygote": psutil.Process(run.pid).ppid()}), flush=True)
    threading.Event().wait(60)
""")


class RunRecorder(Recorder):
    def parent(self) -> int:
        """The pid of the run's parent: the zygote's, or the agent's for an interpreter."""
        return int(self.found(lambda: next((line.split()[1] for _, line in self.output
                                            if line.startswith("parent ")), None),
                              "parent", DEADLINE))

    def logged(self, prefix: str) -> str:
        return self.found(lambda: next((str(event["message"]) for event in self.events
                                        if str(event.get("message")).startswith(prefix)), None),
                          f"log line {prefix!r}", DEADLINE)

    def last(self) -> dict[str, Any]:
        return self.events[-1]


def spec(entrypoint: str) -> dict[str, Any]:
    return {"flow_run_id": "run-1", "name": "crimson-otter", "deployment": "main/nightly",
            "scheduled_time": "2024-03-01T02:00:00Z", "attempt": 1, "parameters": {},
            "entrypoint": f"flows.py:{entrypoint}", "agent": "agent-a"}


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "flows.py").write_text(FLOWS)
    return tmp_path / "bundle"


@pytest.fixture
def fork_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ForkServer]:
    """A fork server of an agent whose environment has a variable its runs are not given."""
    monkeypatch.setenv("AGENT_ONLY", "the agent's")
    server = ForkServer()
    yield server
    server.close()


def prepare(fork_server: ForkServer, cwd: Path, flow: str,
            env: dict[str, str] | None = None) -> tuple[RunProcess, RunRecorder]:
    seen = RunRecorder()
    run = RunProcess(spec(flow), cwd=cwd, env=dict(os.environ) if env is None else env,
                     on_event=seen.events.append,
                     on_output=lambda stream, line: seen.output.append((stream, line)),
                     fork_server=fork_server)
    return run, seen


def launch(fork_server: ForkServer, cwd: Path, flow: str,
           env: dict[str, str] | None = None) -> tuple[RunProcess, RunRecorder]:
    run, seen = prepare(fork_server, cwd, flow, env)
    run.start()
    return run, seen


def finish(run: RunProcess) -> Outcome:
    outcome = run.wait(timeout=DEADLINE)
    assert outcome is not None, "the run did not end"
    return outcome


def test_a_forked_run_has_its_own_group_cwd_and_environment(
        fork_server: ForkServer, bundle: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key != "AGENT_ONLY"}
    run, seen = launch(fork_server, bundle, "describe", {**env, "RUN_ONLY": "the run's"})
    outcome = finish(run)
    assert (outcome.exit_code, outcome.signal) == (0, None)
    assert 0 < outcome.cpu_seconds < 1  # the zygote's measure: the run is over before a sample
    assert seen.parent() != os.getpid()  # forked from the zygote
    assert [event["event"] for event in seen.events] == ["started", "completed"]
    assert seen.last()["result"] == {
        "pid": run.pid, "pgid": run.pid, "cwd": str(bundle), "agent_only": None,
        "run_only": "the run's", "agent_only_in_memory": False}  # nor in the zygote's environ


def test_output_and_log_lines_arrive(fork_server: ForkServer, bundle: Path) -> None:
    run, seen = launch(fork_server, bundle, "speak")
    finish(run)
    assert seen.parent() != os.getpid()
    assert ("stderr", "to stderr") in seen.output
    assert seen.logged("printed") == "printed"
    assert seen.last()["result"] == "spoke"


@pytest.mark.parametrize(("flow", "exit_code", "signal_number"), [
    ("exit_3", 3, None), ("kill_itself", None, signal.SIGKILL)])
def test_exit_codes_and_signals_are_reported_as_popen_reports_them(
        fork_server: ForkServer, bundle: Path, flow: str, exit_code: int | None,
        signal_number: int | None) -> None:
    run, seen = launch(fork_server, bundle, flow)
    outcome = finish(run)
    assert seen.parent() != os.getpid()
    assert (outcome.exit_code, outcome.signal) == (exit_code, signal_number)


def test_stopping_a_forked_run_ends_its_grandchildren(
        fork_server: ForkServer, bundle: Path) -> None:
    run, seen = launch(fork_server, bundle, "hang")
    grandchild = int(seen.logged("grandchild ").split()[1])
    assert seen.parent() != os.getpid() and alive(grandchild)
    assert run.stop(grace=5).signal == signal.SIGTERM
    assert gone_soon(grandchild)


def test_a_stop_during_a_launch_waits_for_the_child_and_stops_it(
        fork_server: ForkServer, bundle: Path) -> None:
    run, _ = prepare(fork_server, bundle, "hang")
    starting = threading.Thread(target=run.start)
    starting.start()  # the zygote's own start makes this launch take a while
    time.sleep(0.05)
    assert run.stop(grace=5).signal == signal.SIGTERM
    starting.join(timeout=DEADLINE)


def test_closing_the_fork_server_ends_the_zygote_and_its_runs(
        fork_server: ForkServer, bundle: Path) -> None:
    run, seen = launch(fork_server, bundle, "hang")
    grandchild = int(seen.logged("grandchild ").split()[1])
    zygote = seen.parent()
    fork_server.close()
    assert finish(run).signal == signal.SIGKILL
    assert gone_soon(zygote, run.pid, grandchild, timeout=DEADLINE)


def test_an_agent_killed_takes_the_zygote_and_its_runs_with_it(bundle: Path) -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, json.dumps(spec("hang")), str(bundle)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pids = json.loads(owner.stdout.readline())
        assert pids["zygote"] != owner.pid and alive(pids["run"])
    finally:
        owner.kill()
        owner.wait(timeout=DEADLINE)
    assert gone_soon(pids["zygote"], pids["run"], timeout=DEADLINE)


def test_a_killed_zygote_takes_its_runs_and_the_next_launch_still_works(
        fork_server: ForkServer, bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    run, seen = launch(fork_server, bundle, "hang")
    seen.logged("grandchild ")
    os.kill(seen.parent(), signal.SIGKILL)
    assert gone_soon(run.pid)  # the runner saw its parent change (die_with_agent)
    assert finish(run).signal == signal.SIGKILL
    with caplog.at_level(logging.WARNING):
        after, seen_after = launch(fork_server, bundle, "describe")
        assert finish(after).exit_code == 0
    assert seen_after.parent() == os.getpid()  # an interpreter, while the zygote is given up
    assert "fork server unavailable" in caplog.text


def test_an_idle_zygote_exits_and_the_next_launch_starts_another(bundle: Path) -> None:
    fork_server = ForkServer(idle_seconds=0.4)
    try:
        run, seen = launch(fork_server, bundle, "describe")
        finish(run)
        first = seen.parent()
        assert first != os.getpid() and gone_soon(first)
        run, seen = launch(fork_server, bundle, "describe")
        finish(run)
        assert seen.parent() not in (first, os.getpid())
    finally:
        fork_server.close()


def test_a_run_whose_environment_shapes_its_interpreter_gets_one_of_its_own(
        fork_server: ForkServer, bundle: Path) -> None:
    run, seen = launch(fork_server, bundle, "describe",
                       {**os.environ, "PYTHONOSTINATOPROBE": "1"})
    assert finish(run).exit_code == 0
    assert seen.parent() == os.getpid()


def test_a_launch_the_zygote_refuses_fails_as_an_interpreter_would(
        fork_server: ForkServer, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        launch(fork_server, tmp_path / "missing", "describe")
