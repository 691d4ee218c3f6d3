"""Helpers for tests that drive agents against a real server: create a run, then wait for it to
reach a state or its end. Every wait has a deadline, so a broken agent fails a test instead of
hanging it."""

from __future__ import annotations

import time
from typing import Any

from tests.conftest import RunningServer

ENDED = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def start_run(server: RunningServer, deployment: str, start_in: float = 0,
              **parameters: Any) -> str:
    """A manual run of `deployment` (flow/name), due in `start_in` seconds; its id."""
    with server.client() as client:
        response = client.post(f"/deployments/{deployment}/runs",
                               json={"parameters": parameters, "start_in": start_in})
    response.raise_for_status()
    run_id: str = response.json()["id"]
    return run_id


def ended(server: RunningServer, run_id: str, timeout: float = 30) -> dict[str, Any]:
    """The run once it has ended, with `history` (its state types, oldest first) and `message`
    (the message of its final state) added."""
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while time.monotonic() < deadline:
            run: dict[str, Any] = client.get(f"/flow-runs/{run_id}").json()
            if run["state"] in ENDED:
                states = client.get(f"/flow-runs/{run_id}/states").json()
                run["history"] = [s["type"] for s in states]
                run["message"] = states[-1]["message"]
                return run
            time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not end within {timeout} s")


def until_state(server: RunningServer, run_id: str, state: str, timeout: float = 20) -> float:
    """Wait for the run to be in `state`; when it was seen there (monotonic)."""
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while client.get(f"/flow-runs/{run_id}").json()["state"] != state:
            assert time.monotonic() < deadline, f"run {run_id} never {state}"
            time.sleep(0.02)
    return time.monotonic()
