"""`ostinato up deploy/examples/hello.py` as a real process: the example's runs complete — one
made now, and one its every-minute schedule makes — and Ctrl-C stops everything with exit code 0,
leaving no run claimed or running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from ostinato.deploy.states import CLAIMED_STATES
from ostinato.queues.database import connect
from ostinato.queues.tables import flow_runs
from tests.conftest import exit_status_after, free_port

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "examples" / "hello.py"
DEPLOYMENT = "/deployments/hello/every-minute"
DRAIN_SECONDS = 10
STOP_SECONDS = DRAIN_SECONDS + 5  # a stop takes at most the drain, then the server's own stop


@dataclass
class Up:
    """One `ostinato up` process; its stdout and stderr go to `log`."""

    process: subprocess.Popen[bytes]
    api: httpx.Client
    home: Path
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def run_state(self, run_id: str) -> str:
        return str(self.api.get(f"/flow-runs/{run_id}").json()["state"])

    def interrupt(self) -> int:
        """Ctrl-C, then the exit status; fails if the process needs more than STOP_SECONDS."""
        return exit_status_after(self.process, signal.SIGINT, STOP_SECONDS, self.log)

    def claimed_or_running(self) -> list[str]:
        """Runs left PENDING, RUNNING or CANCELLING in the database (read once it has exited)."""
        database = connect(f"sqlite:///{self.home / 'ostinato.db'}")
        claimed = [state.value for state in CLAIMED_STATES]
        try:
            with database.read() as conn:
                query = select(flow_runs.c.name).where(flow_runs.c.state.in_(claimed))
                return list(conn.scalars(query))
        finally:
            database.dispose()


@pytest.fixture
def up(tmp_path: Path) -> Iterator[Up]:
    """`ostinato up` with the example, on SQLite in a fresh OSTINATO_HOME, once it has
    registered the example's deployment; killed after the test if still running."""
    port, home, log = free_port(), tmp_path / "home", tmp_path / "up.log"
    env = {**os.environ, "OSTINATO_HOME": str(home), "OSTINATO_LOG_LEVEL": "warning"}
    env.pop("OSTINATO_DATABASE_URL", None)
    command = [sys.executable, "-m", "ostinato.cli.main", "up", str(EXAMPLE), "--port", str(port),
               "--drain-timeout", str(DRAIN_SECONDS)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=10)
    running = Up(process, api, home, log)
    try:
        wait_until(lambda: _registered(running), 30, "the example's deployment registered",
                   running)
        yield running
    finally:
        api.close()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _registered(up: Up) -> bool:
    assert up.process.poll() is None, f"ostinato up exited early:\n{up.output()}"
    try:
        return up.api.get(DEPLOYMENT).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(condition: Callable[[], Any], seconds: float, what: str, up: Up) -> Any:
    """The first truthy value of `condition`, polled until the deadline."""
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s\n{up.output()}"
        time.sleep(0.1)
    return value


def assert_stops_cleanly(up: Up) -> None:
    assert up.interrupt() == 0, up.output()
    assert up.claimed_or_running() == []
    assert "Traceback" not in up.output(), up.output()


def test_a_run_made_now_completes_and_ctrl_c_stops_everything(up: Up) -> None:
    run_id = up.api.post(f"{DEPLOYMENT}/runs", json={}).json()["id"]
    wait_until(lambda: up.run_state(run_id) == "COMPLETED", 30, "the manual run completed", up)
    assert up.api.get(f"/flow-runs/{run_id}").json()["result"] == 26  # "Hello, Ostinato!" × 2
    logs = [line["message"] for line in up.api.get(f"/flow-runs/{run_id}/logs").json()]
    assert logs == ["Hello, Ostinato!", "Hello, Ostinato!", "wrote 26 letters"]
    assert "Ostinato is up: API at" in up.output()
    assert_stops_cleanly(up)


def _completed_scheduled_run(up: Up) -> str | None:
    runs = up.api.get("/flow-runs", params={"state": "COMPLETED"}).json()
    return next((run["id"] for run in runs if run["auto_scheduled"]), None)


@pytest.mark.slow
def test_the_example_schedule_makes_a_run_that_completes_within_a_minute(up: Up) -> None:
    run_id = wait_until(lambda: _completed_scheduled_run(up), 75, "a scheduled run completed", up)
    listing = subprocess.run(
        [sys.executable, "-m", "ostinato.cli.main", "flow-run", "ls", "--state", "COMPLETED"],
        env={**os.environ, "OSTINATO_API_URL": str(up.api.base_url)}, capture_output=True,
        text=True, timeout=30)
    assert run_id in listing.stdout, listing.stdout + listing.stderr
    assert_stops_cleanly(up)
