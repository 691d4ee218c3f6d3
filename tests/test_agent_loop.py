"""The agent loop against a real server, with real child processes: runs claimed, launched,
and reported to their true end — completed, failed, timed out, cancelled."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from ostinato.agent.cache import BundleCache
from ostinato.agent.loop import Agent, AgentOptions
from ostinato.deploy.bundles import pack_directory
from ostinato.deploy.client import Client
from ostinato.deploy.settings import Settings
from ostinato.queues.database import Database
from tests.agents import ended, start_run, until_state
from tests.conftest import RunningServer, free_port, serving

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

FLOWS = textwrap.dedent("""
    import os
    import time
    from ostinato.deploy import flow

    @flow(name="add")
    def add(a: int, b: int = 1) -> int:
        return a + b

    @flow(name="boom")
    def boom() -> None:
        raise ValueError("no luck")

    @flow(name="slow")
    def slow(seconds: float = 30) -> str:
        for step in range(int(seconds * 2)):
            print(f"step {step}", flush=True)
            time.sleep(0.5)
        return "slept"

    @flow(name="sleeper")
    def sleeper() -> None:
        with open("sleeper.pid", "w") as out:  # in the run's folder: the test waits for it
            out.write(str(os.getpid()))
        time.sleep(60)
""")


@pytest.fixture
def project_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "flows.py").write_text(FLOWS)
    return folder


@pytest.fixture
def project(project_folder: Path, server: RunningServer) -> Path:
    _register(server, project_folder)
    return project_folder


def _register(server: RunningServer, folder: Path) -> None:
    """The flows' deployments (by path) and the `default` queue."""
    specs = [{"flow": flow, "name": name, "entrypoint": f"flows.py:{flow}", "path": str(folder),
              "timeout": timeout}
             for flow, name, timeout in [("add", "d", None), ("boom", "d", None),
                                         ("slow", "d", 1), ("slow", "long", None),
                                         ("sleeper", "d", None)]]
    with server.client() as client:
        client.put("/deployments", json={"deployments": specs}).raise_for_status()
        client.post("/work-queues", json={"name": "default"}).raise_for_status()


@contextmanager
def serving_agent(server: RunningServer, folder: Path, **options: Any) -> Iterator[Agent]:
    """An agent on the `default` queue in a thread; stopped, and checked to have exited, after."""
    settings = {"name": "a1", "limit": 2, "cancel_grace": 1, "heartbeat_seconds": 0.2,
                "claim_wait": 1, **options}
    with Client(server.url) as client:
        running = Agent(client, AgentOptions(queues=["default"], **settings),
                        BundleCache(folder / "bundles", client))
        thread = threading.Thread(target=running.run, daemon=True)
        thread.start()
        try:
            yield running
        finally:
            running.stop()
            thread.join(timeout=30)
        assert not thread.is_alive(), "the agent did not stop"


@pytest.fixture
def agent(server: RunningServer, project: Path, tmp_path: Path) -> Iterator[Agent]:
    with serving_agent(server, tmp_path) as running:
        yield running


def test_a_run_completes_with_its_parameters(server: RunningServer, agent: Agent) -> None:
    run = ended(server, start_run(server, "add/d", a="41"))
    assert (run["state"], run["reason"], run["agent"]) == ("COMPLETED", "success", "a1")
    assert run["history"] == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]


def test_a_flow_that_raises_fails_with_its_exception(server: RunningServer,
                                                    agent: Agent) -> None:
    run = ended(server, start_run(server, "boom/d"))
    assert (run["state"], run["reason"]) == ("FAILED", "exception")


def test_a_run_over_its_timeout_is_stopped_and_failed(server: RunningServer,
                                                      agent: Agent) -> None:
    started = time.monotonic()
    run = ended(server, start_run(server, "slow/d"))
    assert (run["state"], run["reason"]) == ("FAILED", "timeout")
    assert time.monotonic() - started < 15


