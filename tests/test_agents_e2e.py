"""End to end with nothing in-process: an `ostinato server start` process, two
`ostinato agent start` processes, and a flow file with parameters, tasks and logs registered
with `ostinato deployment create`. Every run completes on one of the agents with the result
its parameters give, and its log lines — from logging and from print() — reach the server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_cli import cli

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

FLOWS = textwrap.dedent('''
    import time
    from ostinato.deploy import Deployment, flow, get_run_logger, task

    @task
    def square(x: int) -> int:
        return x * x

    @task
    def total(values: list[int]) -> int:
        return sum(values)

    @flow(name="squares")
    def squares(n: int, label: str = "run") -> dict:
        log = get_run_logger()
        values = [square(i) for i in range(n)]
        log.info("%s squared %d numbers", label, n)
        print(f"{label} printed")
        time.sleep(0.5)  # long enough that one agent cannot take every run
        return {"label": label, "total": total(values)}

    e2e = Deployment(squares, name="e2e", parameters={"n": 1})
''')
RUNS = 8


def _agent(api: str, name: str, home: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OSTINATO_API_URL": api, "OSTINATO_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "ostinato.cli.main", "agent", "start",
                             "-q", "e2e", "--name", name, "--limit", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _all_ended(http: httpx.Client, ids: list[str], timeout: float = 60) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [http.get(f"/flow-runs/{run_id}").json() for run_id in ids]
        if all(run["end_time"] for run in found):
            return found
        time.sleep(0.2)
    raise AssertionError(f"runs not ended within {timeout} s: {[r['state'] for r in found]}")


def test_two_agents_run_every_run_with_its_parameters_result_and_logs(
        server_process: str, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "flows.py").write_text(FLOWS)
    assert cli(server_process, "deployment", "create", "flows.py", cwd=project).code == 0
    assert cli(server_process, "work-queue", "create", "e2e").code == 0
    agents = [_agent(server_process, f"agent-{n}", tmp_path / f"home-{n}") for n in (1, 2)]
    try:
        with httpx.Client(base_url=server_process, timeout=10) as http:
            ids = [http.post("/deployments/squares/e2e/runs", json={
                "parameters": {"n": n, "label": f"r{n}"}}).raise_for_status().json()["id"]
                for n in range(1, RUNS + 1)]
            runs = _all_ended(http, ids)
            logs = {run_id: [line["message"] for line in http.get(f"/flow-runs/{run_id}/logs")
                             .json()] for run_id in ids}
    finally:
        for agent in agents:
            agent.send_signal(signal.SIGTERM)
    for n, run in enumerate(runs, start=1):
        assert run["state"] == "COMPLETED", run
        assert run["parameters"] == {"n": n, "label": f"r{n}"}
        assert run["result"] == {"label": f"r{n}", "total": sum(i * i for i in range(n))}
        assert logs[run["id"]] == [f"r{n} squared {n} numbers", f"r{n} printed"]
        assert run["exit_code"] == 0 and run["cpu_seconds"] > 0
        assert 10 * 2**20 < run["peak_rss_bytes"] < 200 * 2**20
    assert {run["agent"] for run in runs} == {"agent-1", "agent-2"}
    for agent in agents:
        assert agent.wait(timeout=15) == 0, agent.stderr.read() if agent.stderr else ""
