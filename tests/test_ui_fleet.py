"""The work queues and agents pages (DESIGN.md §5, §6, §8) on a real server, on SQLite and
PostgreSQL: each queue's filter in words, priority, limit, depth, pause badge and polling
agents; one queue's matching deployments, preview, Pause/Resume; an unknown queue's 404; the
agents with their status, queues and held runs. And the filter's words, unit-tested."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from ostinato.deploy.protocol import ClaimRequest
from ostinato.deploy.schemas import WorkQueueFilter, WorkQueueSpec
from ostinato.deploy.states import StateType
from ostinato.queues import work_queues
from ostinato.queues.claims import acquire_runs
from ostinato.queues.database import Database
from ostinato.scheduler.ui.fleet import describe_filter
from tests.conftest import RunningServer
from tests.html_parts import Element
from tests.test_ui_dashboard import add_runs, deploy, page, register, run_links

S = StateType


@pytest.mark.parametrize(("fields", "words"), [
    ({}, "all runs"),
    ({"tags": ["etl"], "exclude_tags": ["slow"], "deployments": ["a/b"]},
     "runs tagged etl, not tagged slow, of deployment a/b"),
    ({"tags": ["etl", "daily"], "exclude_tags": ["slow", "big"]},
     "runs tagged etl and daily, not tagged slow or big"),
    ({"deployments": ["a/b", "c/d", "e/f"], "flows": ["etl"]},
     "runs of deployments a/b, c/d or e/f, of flow etl"),
    ({"flows": [f"f{n}" for n in range(8)]}, "runs of flows f0, f1, f2, f3, f4 or 3 more"),
])
def test_a_filter_in_words(fields: dict[str, Any], words: str) -> None:
    assert describe_filter(WorkQueueFilter(**fields)) == words


def add_queue(db: Database, name: str, **fields: Any) -> None:
    with db.write() as conn:
        work_queues.create(conn, WorkQueueSpec(name=name, **fields))


def seed_fleet(db: Database, now: datetime) -> dict[str, list[uuid.UUID]]:
    """Three deployments with due runs, three queues, an agent online and one gone."""
    due = [now - timedelta(minutes=n) for n in (3, 2)]
    seeded = {"etl": add_runs(db, deploy(db, "etl", tags=["etl"]), S.SCHEDULED, *due),
              "slow": add_runs(db, deploy(db, "slow", tags=["etl", "slow"]), S.SCHEDULED, due[0]),
              "other": add_runs(db, deploy(db, "other", flow="g"), S.SCHEDULED, due[0])}
    add_queue(db, "etl", filter={"tags": ["etl"], "exclude_tags": ["slow"]}, priority=1,
              concurrency_limit=5)
    add_queue(db, "all", paused=True)
    add_queue(db, "g-only", filter={"flows": ["g"]})
    register(db, "a1", now, ["etl", "all"])
    register(db, "gone", now - timedelta(hours=1), ["etl", "g-only"])
    return seeded


def queue_row(html: Element, name: str) -> dict[str, str]:
    row = html.by_id("work-queues").find_all("tr", data_queue=name)[0]
    return {cell.attrs.get("class", "name"): cell.text for cell in row.find_all("td")}


def test_work_queues_list(server: RunningServer) -> None:
    seed_fleet(server.database, datetime.now(UTC))

    html = page(server, "/work-queues")

    assert queue_row(html, "etl") == {
        "name": "etl", "filter": "runs tagged etl, not tagged slow", "priority": "1",
        "limit": "5 (0 held)", "depth": "2", "agents": "a1"}
    assert queue_row(html, "all") == {
        "name": "all paused", "filter": "all runs", "priority": "10", "limit": "none (0 held)",
        "depth": "4", "agents": "a1"}
    assert queue_row(html, "g-only")["depth"] == "1"
    assert queue_row(html, "g-only")["agents"] == "no agent online"  # gone is offline
    links = [a.attrs["href"] for a in html.by_id("work-queues").find_all("a")]
    assert "/work-queues/g-only" in links


def test_one_work_queue_with_its_deployments_runs_agents_and_pause(server: RunningServer
                                                                   ) -> None:
    seeded = seed_fleet(server.database, datetime.now(UTC))

    html = page(server, "/work-queues/etl")

    summary = html.by_id("queue-summary")
    assert summary.find_all(class_="filter")[0].text == "runs tagged etl, not tagged slow"
    assert summary.find_all(class_="depth")[0].text == "2"
    assert [(b.text, b.attrs["data-action"]) for b in summary.find_all("button")] == [
        ("Pause", "/api/work-queues/etl/pause")]
    assert html.by_id("flash").attrs["class"] == "flash"
    matching = html.by_id("queue-deployments").find_all("li")
    assert [li.attrs["data-deployment"] for li in matching] == ["f/etl"]
    assert run_links(html.by_id("queue-upcoming")) == [f"/runs/{i}" for i in seeded["etl"]]
    assert "a1" in html.by_id("queue-agents").text
    assert "gone" not in html.by_id("queue-agents").text

    with server.client() as client:
        assert client.post("/work-queues/etl/pause").status_code == 200
    summary = page(server, "/work-queues/etl").by_id("queue-summary")
    assert [b.text for b in summary.find_all("button")] == ["Resume"]
    assert summary.find_all(class_="badge paused")

    everything = page(server, "/work-queues/all")
    assert [li.attrs["data-deployment"] for li in everything.by_id("queue-deployments")
            .find_all("li")] == ["f/etl", "f/slow", "g/other"]


def test_an_unknown_work_queue_is_a_404_page(server: RunningServer) -> None:
    html = page(server, "/work-queues/nope", status=404)
    assert html.find_all("h1")[0].text == "Work queue not found"
    assert html.find_all(class_="error")[0].text == "work queue 'nope' not found"


def test_agents_with_status_queues_and_held_runs(server: RunningServer) -> None:
    db, now = server.database, datetime.now(UTC)
    seed_fleet(db, now)
    agent_id = register(db, "a1", now, ["etl", "all"])
    with db.write() as conn:
        claimed = acquire_runs(conn, ClaimRequest(agent_id=agent_id, queues=["etl"]),
                               lease=timedelta(seconds=30), now=now).runs
    assert len(claimed) == 1

    html = page(server, "/agents").by_id("agents")

    a1, gone = (html.find_all("tr", data_agent=name)[0] for name in ("a1", "gone"))
    assert a1.find_all(class_="badge online") and gone.find_all(class_="badge offline")
    assert "a1.example" in a1.text
    assert [a.attrs["href"] for a in gone.find_all("a")] == ["/work-queues/etl",
                                                             "/work-queues/g-only"]
    assert a1.find_all(class_="running")[0].text == "1"
    assert run_links(a1) == [f"/runs/{claimed[0].id}"]
    assert gone.find_all(class_="running")[0].text == "0" and run_links(gone) == []
    assert httpx.get(server.url + "/agents", timeout=10).json()[0]["running"] == 1