def test_a_cancelled_run_is_stopped_and_cancelled(server: RunningServer, agent: Agent) -> None:
    run_id = start_run(server, "slow/long")
    until_state(server, run_id, "RUNNING")
    with server.client() as client:
        client.post(f"/flow-runs/{run_id}/cancel").raise_for_status()
    run = ended(server, run_id, timeout=15)
    assert (run["state"], run["reason"]) == ("CANCELLED", "cancelled_by_user")
    assert run["history"] == ["SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "CANCELLED"]


def test_a_run_cancelled_while_it_waits_for_its_time_never_starts(server: RunningServer,
                                                                   project: Path,
                                                                   tmp_path: Path) -> None:
    run_id = start_run(server, "add/d", start_in=3, a=1)
    with serving_agent(server, tmp_path, prefetch=60):
        until_state(server, run_id, "PENDING")  # claimed early: it waits for its instant
        with server.client() as client:
            client.post(f"/flow-runs/{run_id}/cancel").raise_for_status()
        run = ended(server, run_id, timeout=10)
    assert run["history"] == ["SCHEDULED", "PENDING", "CANCELLING", "CANCELLED"]
    assert run["start_time"] is None


class _ClockBehind(datetime):
    """The agent's idea of now, a minute behind the server's (a host whose NTP broke)."""

    @classmethod
    def now(cls, tz: Any = None) -> _ClockBehind:
        return super().now(tz) - timedelta(minutes=1)


def test_an_agent_whose_clock_is_behind_starts_a_due_run_at_once(
        server: RunningServer, project: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("ostinato.agent.loop.datetime", _ClockBehind)
    started = time.monotonic()
    with serving_agent(server, tmp_path):  # no prefetch: whatever it claims is due now
        run = ended(server, start_run(server, "add/d", a=1), timeout=30)
    assert run["state"] == "COMPLETED"
    assert time.monotonic() - started < 15, "it waited for its own clock to reach the run"


def test_agent_start_once_runs_what_is_due_and_exits(server: RunningServer, project: Path,
                                                     tmp_path: Path) -> None:
    run_id = start_run(server, "add/d", a=1)
    env = {**os.environ, "OSTINATO_API_URL": server.url, "OSTINATO_HOME": str(tmp_path / "h")}
    done = subprocess.run([sys.executable, "-m", "ostinato.cli.main", "agent", "start",
                           "-q", "default", "--name", "cli-agent", "--once"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    run = ended(server, run_id, timeout=1)
    assert (run["state"], run["agent"]) == ("COMPLETED", "cli-agent")


def test_stopping_hands_back_waiting_runs_and_drains_running_ones(
        server: RunningServer, project: Path, tmp_path: Path) -> None:
    running_id = start_run(server, "slow/long")
    waiting_id = start_run(server, "add/d", start_in=30, a=1)  # claimed early, waits for its time
    with serving_agent(server, tmp_path, prefetch=60, drain_timeout=1) as agent:
        until_state(server, running_id, "RUNNING")
        until_state(server, waiting_id, "PENDING")
        stopped = time.monotonic()
        agent.stop()
        handed_back = until_state(server, waiting_id, "SCHEDULED", timeout=5) - stopped
        run = ended(server, running_id, timeout=10)
        drained = time.monotonic() - stopped
    assert handed_back < 1
    assert (run["state"], run["reason"]) == ("CANCELLED", "agent_stopping")
    assert drained < 1 + 1 + 2  # drain timeout, then the cancel grace, then the report


@pytest.mark.slow
def test_a_killed_agent_leaves_no_child_and_its_run_crashes(database: Database, tmp_path: Path,
                                                           project_folder: Path) -> None:
    lease, interval = 2.0, 0.5
    settings = Settings(home=tmp_path / "server", port=free_port(), lease_seconds=lease,
                        scheduler_interval_seconds=interval)
    with serving(database, settings) as server:
        _register(server, project_folder)
        run_id = start_run(server, "sleeper/d")
        env = {**os.environ, "OSTINATO_API_URL": server.url, "OSTINATO_HOME": str(tmp_path)}
        agent = subprocess.Popen([sys.executable, "-m", "ostinato.cli.main", "agent", "start",
                                  "-q", "default"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        marker = project_folder / "sleeper.pid"
        try:
            deadline = time.monotonic() + 20
            while not marker.exists() or not marker.read_text():  # the flow is running
                assert time.monotonic() < deadline, "the flow never started"
                time.sleep(0.02)
            child = psutil.Process(int(marker.read_text()))
        finally:
            agent.kill()
            agent.wait(timeout=10)
        killed = time.monotonic()
        _, alive = psutil.wait_procs([child], timeout=5)
        for survivor in alive:  # fail below, but leave nothing running behind the test
            survivor.kill()
        run = ended(server, run_id, timeout=lease + interval + 5)
        crashed_after = time.monotonic() - killed
    assert alive == [], "the run's process outlived its agent"
    assert (run["state"], run["reason"]) == ("CRASHED", "lease_expired")
    assert crashed_after < lease + interval + 2


def test_a_run_executes_from_its_bundle_fetched_once(server: RunningServer, project: Path,
                                                     agent: Agent, tmp_path: Path) -> None:
    bundle = pack_directory(project)
    with Client(server.url) as client:
        client.upload_bundle(bundle.sha256, bundle.data)
        client.put("/deployments", {"deployments": [{
            "flow": "add", "name": "bundled", "entrypoint": "flows.py:add",
            "bundle": bundle.sha256}]})
    first, second = (ended(server, start_run(server, "add/bundled", a=i)) for i in (1, 2))
    assert [first["state"], second["state"]] == ["COMPLETED", "COMPLETED"]
    cached = tmp_path / "bundles" / bundle.sha256
    assert (cached / "flows.py").read_text() == FLOWS
    assert not list((tmp_path / "bundles" / ".pins").iterdir()), "a pin outlived its run"


def test_a_run_that_ends_while_the_server_is_down_is_reported_when_it_is_back(
        database: Database, tmp_path: Path, project_folder: Path) -> None:
    settings = Settings(home=tmp_path / "server", port=free_port(), run_scheduler=False)
    with ExitStack() as agent_running:
        with serving(database, settings) as server:
            _register(server, project_folder)
            run_id = start_run(server, "slow/long", seconds=2)
            agent_running.enter_context(serving_agent(server, tmp_path))
            until_state(server, run_id, "RUNNING")
            server.app.state.notifier.close()  # the agent's long poll answers, as at shutdown
        down = datetime.now(UTC)
        time.sleep(4)  # the run ends meanwhile; its last lines and its report wait
        with serving(database, settings) as server:
            run = ended(server, run_id, timeout=20)
            with server.client() as client:
                lines = [line["message"]
                         for line in client.get(f"/flow-runs/{run_id}/logs").json()]
    assert (run["state"], run["result"]) == ("COMPLETED", "slept")
    assert datetime.fromisoformat(run["end_time"]) < down + timedelta(seconds=3)
    assert lines == [f"step {n}" for n in range(4)]


def test_the_agent_beats_often_enough_for_the_servers_lease(database: Database, tmp_path: Path,
                                                            project_folder: Path) -> None:
    settings = Settings(home=tmp_path / "server", port=free_port(), lease_seconds=3,
                        scheduler_interval_seconds=0.5)  # the reaper acts on every miss
    with serving(database, settings) as server:
        _register(server, project_folder)
        run_id = start_run(server, "slow/long", seconds=5)  # longer than the lease
        with serving_agent(server, tmp_path, heartbeat_seconds=10):
            run = ended(server, run_id, timeout=20)
    assert (run["state"], run["result"]) == ("COMPLETED", "slept")
