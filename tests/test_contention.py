"""Contention: 16 claimer processes over HTTP against 2,500 due runs in overlapping queues with
limits. Every run is claimed exactly once, and no limit is exceeded at any moment — sampled while
the claimers run, and re-checked afterwards from the state history."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from ostinato.deploy.schemas import DeploymentSpec
from ostinato.deploy.states import CLAIMED_STATES
from ostinato.queues import deployments, runs
from ostinato.queues.database import Database, connect, json_array_contains
from ostinato.queues.tables import flow_run_states, flow_runs

RUNS = 2500
CLAIMERS = 16
QUEUES = [
    {"name": "tagged", "filter": {"tags": ["x"]}, "priority": 1, "concurrency_limit": 6},
    {"name": "plain", "filter": {"exclude_tags": ["x"]}, "priority": 1, "concurrency_limit": 4},
    {"name": "any", "filter": {}, "priority": 5, "concurrency_limit": 10},
]
QUEUE_LIMITS = {q["name"]: q["concurrency_limit"] for q in QUEUES}
TAG_LIMITS = {"y": 5}
RUN_TAGS = [["x"], ["x", "y"], ["y"], []]
CLAIMER_QUEUES = [["tagged", "any"], ["plain", "any"], ["tagged", "plain"], ["any"]]
CLAIMED = [state.value for state in CLAIMED_STATES]
CLAIMER = Path(__file__).with_name("claimer.py")


def _ok(response: httpx.Response) -> Any:
    assert response.is_success, f"{response.status_code} {response.text}"
    return response.json()


def _prepare(url: str, database: Database) -> None:
    with httpx.Client(base_url=url) as client:
        for queue in QUEUES:
            _ok(client.post("/work-queues", json=queue))
        for tag, limit in TAG_LIMITS.items():
            _ok(client.put("/concurrency-limits", json={"tag": tag, "limit": limit}))
    with database.write() as conn:
        deployments.apply(conn, [DeploymentSpec(flow="etl", name="bulk", entrypoint="f.py:etl",
                                                path="/srv")])
        deployment = deployments.get(conn, "etl/bulk")
        start = datetime.now(UTC) - timedelta(minutes=1)
        runs.insert_runs(conn, [runs.new_run_values(
            name=f"bulk-{i}", flow_name="etl", deployment_id=deployment.id,
            deployment_name="etl/bulk", schedule_slug=None, nominal_time=start,
            scheduled_time=start + timedelta(milliseconds=i), parameters={},
            tags=RUN_TAGS[i % len(RUN_TAGS)], auto_scheduled=False) for i in range(RUNS)])


def _sample(database: Database) -> dict[str, int]:
    """How many runs hold a slot of each queue and of each limited tag, right now."""
    c = flow_runs.c
    with database.read() as conn:
        holding = c.state.in_(CLAIMED)
        counts = dict(conn.execute(select(c.work_queue, func.count()).where(holding)
                                   .group_by(c.work_queue)).all())
        for tag in TAG_LIMITS:
            contains = json_array_contains(conn.dialect.name, c.tags, tag)
            counts[f"tag:{tag}"] = conn.execute(select(func.count()).where(holding, contains)
                                                ).scalar_one()
    return counts


def _limits() -> dict[str, int]:
    return {**QUEUE_LIMITS, **{f"tag:{tag}": limit for tag, limit in TAG_LIMITS.items()}}


def _completed(database: Database) -> int:
    with database.read() as conn:
        return int(conn.execute(select(func.count()).where(flow_runs.c.state == "COMPLETED")
                                ).scalar_one())


def _peaks_from_history(database: Database) -> dict[str, int]:
    """Replay every claim (PENDING) and end (COMPLETED) in time order: the most runs each
    queue and limited tag held at once."""
    s, c = flow_run_states.c, flow_runs.c
    with database.read() as conn:
        events = conn.execute(
            select(s.timestamp, s.type, c.work_queue, c.tags).join(flow_runs, c.id == s.flow_run_id)
            .where(s.type.in_(["PENDING", "COMPLETED"]))).all()
    held: Counter[str] = Counter()
    peaks: Counter[str] = Counter()
    # At one instant an end is counted before a claim: the claim counted after the end.
    for event in sorted(events, key=lambda e: (e.timestamp, e.type == "PENDING")):
        step = 1 if event.type == "PENDING" else -1
        for name in [event.work_queue, *(f"tag:{t}" for t in event.tags if t in TAG_LIMITS)]:
            held[name] += step
            peaks[name] = max(peaks[name], held[name])
    return dict(peaks)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_claimers_in_processes_claim_every_run_once_within_every_limit(
        server_process: str, database_url: str, tmp_path: Path) -> None:
    api = server_process
    database = connect(database_url)
    stop = tmp_path / "stop"
    try:
        _prepare(api, database)
        claimers = [_start_claimer(api, i, stop, tmp_path) for i in range(CLAIMERS)]
        sampled_peaks = _watch(database, claimers)
        stop.touch()
        codes = [process.wait(timeout=60) for process, _ in claimers]
        peaks = _peaks_from_history(database)
        pending_entries = _pending_entries_per_run(database)
    finally:
        stop.touch()
        database.dispose()
    assert codes == [0] * CLAIMERS
    claimed = [run_id for _, out in claimers for run_id in json.loads(out.read_text())["claimed"]]
    assert len(claimed) == RUNS and len(set(claimed)) == RUNS
    assert set(pending_entries.values()) == {1}, "a run was claimed more than once"
    limits = _limits()
    assert all(sampled_peaks.get(name, 0) <= limit for name, limit in limits.items())
    assert all(peaks[name] <= limit for name, limit in limits.items()), (peaks, limits)
    assert any(peaks[name] == limit for name, limit in limits.items()), "no limit was reached"


def _start_claimer(api: str, number: int, stop: Path, folder: Path
                   ) -> tuple[subprocess.Popen[bytes], Path]:
    """A claimer process on its share of the queues: claims 4 at a time, long-polling while
    limits are full, and takes each run through RUNNING to COMPLETED."""
    out = folder / f"claimer-{number}.json"
    queues = [arg for q in CLAIMER_QUEUES[number % len(CLAIMER_QUEUES)] for arg in ("-q", q)]
    command = [sys.executable, str(CLAIMER), api, f"claimer-{number}", *queues, "--limit", "4",
               "--wait", "1", "--finish", "--stop-file", str(stop), "--out", str(out)]
    return subprocess.Popen(command), out


def _watch(database: Database, claimers: list[tuple[subprocess.Popen[bytes], Path]]
           ) -> dict[str, int]:
    """Sample the held slots until every run has completed; fail as soon as a limit is
    exceeded or a claimer dies."""
    limits = _limits()
    peaks: dict[str, int] = defaultdict(int)
    deadline = time.monotonic() + 300
    while _completed(database) < RUNS:
        assert time.monotonic() < deadline, f"only {_completed(database)} of {RUNS} completed"
        assert all(p.poll() is None for p, _ in claimers), "a claimer died"
        for name, count in _sample(database).items():
            assert count <= limits.get(str(name), RUNS), f"{name} holds {count} runs"
            peaks[str(name)] = max(peaks[str(name)], count)
        time.sleep(0.02)
    return dict(peaks)


def _pending_entries_per_run(database: Database) -> dict[Any, int]:
    s = flow_run_states.c
    with database.read() as conn:
        rows = conn.execute(select(s.flow_run_id, func.count()).where(s.type == "PENDING")
                            .group_by(s.flow_run_id)).all()
    counts = {run_id: int(n) for run_id, n in rows}
    assert len(counts) == RUNS
    return counts
