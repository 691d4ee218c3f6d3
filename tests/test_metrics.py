"""`/metrics` (DESIGN.md §8) on a real server, on SQLite and PostgreSQL: the store's gauges
count what the store holds, the claim route times its attempts, and the scheduler loops report
their passes and what the reaper did. The exposition is read back with prometheus_client's own
parser."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ostinato.deploy.protocol import AgentRegistration, ClaimRequest, StateReport
from ostinato.deploy.schemas import Deployment, DeploymentSpec, WorkQueueSpec
from ostinato.deploy.settings import Settings
from ostinato.deploy.states import StateType
from ostinato.queues import agents, deployments, leases, runs, work_queues
from ostinato.queues.claims import acquire_runs
from ostinato.queues.database import Database, connect
from ostinato.scheduler.metrics import StoreCollector
from tests.conftest import RunningServer, free_port, serving

S = StateType
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: RunningServer) -> Samples:
    response = httpx.get(server.url.removesuffix("/api") + "/metrics", timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def deploy(db: Database, name: str, **fields: Any) -> Deployment:
    spec = DeploymentSpec(flow="f", name=name, entrypoint="f.py:f", path="/srv/f", **fields)
    with db.write() as conn:
        return deployments.apply(conn, [spec]).deployments[0]


def add_runs(db: Database, deployment: Deployment, *times: datetime) -> list[uuid.UUID]:
    values = [runs.new_run_values(
        name=f"run-{uuid.uuid4().hex[:8]}", flow_name=deployment.flow,
        deployment_id=deployment.id, deployment_name=deployment.name, schedule_slug=None,
        nominal_time=when, scheduled_time=when, parameters={}, auto_scheduled=False,
        tags=deployment.tags) for when in times]
    with db.write() as conn:
        runs.insert_runs(conn, values)
    return [row["id"] for row in values]


def add_queue(db: Database, name: str, **fields: Any) -> None:
    with db.write() as conn:
        work_queues.create(conn, WorkQueueSpec(name=name, **fields))


def register(db: Database, name: str, when: datetime) -> uuid.UUID:
    registration = AgentRegistration(name=name, host="host", queues=["etl"])
    with db.write() as conn:
        return agents.register(conn, registration, when, timedelta(seconds=30)).id


def test_store_gauges_and_claim_latency(server: RunningServer) -> None:
    db, now = server.database, datetime.now(UTC)
    etl = deploy(db, "etl", tags=["etl"])
    add_runs(db, etl, *(now - timedelta(minutes=n) for n in (3, 2, 1)))
    future = add_runs(db, etl, now + timedelta(hours=1))[0]
    add_runs(db, deploy(db, "other"), now - timedelta(seconds=1))  # due, not yet late
    add_runs(db, deploy(db, "held", tags=["etl"], paused=True), now - timedelta(minutes=1))
    add_queue(db, "etl", filter={"tags": ["etl"]})
    add_queue(db, "all")
    add_queue(db, "none", filter={"flows": ["nope"]}, paused=True)
    with db.write() as conn:
        leases.cancel(conn, future, actor="test", now=now)
    register(db, "gone", now - timedelta(hours=1))
    before = scrape(server)

    with server.client() as client:
        agent = client.post("/agents", json={"name": "a1", "host": "h", "queues": ["etl"]})
        claimed = client.post("/claims", json={"agent_id": agent.json()["id"],
                                               "queues": ["etl"]})
    after = scrape(server)

    assert claimed.status_code == 200 and len(claimed.json()) == 1, claimed.text
    counts = {state: value(after, "ostinato_flow_runs", state=state.value) for state in S}
    assert counts == {**dict.fromkeys(S, 0), S.SCHEDULED: 4, S.PENDING: 1, S.CANCELLED: 1}
    assert value(after, "ostinato_flow_runs_late") == 3  # etl's two left, and held's
    # etl's two left (held's deployment is paused); all: those and other's; none: nothing
    assert {q: value(after, "ostinato_work_queue_depth", queue=q) for q in ("etl", "all", "none")
            } == {"etl": 2, "all": 3, "none": 0}
    assert value(before, "ostinato_agents_online") == 0
    assert value(after, "ostinato_agents_online") == 1
    assert value(before, "ostinato_claim_duration_seconds_count") == 0
    assert value(after, "ostinato_claim_duration_seconds_count") == 1
    assert 0 < value(after, "ostinato_claim_duration_seconds_sum") < 10


def test_scheduler_passes_and_reaper_actions(database: Database, tmp_path: Path) -> None:
    deployment = deploy(database, "etl", tags=["etl"])
    add_runs(database, deployment, *(datetime.now(UTC) - timedelta(minutes=n) for n in (2, 1)))
    add_queue(database, "etl")
    agent_id = register(database, "a1", datetime.now(UTC))
    expired = claim_both_with_expired_leases(database, agent_id)
    report = StateReport(state=S.RUNNING, fencing_token=expired[0].fencing_token)
    with database.write() as conn:
        leases.report_state(conn, expired[0].id, report, now=datetime.now(UTC))
    settings = Settings(home=tmp_path / "home", port=free_port(), run_scheduler=True,
                        scheduler_interval_seconds=0.1)

    with serving(database, settings) as server:
        samples = scrape_until(server, lambda s: s[("ostinato_reaper_actions_total",
                                                    (("action", "crashed"),))] >= 1)

    assert value(samples, "ostinato_reaper_actions_total", action="crashed") == 1
    assert value(samples, "ostinato_reaper_actions_total", action="returned_to_queue") == 1
    for loop in ("materialize", "catch_up", "reap"):
        assert value(samples, "ostinato_scheduler_tick_duration_seconds_count", loop=loop) > 0
        assert 0 <= value(samples, "ostinato_scheduler_tick_lag_seconds", loop=loop) < 5


def claim_both_with_expired_leases(db: Database, agent_id: uuid.UUID) -> list[Any]:
    request = ClaimRequest(agent_id=agent_id, queues=["etl"], limit=2)
    with db.write() as conn:
        outcome = acquire_runs(conn, request, lease=-timedelta(seconds=1), now=datetime.now(UTC))
    assert len(outcome.runs) == 2
    return outcome.runs


def scrape_until(server: RunningServer, done: Any, timeout: float = 10) -> Samples:
    deadline = time.monotonic() + timeout
    while not done(samples := scrape(server)):
        assert time.monotonic() < deadline, f"not reached within {timeout} s: {samples}"
        time.sleep(0.05)
    return samples


def test_an_unreadable_store_leaves_the_process_metrics_served(tmp_path: Path) -> None:
    database = connect(f"sqlite:///{tmp_path}")  # a directory: SQLite cannot open it
    try:
        assert list(StoreCollector(database, Settings()).collect()) == []
    finally:
        database.dispose()
