"""Run logs and a finished run's outcome over real HTTP (SQLite and PostgreSQL): what an agent
sends (log lines in `POST /api/flow-runs/{id}/events`, the final state report) is what the API
and `ostinato flow-run logs|inspect` give back, in order, page by page and while following."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from ostinato.queues import tables
from tests.conftest import RunningServer
from tests.test_cli import assert_user_error, cli, closed_port, seed
from tests.test_cli_claims import register_agent


def log_line(message: str, *, level: int = 20, at: datetime | None = None) -> dict[str, Any]:
    return {"timestamp": (at or datetime.now(UTC)).isoformat(), "level": level,
            "logger": "etl", "message": message}


def claimed_run(server: RunningServer) -> tuple[str, int]:
    """A run of etl/hourly claimed by an agent, reported RUNNING: (id, fencing token)."""
    seed(server.url)
    agent = register_agent(server.url, "worker", ["existing"])
    with server.client() as http:
        return running_run(http, agent)


def running_run(http: httpx.Client, agent: str) -> tuple[str, int]:
    """A new run of etl/hourly claimed by `agent` (from queue `existing`, of `seed`) and
    reported RUNNING five seconds ago: (id, fencing token)."""
    run_id = http.post("/deployments/etl/hourly/runs", json={}).raise_for_status().json()["id"]
    [claimed] = http.post("/claims", json={"agent_id": agent, "queues": ["existing"]}
                          ).raise_for_status().json()
    assert claimed["id"] == run_id
    started = datetime.now(UTC) - timedelta(seconds=5)
    http.post(f"/flow-runs/{run_id}/state", json={
        "state": "RUNNING", "fencing_token": claimed["fencing_token"],
        "time": started.isoformat()}).raise_for_status()
    return run_id, claimed["fencing_token"]


def _stored_lines(server: RunningServer) -> int:
    with server.database.read() as conn:
        return int(conn.execute(select(func.count()).select_from(tables.logs)).scalar_one())


def test_lines_come_back_in_order_page_by_page(server: RunningServer) -> None:
    run_id, _ = claimed_run(server)
    with server.client() as http:
        for first in (0, 3):
            batch = [log_line(f"line {n}") for n in range(first, first + 3)]
            assert http.post(f"/flow-runs/{run_id}/events", json={"logs": batch}
                             ).status_code == 204
        page = http.get(f"/flow-runs/{run_id}/logs", params={"limit": 4}).json()
        rest = http.get(f"/flow-runs/{run_id}/logs", params={"after": page[-1]["id"]}).json()
    assert [line["message"] for line in page + rest] == [f"line {n}" for n in range(6)]
    assert len(page) == 4 and {line["flow_run_id"] for line in page} == {run_id}


@pytest.mark.parametrize(("body", "status"), [
    ({}, 422),
    ({"logs": []}, 422),
    ({"logs": [log_line("x", level=500)]}, 422),
    ({"logs": [{**log_line("x"), "timestamp": "2026-11-28T10:00:00"}]}, 422),  # no time zone
    ({"logs": [{**log_line("x"), "extra": 1}]}, 422),
    ({"logs": [log_line("x")] * 1001}, 422),
])
def test_a_bad_batch_is_refused_whole(server: RunningServer, body: dict[str, Any],
                                      status: int) -> None:
    run_id, _ = claimed_run(server)
    with server.client() as http:
        response = http.post(f"/flow-runs/{run_id}/events", json=body)
    assert response.status_code == status, response.text
    assert _stored_lines(server) == 0


def test_lines_of_an_unknown_run_are_refused(server: RunningServer) -> None:
    with server.client() as http:
        response = http.post("/flow-runs/6c1a3b1e-0000-4000-8000-000000000000/events",
                             json={"logs": [log_line("x")]})
    assert response.status_code == 404 and "not found" in response.json()["detail"]
    assert _stored_lines(server) == 0


def test_nul_characters_are_replaced_not_refused(server: RunningServer) -> None:
    run_id, _ = claimed_run(server)
    with server.client() as http:
        http.post(f"/flow-runs/{run_id}/events", json={"logs": [log_line("a\x00b")]}
                  ).raise_for_status()
        assert http.get(f"/flow-runs/{run_id}/logs").json()[0]["message"] == "a\ufffdb"


def _finish(server: RunningServer, run_id: str, token: int, **fields: Any) -> dict[str, Any]:
    with server.client() as http:
        response = http.post(f"/flow-runs/{run_id}/state", json={
            "state": "COMPLETED", "fencing_token": token, **fields})
    assert response.status_code == 200, response.text
    finished: dict[str, Any] = response.json()
    return finished


def test_the_final_report_keeps_the_agents_times_result_and_process_figures(
        server: RunningServer) -> None:
    run_id, token = claimed_run(server)
    ended_at = datetime.now(UTC) - timedelta(seconds=1)  # reported a second late (an outage)
    run = _finish(server, run_id, token, time=ended_at.isoformat(), result=[1, {"a": None}],
                  exit_code=0, cpu_seconds=0.25, peak_rss_bytes=30_000_000)
    assert datetime.fromisoformat(run["end_time"]) == ended_at
    assert datetime.fromisoformat(run["start_time"]) < ended_at - timedelta(seconds=3)
    assert run["result"] == [1, {"a": None}]
    assert (run["exit_code"], run["exit_signal"], run["cpu_seconds"], run["peak_rss_bytes"]) \
        == (0, None, 0.25, 30_000_000)
    shown = cli(server.url, "flow-run", "inspect", run_id)
    assert '[1, {"a": null}]' in shown.stdout and "exit code 0, 0.25 s CPU, peak 29 MiB" \
        in shown.stdout


def test_a_report_from_the_future_is_clamped_to_the_servers_clock(server: RunningServer) -> None:
    run_id, token = claimed_run(server)
    before = datetime.now(UTC)
    run = _finish(server, run_id, token, time=(before + timedelta(hours=1)).isoformat())
    assert before <= datetime.fromisoformat(run["end_time"]) <= datetime.now(UTC)


def test_cli_logs_prints_every_line_or_json_lines(server: RunningServer) -> None:
    run_id, _ = claimed_run(server)
    with server.client() as http:
        http.post(f"/flow-runs/{run_id}/events", json={"logs": [
            log_line("starting"), log_line("careful", level=30)]}).raise_for_status()
    text = cli(server.url, "flow-run", "logs", run_id)
    assert text.code == 0, text.stderr
    assert [line.split(" ", 2)[2] for line in text.stdout.splitlines()] == [
        "INFO     etl: starting", "WARNING  etl: careful"]
    as_json = cli(server.url, "flow-run", "logs", run_id, "--json")
    assert [json.loads(line)["message"] for line in as_json.stdout.splitlines()] == [
        "starting", "careful"]
    assert_user_error(cli(server.url, "flow-run", "logs", "6c1a3b1e-0000-4000-8000-"
                                                          "000000000000"), "not found")


def test_cli_logs_follow_prints_lines_as_they_come_and_stops_when_the_run_ends(
        server: RunningServer) -> None:
    run_id, token = claimed_run(server)
    follower = subprocess.Popen(
        [sys.executable, "-m", "ostinato.cli.main", "flow-run", "logs", run_id, "--follow"],
        env={**os.environ, "OSTINATO_API_URL": server.url}, stdout=subprocess.PIPE, text=True)
    assert follower.stdout is not None
    with server.client() as http:
        for n in range(3):
            http.post(f"/flow-runs/{run_id}/events", json={"logs": [log_line(f"step {n}")]})
            assert follower.stdout.readline().rstrip().endswith(f"etl: step {n}")
        http.post(f"/flow-runs/{run_id}/events", json={"logs": [log_line("last")]})
    _finish(server, run_id, token)
    started = time.monotonic()
    rest, _ = follower.communicate(timeout=10)
    assert follower.returncode == 0 and rest.rstrip().endswith("etl: last")
    assert time.monotonic() - started < 3


def test_logs_from_a_server_that_is_gone_is_one_line() -> None:
    unreachable = cli(f"http://127.0.0.1:{closed_port()}/api", "flow-run", "logs",
                      "6c1a3b1e-0000-4000-8000-000000000000")
    assert_user_error(unreachable, "cannot reach")
