"""The dashboard (`/`, DESIGN.md §8) on a real server, on SQLite and PostgreSQL: the chart's
segments are the seeded runs counted by state and scheduled hour, late runs oldest first, the
next runs in order, the agents online; and the chart's scale, unit-tested."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from ostinato.deploy.protocol import AgentRegistration
from ostinato.deploy.schemas import Deployment, DeploymentSpec
from ostinato.deploy.states import StateType
from ostinato.queues import agents, deployments, runs
from ostinato.queues.database import Database
from ostinato.scheduler.ui.dashboard import build_chart, chart_hours, scale
from tests.conftest import RunningServer
from tests.html_parts import Element, parse

S = StateType
MINUTE = timedelta(minutes=1)


def deploy(db: Database, name: str, flow: str = "f", **fields: Any) -> Deployment:
    spec = DeploymentSpec(flow=flow, name=name, entrypoint="f.py:f", path="/srv/f", **fields)
    with db.write() as conn:
        return deployments.apply(conn, [spec]).deployments[0]


def add_runs(db: Database, deployment: Deployment, state: StateType, *times: datetime,
             **columns: Any) -> list[uuid.UUID]:
    """Runs of `deployment` in `state`, straight into the store (one per time)."""
    values = [runs.new_run_values(
        name=f"run-{uuid.uuid4().hex[:8]}", flow_name=deployment.flow,
        deployment_id=deployment.id, deployment_name=deployment.name, schedule_slug=None,
        nominal_time=when, scheduled_time=when, parameters={}, auto_scheduled=False,
        tags=deployment.tags, state=state.value, state_name=state.display_name, **columns)
        for when in times]
    with db.write() as conn:
        runs.insert_runs(conn, values)
    return [row["id"] for row in values]


def register(db: Database, name: str, when: datetime, queues: list[str]) -> uuid.UUID:
    registration = AgentRegistration(name=name, host=f"{name}.example", queues=queues)
    with db.write() as conn:
        return agents.register(conn, registration, when, timedelta(seconds=30)).id


def page(server: RunningServer, path: str, status: int = 200, **headers: str) -> Element:
    response = httpx.get(server.url.removesuffix("/api") + path, headers=headers, timeout=10)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    return parse(response.text)


def run_links(part: Element) -> list[str]:
    return [a.attrs["href"] for a in part.find_all("a") if a.attrs["href"].startswith("/runs/")]


# (hours back from the current hour, state) -> runs, a minute apart from the hour's start (one
# at most in the current hour, so none is in the future); none in the oldest hour, so a test
# that straddles an hour's end still finds every seeded run inside the page's window.
PLAN = {(22, S.COMPLETED): 3, (22, S.FAILED): 1, (17, S.COMPLETED): 2, (17, S.SKIPPED): 4,
        (9, S.CRASHED): 1, (3, S.SCHEDULED): 2, (0, S.COMPLETED): 1, (0, S.RUNNING): 1}


def test_dashboard_shows_runs_by_hour_late_and_next_runs_and_agents(
        server: RunningServer) -> None:
    db, now = server.database, datetime.now(UTC)
    current = chart_hours(now)[-1]
    etl = deploy(db, "etl")
    for (back, state), count in PLAN.items():
        add_runs(db, etl, state, *(current - timedelta(hours=back) + MINUTE * n
                                   for n in range(count)))
    oldest_late = add_runs(db, etl, S.SCHEDULED, current - timedelta(hours=30))  # off the chart
    minutes = [7, 3, 12, 1, 9, 4, 11, 2, 10, 5, 8, 6]
    upcoming = add_runs(db, deploy(db, "soon"), S.SCHEDULED, *(now + MINUTE * n for n in minutes))
    register(db, "a1", now, ["etl"])
    register(db, "a2", now, ["etl", "all"])
    register(db, "gone", now - timedelta(hours=1), ["etl"])

    html = page(server, "/")

    chart = html.by_id("runs-chart")
    assert chart.tag == "svg"
    drawn = {(rect.attrs["data-hour"], rect.attrs["class"]): int(rect.attrs["data-count"])
             for rect in chart.find_all("rect")}
    assert drawn == {((current - timedelta(hours=back)).strftime("%Y-%m-%dT%H:00:00Z"), state):
                     count for (back, state), count in PLAN.items()}
    totals = {li.attrs["data-state"]: int(li.find_all(class_="total")[0].text)
              for li in html.by_id("runs-totals").find_all("li")}
    assert totals == {**dict.fromkeys(S, 0), S.COMPLETED: 6, S.FAILED: 1, S.SKIPPED: 4,
                      S.CRASHED: 1, S.SCHEDULED: 2, S.RUNNING: 1}
    late = html.by_id("late-runs")
    assert late.find_all(class_="stat")[0].text == "3"
    assert run_links(late)[0] == f"/runs/{oldest_late[0]}" and len(run_links(late)) == 3
    by_time = [run_id for _, run_id in sorted(zip(minutes, upcoming, strict=True))]
    assert run_links(html.by_id("next-runs")) == [f"/runs/{run_id}" for run_id in by_time[:10]]
    assert "f/soon" in html.by_id("next-runs").text
    online = html.by_id("agents-online")
    assert online.find_all(class_="stat")[0].text == "2"
    assert "a1" in online.text and "a2" in online.text and "gone" not in online.text


def test_a_refresh_gets_only_the_content_with_the_same_parts(server: RunningServer) -> None:
    html = page(server, "/", **{"X-Ostinato-Fragment": "1"})
    assert not html.find_all("header") and not html.find_all("html")
    refreshed = {element.attrs["id"] for element in html.find_all() if "data-refresh" in
                 element.attrs}
    assert refreshed == {"runs-by-state", "late-runs", "agents-online", "next-runs"}
    assert html.by_id("runs-chart").find_all("rect") == []


@pytest.mark.parametrize(("peak", "top", "step"), [
    (0, 1, 1), (1, 1, 1), (4, 4, 1), (7, 8, 2), (19, 20, 5), (100, 100, 50), (1234, 1500, 500),
])
def test_the_y_axis_ends_on_a_round_count(peak: int, top: int, step: int) -> None:
    assert scale(peak) == (top, step)


def test_segments_stack_within_the_frame() -> None:
    hours = chart_hours(datetime(2030, 1, 1, 12, 30, tzinfo=UTC))
    chart = build_chart({(hours[5], S.COMPLETED): 6, (hours[5], S.FAILED): 2,
                         (hours[9], S.SKIPPED): 3}, hours)
    frame = chart.frame
    assert hours[0] == datetime(2029, 12, 31, 13, tzinfo=UTC) and len(chart.bars) == 24
    completed, failed = chart.bars[5].segments
    assert (completed.state, failed.state) == (S.COMPLETED, S.FAILED)
    assert completed.y + completed.height == pytest.approx(frame.base)
    assert failed.y + failed.height == pytest.approx(completed.y)
    assert failed.y == pytest.approx(frame.top)  # 8 is the axis's top
    assert completed.height == pytest.approx(3 * failed.height)
    assert [value for value, _ in chart.ticks] == [0, 2, 4, 6, 8]
    assert chart.totals[S.COMPLETED] == 6 and chart.totals[S.RUNNING] == 0
