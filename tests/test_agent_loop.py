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
from pathlib import Path
from typing import Any

import httpx
import pytest

from ostinato.agent.cache import BundleCache
from ostinato.agent.loop import Agent, AgentOptions
from ostinato.deploy.client import Client
from tests.conftest import RunningServer

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

FLOWS = textwrap.dedent("""
    import time
    from ostinato.deploy import flow

    @flow(name="add")
    def add(a: int, b: int = 1) -> int:
        return a + b

    @flow(name="boom")
    def boom() -> None:
        raise ValueError("no luck")

    @flow(name="slow")
    def slow(seconds: float = 30) -> None:
        time.sleep(seconds)
""")


@pytest.fixture
def project(tmp_path: Path, server: RunningServer) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "flows.py").write_text(FLOWS)
    specs = [{"flow": flow, "name": name, "entrypoint": f"flows.py:{flow}", "path": str(folder),
              "timeout": timeout}
             for flow, name, timeout in [("add", "d", None), ("boom", "d", None),
                                         ("slow", "d", 1), ("slow", "long", None)]]
    with server.client() as client:
        client.put("/deployments", json={"deployments": specs}).raise_for_status()
        client.post("/work-queues", json={"name": "default"}).raise_for_status()
    return folder


@pytest.fixture
def agent(server: RunningServer, project: Path, tmp_path: Path) -> Iterator[Agent]:
    options = AgentOptions(queues=["default"], name="a1", limit=2, cancel_grace=1,
                           heartbeat_seconds=0.2, claim_wait=1)
    with Client(server.url) as client:
        running = Agent(client, options, BundleCache(tmp_path / "bundles", client))
        thread = threading.Thread(target=running.run, daemon=True)
        thread.start()
        yield running
        running.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "the agent did not stop"


def _run(server: RunningServer, deployment: str, **parameters: Any) -> str:
    with server.client() as client:
        response = client.post(f"/deployments/{deployment}/runs", json={"parameters": parameters})
    response.raise_for_status()
    run_id: str = response.json()["id"]
    return run_id


def _ended(server: RunningServer, run_id: str, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=server.url) as client:
        while time.monotonic() < deadline:
            run: dict[str, Any] = client.get(f"/flow-runs/{run_id}").json()
            if run["state"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                run["history"] = [s["type"] for s in client.get(f"/flow-runs/{run_id}/states")
                                  .json()]
                return run
            time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end within {timeout} s")


def test_a_run_completes_with_its_parameters(server: RunningServer, agent: Agent) -> None:
    run = _ended(server, _run(server, "add/d", a="41"))
    assert (run["state"], run["reason"], run["agent"]) == ("COMPLETED", "success", "a1")
    assert run["history"] == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]


def test_a_flow_that_raises_fails_with_its_exception(server: RunningServer,
                                                    agent: Agent) -> None:
    run = _ended(server, _run(server, "boom/d"))
    assert (run["state"], run["reason"]) == ("FAILED", "exception")


def test_a_run_over_its_timeout_is_stopped_and_failed(server: RunningServer,
                                                      agent: Agent) -> None:
    started = time.monotonic()
    run = _ended(server, _run(server, "slow/d"))
    assert (run["state"], run["reason"]) == ("FAILED", "timeout")
    assert time.monotonic() - started < 15


def test_a_cancelled_run_is_stopped_and_cancelled(server: RunningServer, agent: Agent) -> None:
    run_id = _run(server, "slow/long")
    with server.client() as client:
        deadline = time.monotonic() + 20
        while client.get(f"/flow-runs/{run_id}").json()["state"] != "RUNNING":
            assert time.monotonic() < deadline, "never started"
            time.sleep(0.05)
        client.post(f"/flow-runs/{run_id}/cancel").raise_for_status()
    run = _ended(server, run_id, timeout=15)
    assert (run["state"], run["reason"]) == ("CANCELLED", "cancelled_by_user")
    assert run["history"] == ["SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "CANCELLED"]


def test_agent_start_once_runs_what_is_due_and_exits(server: RunningServer, project: Path,
                                                     tmp_path: Path) -> None:
    run_id = _run(server, "add/d", a=1)
    env = {**os.environ, "OSTINATO_API_URL": server.url, "OSTINATO_HOME": str(tmp_path / "h")}
    done = subprocess.run([sys.executable, "-m", "ostinato.cli.main", "agent", "start",
                           "-q", "default", "--name", "cli-agent", "--once"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    run = _ended(server, run_id, timeout=1)
    assert (run["state"], run["agent"]) == ("COMPLETED", "cli-agent")
