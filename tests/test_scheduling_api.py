"""`upcoming` and `backfill` over real HTTP, and the scheduler loops inside a real server."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import func, select

from ostinato.deploy.schemas import DeploymentSpec
from ostinato.queues import bundles, deployments
from ostinato.queues.database import Database
from ostinato.queues.tables import flow_runs
from ostinato.scheduler.loops import SchedulerLoops
from tests.conftest import RunningServer

BUNDLE = b"flows"
SHA = hashlib.sha256(BUNDLE).hexdigest()


def _create(client: httpx.Client, *schedules: dict[str, Any], **fields: Any) -> None:
    client.put(f"/bundles/{SHA}", content=BUNDLE).raise_for_status()
    spec = {"flow": "etl", "name": "nightly", "entrypoint": "f.py:etl", "bundle": SHA,
            "schedules": list(schedules), **fields}
    client.put("/deployments", json={"deployments": [spec]}).raise_for_status()


def test_upcoming_merges_schedules_and_flags_dst(server: RunningServer) -> None:
    with server.client() as client:
        _create(client, {"kind": "cron", "cron": "30 2 * * *", "timezone": "America/New_York",
                         "slug": "night"},
                {"kind": "cron", "cron": "0 12 * * *", "timezone": "UTC", "slug": "noon"})
        response = client.get("/deployments/etl/nightly/upcoming",
                              params={"n": 4, "after": "2026-03-07T12:00:00Z"})
    assert response.status_code == 200
    got = [(i["scheduled_time"], i["schedule"], i["dst"]) for i in response.json()]
    assert got == [
        ("2026-03-08T07:00:00Z", "night", "shifted"),  # 02:30 is in the gap: runs at 03:00 EDT
        ("2026-03-08T12:00:00Z", "noon", None),
        ("2026-03-09T06:30:00Z", "night", None),
        ("2026-03-09T12:00:00Z", "noon", None),
    ]
    assert response.json()[0]["local_time"] == "2026-03-08T03:00:00-04:00"


def test_backfill_dry_run_lists_exactly_what_the_real_one_creates(server: RunningServer) -> None:
    window = {"start": "2026-01-01T00:00:00Z", "end": "2026-01-01T05:00:00Z"}
    with server.client() as client:
        _create(client, {"kind": "cron", "cron": "0 * * * *"}, parameters={})
        dry = client.post("/deployments/etl/nightly/backfill", json={**window, "dry_run": True})
        runs_after_dry = client.get("/flow-runs").json()
        real = client.post("/deployments/etl/nightly/backfill", json=window)
        again = client.post("/deployments/etl/nightly/backfill", json=window)
        runs = client.get("/flow-runs", params={"deployment": "etl/nightly"}).json()
    assert dry.status_code == real.status_code == again.status_code == 200
    assert runs_after_dry == []
    assert [r["scheduled_time"] for r in dry.json()["runs"]] == [
        f"2026-01-01T0{h}:00:00Z" for h in range(6)]
    assert dry.json()["runs"] == real.json()["runs"]
    assert sorted(r["scheduled_time"] for r in runs) == [
        r["scheduled_time"] for r in real.json()["runs"]]
    assert all(not r["auto_scheduled"] for r in runs)
    assert again.json()["runs"] == [] and again.json()["already_present"] == 6


def test_backfill_refuses_a_reversed_window_and_an_unknown_deployment(server: RunningServer
                                                                      ) -> None:
    with server.client() as client:
        _create(client, {"kind": "cron", "cron": "0 * * * *"})
        reversed_window = client.post("/deployments/etl/nightly/backfill", json={
            "start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"})
        unknown = client.post("/deployments/etl/nope/backfill", json={
            "start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z"})
        runs = client.get("/flow-runs").json()
    assert reversed_window.status_code == 422
    assert "ends before it starts" in reversed_window.json()["detail"]
    assert unknown.status_code == 404
    assert runs == []


def test_the_loops_materialise_and_stop_quickly(database: Database) -> None:
    with database.write() as conn:
        bundles.put(conn, SHA, BUNDLE, max_bytes=1000)
        deployments.apply(conn, [DeploymentSpec(
            flow="etl", name="n", entrypoint="f.py:etl", bundle=SHA,
            schedules=[{"kind": "interval", "every": 60}])])  # type: ignore[list-item]
    loops = SchedulerLoops(database, interval=0.2)
    loops.start()
    deadline = time.monotonic() + 10
    try:
        while _count_runs(database) == 0:
            assert time.monotonic() < deadline, "no run materialised within 10 s"
            time.sleep(0.05)
    finally:
        started = time.monotonic()
        loops.stop()
        loops.stop()  # idempotent
    assert time.monotonic() - started < 2
    assert loops.wait(timeout=0)


def _count_runs(database: Database) -> int:
    with database.read() as conn:
        return int(conn.execute(select(func.count()).select_from(flow_runs)).scalar_one())


def test_late_runs_read_as_late_but_stay_scheduled(server: RunningServer) -> None:
    with server.client() as client:
        _create(client)
        past = (datetime.now(UTC) - timedelta(seconds=30)).isoformat()
        client.post("/deployments/etl/nightly/runs", json={"scheduled_time": past})
        soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
        client.post("/deployments/etl/nightly/runs", json={"scheduled_time": soon})
        runs = client.get("/flow-runs").json()
    assert [(r["state"], r["state_name"]) for r in runs] == [
        ("SCHEDULED", "Scheduled"), ("SCHEDULED", "Late")]


def test_times_outside_any_schedule_and_deep_schedule_parameters_are_422s(
        server: RunningServer) -> None:
    deep: dict[str, Any] = {}
    for _ in range(40):
        deep = {"a": deep}
    with server.client() as client:
        _create(client, {"kind": "interval", "every": 86400, "timezone": "America/New_York"})
        early = client.post("/deployments/etl/nightly/backfill", json={
            "start": "0001-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"})
        upcoming = client.get("/deployments/etl/nightly/upcoming",
                              params={"after": "0001-01-01T00:00:00Z"})
        nested = client.put("/deployments", json={"deployments": [{
            "flow": "etl", "name": "deep", "entrypoint": "f.py:etl", "bundle": SHA,
            "schedules": [{"kind": "cron", "cron": "* * * * *", "parameters": deep}]}]})
        listing = client.get("/flow-runs")
    assert early.status_code == 422 and "outside the years" in early.json()["detail"]
    assert upcoming.status_code == 422 and "outside the years" in upcoming.json()["detail"]
    assert nested.status_code == 422 and "nested more than 32" in nested.json()["detail"]
    assert listing.status_code == 200
