"""Claims over real HTTP: long polls that wake when work appears or falls due, hold no thread
and no connection while they wait, and leases that run out when an agent goes silent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from ostinato.deploy.schemas import DeploymentSpec, ManualRunRequest
from ostinato.deploy.settings import Settings
from ostinato.queues import deployments
from ostinato.queues.database import Database, WorkNotice, connect
from ostinato.queues.notify import WorkNotifier
from tests.conftest import RunningServer, free_port, serving

DEPLOYMENT = "etl/nightly"
DEFAULT = frozenset({"default"})


@pytest.fixture
def agent(server: RunningServer) -> str:
    """A registered agent polling the `default` queue (which takes every run)."""
    return _set_up(server)


def _set_up(server: RunningServer) -> str:
    with server.database.write() as conn:
        deployments.apply(conn, [DeploymentSpec(flow="etl", name="nightly",
                                                entrypoint="flows.py:etl", path="/srv/flows")])
    with server.client() as client:
        client.post("/work-queues", json={"name": "default"}).raise_for_status()
        registered = client.post("/agents", json={"name": "a1", "host": "h",
                                                  "queues": ["default"]})
    registered.raise_for_status()
    agent_id: str = registered.json()["id"]
    return agent_id


def _claim(server: RunningServer, agent_id: str, *, timeout: float = 30, **fields: Any
           ) -> list[dict[str, Any]]:
    body = {"agent_id": agent_id, "queues": ["default"], **fields}
    with httpx.Client(base_url=server.url, timeout=timeout) as client:
        response = client.post("/claims", json=body)
    response.raise_for_status()
    claimed: list[dict[str, Any]] = response.json()
    return claimed


def _run_now(server: RunningServer, **fields: Any) -> dict[str, Any]:
    with server.client() as client:
        response = client.post(f"/deployments/{DEPLOYMENT}/runs", json=fields)
    response.raise_for_status()
    run: dict[str, Any] = response.json()
    return run


def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=120) as executor:
        yield executor


def _waiting(server: RunningServer) -> int:
    waiting: int = server.app.state.notifier.waiting
    return waiting


def test_a_waiting_poll_gets_a_run_created_meanwhile(server: RunningServer, agent: str,
                                                      pool: ThreadPoolExecutor) -> None:
    poll = pool.submit(_claim, server, agent, wait_seconds=20)
    _until(lambda: _waiting(server) == 1)
    created = _run_now(server)
    started = time.monotonic()
    claimed = poll.result(timeout=10)
    assert [run["id"] for run in claimed] == [created["id"]]
    assert claimed[0]["state"] == "PENDING" and claimed[0]["fencing_token"] == 1
    assert time.monotonic() - started < 5, "woken by the commit, not by the end of the wait"


def test_a_waiting_poll_gets_a_run_when_it_falls_due(server: RunningServer, agent: str) -> None:
    created = _run_now(server, start_in=1.5)
    due = datetime.fromisoformat(created["scheduled_time"])
    claimed = _claim(server, agent, wait_seconds=20)
    handed_out = datetime.now(UTC)
    assert [run["id"] for run in claimed] == [created["id"]]
    assert due <= handed_out < due + timedelta(seconds=5)


def test_prefetch_hands_out_a_run_before_its_time(server: RunningServer, agent: str) -> None:
    soon = _run_now(server, start_in=30)
    _run_now(server, start_in=120)
    claimed = _claim(server, agent, prefetch_seconds=60, limit=5)
    assert [run["id"] for run in claimed] == [soon["id"]]
    assert datetime.fromisoformat(claimed[0]["scheduled_time"]) > datetime.now(UTC)


def test_idle_polls_hold_no_thread_and_no_connection(server: RunningServer, agent: str,
                                                      pool: ThreadPoolExecutor) -> None:
    # Long enough that none ends while a loaded machine is still registering the others.
    polls = [pool.submit(_claim, server, agent, wait_seconds=12) for _ in range(100)]
    connections = server.database.engine.pool
    # Registered, tried once, and now waiting with no connection checked out.
    _until(lambda: _waiting(server) == 100 and connections.checkedout() == 0,  # type: ignore
           timeout=20)
    started = time.monotonic()
    with server.client() as client:  # served by a worker thread: there must be one free
        assert client.get("/health").status_code == 200
    assert time.monotonic() - started < 2
    assert _waiting(server) == 100 and not any(poll.done() for poll in polls)
    created = _run_now(server)
    results = [poll.result(timeout=30) for poll in polls]
    winners = [claimed for claimed in results if claimed]
    assert [[run["id"] for run in claimed] for claimed in winners] == [[created["id"]]]


def test_a_poll_whose_client_left_claims_nothing(server: RunningServer, agent: str) -> None:
    with pytest.raises(httpx.ReadTimeout):
        _claim(server, agent, wait_seconds=20, timeout=0.5)
    created = _run_now(server)
    time.sleep(1)
    with server.client() as client:
        assert client.get(f"/flow-runs/{created['id']}").json()["state"] == "SCHEDULED"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_run_committed_by_another_process_wakes_the_poll(
        server: RunningServer, agent: str, database_url: str, pool: ThreadPoolExecutor) -> None:
    poll = pool.submit(_claim, server, agent, wait_seconds=20)
    _until(lambda: _waiting(server) == 1)
    elsewhere = connect(database_url)  # not the server's: only NOTIFY can tell it
    try:
        with elsewhere.write() as conn:
            created = deployments.create_manual_run(conn, DEPLOYMENT, ManualRunRequest())
        started = time.monotonic()
        claimed = poll.result(timeout=15)
    finally:
        elsewhere.dispose()
    assert [run["id"] for run in claimed] == [str(created.id)]
    assert time.monotonic() - started < 5


def test_a_notice_wakes_as_many_polls_as_it_has_work_for() -> None:
    async def scenario() -> list[list[bool]]:
        notifier = WorkNotifier(asyncio.get_running_loop())
        now = datetime.now(UTC)
        with ExitStack() as stack:
            waiters = [stack.enter_context(notifier.waiter(DEFAULT, timedelta(seconds=10)))
                       for _ in range(4)]
            for waiter in waiters:
                waiter.wakes_at = now + timedelta(seconds=30)
            woken = []
            notifier._wake(WorkNotice(now + timedelta(minutes=5), count=1))  # due after all
            woken.append([w.future.done() for w in waiters])
            notifier._wake(WorkNotice(now + timedelta(seconds=35), count=2))  # within prefetch
            woken.append([w.future.done() for w in waiters])
            notifier.pass_on(waiters[1].baton, waiters[1], found_nothing=False)  # type: ignore
            woken.append([w.future.done() for w in waiters])
            notifier._wake(WorkNotice())  # unknown count: every poll still asleep
            woken.append([w.future.done() for w in waiters])
        return woken

    assert asyncio.run(scenario()) == [
        [False, False, False, False],
        [True, True, False, False],  # the two longest waiting
        [True, True, True, False],  # a full batch: passed on to the next
        [True, True, True, True],
    ]


def test_a_wake_found_useless_skips_polls_of_the_same_queues() -> None:
    async def scenario() -> list[str]:
        notifier = WorkNotifier(asyncio.get_running_loop())
        other = frozenset({"other"})
        with ExitStack() as stack:
            polls = {name: stack.enter_context(notifier.waiter(queues, timedelta()))
                     for name, queues in [("a1", DEFAULT), ("a2", DEFAULT), ("b1", other),
                                          ("b2", other)]}
            notifier._wake(WorkNotice(count=1))
            baton = polls["a1"].baton
            assert baton is not None
            notifier.pass_on(baton, polls["a1"], found_nothing=True)  # to b1, not a2
            baton = polls["b1"].baton
            assert baton is not None and baton.tried == {DEFAULT}
            notifier.pass_on(baton, polls["b1"], found_nothing=True)  # every set tried: stop
            return [name for name, poll in polls.items() if poll.future.done()]

    assert asyncio.run(scenario()) == ["a1", "b1"]


def test_holder_reports_are_fenced(server: RunningServer, agent: str) -> None:
    created = _run_now(server)
    [claimed] = _claim(server, agent)
    token = claimed["fencing_token"]
    with server.client() as client:
        beat = client.post(f"/agents/{agent}/heartbeat",
                           json={"runs": [{"id": created["id"], "fencing_token": token}]})
        stale = client.post(f"/flow-runs/{created['id']}/state",
                            json={"state": "RUNNING", "fencing_token": token - 1})
        history_before = client.get(f"/flow-runs/{created['id']}/states").json()
        running = client.post(f"/flow-runs/{created['id']}/state",
                              json={"state": "RUNNING", "fencing_token": token})
        done = client.post(f"/flow-runs/{created['id']}/state",
                           json={"state": "COMPLETED", "fencing_token": token})
        again = client.post(f"/flow-runs/{created['id']}/state",
                            json={"state": "COMPLETED", "fencing_token": token})
    assert beat.status_code == 200 and beat.json()["lost"] == []
    assert stale.status_code == 409 and "stale" in stale.json()["detail"]
    assert [s["type"] for s in history_before] == ["SCHEDULED", "PENDING"]
    assert running.json()["state"] == "RUNNING" and running.json()["start_time"]
    assert done.json()["state"] == "COMPLETED" and done.json()["end_time"]
    assert again.status_code == 409


def test_a_silent_agent_loses_its_runs_within_lease_and_a_reaper_interval(
        database: Database, tmp_path: Path) -> None:
    lease, interval = 1.5, 0.5
    settings = Settings(home=tmp_path, port=free_port(), lease_seconds=lease,
                        scheduler_interval_seconds=interval)
    with serving(database, settings) as server:
        agent_id = _set_up(server)
        first, second = _run_now(server), _run_now(server)
        claimed = {run["id"]: run for run in _claim(server, agent_id, limit=2)}
        with server.client() as client:
            client.post(f"/flow-runs/{second['id']}/state", json={
                "state": "RUNNING", "fencing_token": claimed[second["id"]]["fencing_token"]})
        changed = _times_of_change(server, {first["id"]: "PENDING", second["id"]: "RUNNING"})
    expires = datetime.fromisoformat(claimed[first["id"]]["lease_expires"])
    for run_id, (*_, when) in changed.items():
        assert when - expires < timedelta(seconds=interval + 1.0), run_id
    assert changed[first["id"]][:2] == ("SCHEDULED", "lease_expired")
    assert changed[second["id"]][:2] == ("CRASHED", "lease_expired")


def _times_of_change(server: RunningServer, states: dict[str, str]
                     ) -> dict[str, tuple[str, str, datetime]]:
    """Watch runs until each has left the given state: its new state, reason and when."""
    changed: dict[str, tuple[str, str, datetime]] = {}
    deadline = time.monotonic() + 15
    with server.client() as client:
        while len(changed) < len(states):
            assert time.monotonic() < deadline, f"still held: {set(states) - set(changed)}"
            for run_id, state in states.items():
                run = client.get(f"/flow-runs/{run_id}").json()
                if run_id not in changed and run["state"] != state:
                    changed[run_id] = (run["state"], run["reason"], datetime.now(UTC))
            time.sleep(0.02)
    return changed

