"""The runs pages over real HTTP (SQLite and PostgreSQL), on runs, task runs, subflow runs and
logs stored through the `queues` functions: the list shows exactly the runs its filters select
(state, deployment, tag, time range), pages newest first with links that keep the filters, and
answers a bad filter with a one-line 422 page; the detail page shows the run's header, history,
task runs, subflow runs, logs (escaped, with the tail's cursor) and its graph, with one bar per
task run (subflow runs' included, nested) and one arrow per recorded edge.

One server per test: a server on PostgreSQL costs about a second to stop.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from ostinato.deploy.protocol import RunEvents
from ostinato.deploy.states import StateType
from ostinato.queues import events, logs, runs
from ostinato.queues.database import Database
from ostinato.queues.tables import flow_runs
from ostinato.scheduler.ui.graph import LABEL_WIDTH, PLOT_WIDTH
from tests.conftest import RunningServer
from tests.html_parts import Element, parse

T0 = datetime(2031, 3, 1, tzinfo=UTC)
S = StateType
DEPLOYMENTS = ("etl/hourly", "ml/train")
ENDINGS = (S.COMPLETED, S.FAILED, S.RUNNING, S.SCHEDULED, S.CRASHED)


@dataclass(frozen=True)
class Seeded:
    """A run stored for the list: what its row should show."""

    id: str
    index: int
    deployment: str
    state: StateType
    tags: tuple[str, ...]


def store_run(database: Database, name: str, scheduled: datetime, *, state: StateType,
              deployment: str = "etl/hourly", tags: tuple[str, ...] = (),
              parameters: dict[str, Any] | None = None, **values: Any) -> str:
    """A run created SCHEDULED, then moved to `state` (its history gets the transition)."""
    row = runs.new_run_values(name=name, flow_name=deployment.split("/")[0],
                              deployment_name=deployment, nominal_time=scheduled,
                              scheduled_time=scheduled, parameters=parameters or {},
                              tags=list(tags), auto_scheduled=False, **values)
    with database.write() as conn:
        runs.insert_runs(conn, [row])
        if state is not S.SCHEDULED:
            runs.set_states(conn, flow_runs.c.id == row["id"], state, actor="agent",
                            start_time=scheduled, message=f"now {state.value}")
    return str(row["id"])


@pytest.fixture
def pages(server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url.removesuffix("/api"), timeout=10) as http:
        yield http


def get(pages: httpx.Client, path: str, status: int = 200, params: Any = None) -> Element:
    response = pages.get(path, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    return parse(response.text)


def listed(page: Element) -> list[str]:
    return [row.attrs["data-run-id"] for row in page.find_all("tr") if "data-run-id" in row.attrs]


def test_the_list_filters_pages_and_refuses_bad_filters(server: RunningServer,
                                                        pages: httpx.Client) -> None:
    seeded = [Seeded(store_run(server.database, f"run-{i:02d}", T0 + timedelta(hours=i),
                               state=ENDINGS[i % 5], deployment=DEPLOYMENTS[i % 2],
                               tags=("nightly",) if i % 3 == 0 else ()),
                     i, DEPLOYMENTS[i % 2], ENDINGS[i % 5], ("nightly",) if i % 3 == 0 else ())
              for i in range(12)]
    newest_first = sorted(seeded, key=lambda run: -run.index)

    def expect(*params: tuple[str, str], keep: Any = lambda run: True) -> Element:
        page = get(pages, "/runs", params=list(params))
        assert listed(page) == [run.id for run in newest_first if keep(run)], params
        return page

    page = expect()
    newest = page.find_all("tr", data_run_id=newest_first[0].id)[0]
    assert newest.find_all("a", href=f"/runs/{newest_first[0].id}")[0].text == "run-11"
    assert newest.find_all("a", href="/deployments/ml/train")
    assert newest.find_all("span", class_="badge FAILED")[0].text == "Failed"
    assert "2031-03-01 11:00:00" in newest.text and "nightly" not in newest.text
    assert page.find_all("tr", data_run_id=seeded[9].id)[0].find_all("td")[-1].text == "nightly"
    _assert_the_form(page)

    failed = expect(("state", "FAILED"), ("state", "crashed"),
                    keep=lambda run: run.state in (S.FAILED, S.CRASHED))
    chosen = [o.attrs["value"] for o in failed.find_all("option") if "selected" in o.attrs]
    assert chosen == ["FAILED", "CRASHED"]
    expect(("deployment", "ml/train"), keep=lambda run: run.deployment == "ml/train")
    expect(("tag", "nightly"), keep=lambda run: "nightly" in run.tags)
    expect(("after", "2031-03-01T03:00"), ("before", "2031-03-01T07:00"),
           keep=lambda run: 3 <= run.index < 7)
    expect(("state", "COMPLETED"), ("deployment", "etl/hourly"), ("after", "2031-03-01T01:00"),
           keep=lambda run: run.state is S.COMPLETED and run.deployment == "etl/hourly"
           and run.index >= 1)
    assert "No runs match" in expect(("tag", "absent"), keep=lambda run: False).text

    _assert_paging(pages, newest_first)
    _assert_bad_filters_are_one_line_422_pages(pages)


def _assert_the_form(page: Element) -> None:
    [form] = page.find_all("form", class_="filters")
    assert form.attrs["method"] == "get"
    assert form.find_all("select", name="state")[0].attrs.keys() >= {"multiple"}
    assert len(form.find_all("option")) == len(StateType)
    for name in ("deployment", "tag"):
        assert form.find_all("input", name=name)
    for name in ("after", "before"):
        assert form.find_all("input", name=name)[0].attrs["type"] == "datetime-local"
    assert form.find_all("button", type="submit")[0].text == "Filter"


def _assert_paging(pages: httpx.Client, newest_first: list[Seeded]) -> None:
    """Five a page, newest first; the links keep the filters."""
    ids = [run.id for run in newest_first]
    page = get(pages, "/runs", params={"limit": 5})
    assert listed(page) == ids[:5] and not page.find_all("a", rel="prev")
    older = page.find_all("a", rel="next")[0].attrs["href"]
    page = get(pages, older)
    assert listed(page) == ids[5:10]
    assert parse_qs(urlsplit(page.find_all("a", rel="prev")[0].attrs["href"]).query) == {
        "limit": ["5"], "offset": ["0"]}
    page = get(pages, page.find_all("a", rel="next")[0].attrs["href"])
    assert listed(page) == ids[10:] and not page.find_all("a", rel="next")

    page = get(pages, "/runs", params=[("state", "COMPLETED"), ("state", "FAILED"),
                                       ("deployment", "etl/hourly"), ("limit", "1")])
    etl = [run.id for run in newest_first if run.deployment == "etl/hourly"
           and run.state in (S.COMPLETED, S.FAILED)]
    link = page.find_all("a", rel="next")[0].attrs["href"]
    assert parse_qs(urlsplit(link).query) == {"state": ["COMPLETED", "FAILED"],
                                              "deployment": ["etl/hourly"], "limit": ["1"],
                                              "offset": ["1"]}
    assert listed(page) == etl[:1] and listed(get(pages, link)) == etl[1:2]


def _assert_bad_filters_are_one_line_422_pages(pages: httpx.Client) -> None:
    for params, field in (({"state": "DONE"}, "state"), ({"after": "yesterday"}, "after"),
                          ({"before": "2031-13-01T00:00"}, "before"),
                          ({"before": "0001-01-01T00:00+05:00"}, "before"),
                          ({"after": "2031-03-02T00:00", "before": "2031-03-01T00:00"}, "after"),
                          ({"deployment": "no-slash"}, "deployment"), ({"tag": "a b"}, "tag"),
                          ({"limit": "0"}, "limit"), ({"offset": "-1"}, "offset"),
                          ({"limit": "many"}, "limit"), ({"tag": "nul\x00"}, "tag")):
        page = get(pages, "/runs", 422, params)
        [error] = page.find_all("p", class_="error")
        assert error.text.startswith(f"{field}: ") and "\n" not in "".join(error.parts), params
        assert not listed(page) and page.find_all("form", class_="filters")


def test_the_detail_shows_the_run_its_history_logs_task_runs_and_graph(
        server: RunningServer, pages: httpx.Client) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    run_id = store_run(server.database, "diamond-1", start, state=S.RUNNING,
                       deployment="diamond/daily", tags=("prod",), work_queue="default",
                       agent_name="worker-1", parameters={"n": 3, "label": "<b>x</b>"})
    family = _family(run_id, start)
    with server.database.write() as conn:
        events.add_events(conn, uuid.UUID(run_id), RunEvents.model_validate(family.batch),
                          now=start)
        last_line = logs.read_logs(conn, uuid.UUID(run_id))[-1].id

    page = get(pages, f"/runs/{run_id}")
    header = page.by_id("run-header")
    assert "data-refresh" in header.attrs and header.find_all("h1")[0].text == "diamond-1 Running"
    assert header.find_all("a", href="/deployments/diamond/daily")
    assert {"default", "worker-1", "prod"} <= set(dd.text for dd in header.find_all("dd"))
    [cancel] = header.find_all("button", data_action=f"/api/flow-runs/{run_id}/cancel")
    assert cancel.attrs["data-done"] == "cancel requested"
    history = page.by_id("run-history").find_all("tr")[1:]
    assert [row.find_all("span")[0].text for row in history] == ["Scheduled", "Running"]
    assert "now RUNNING" in history[1].text
    assert '"label": "<b>x</b>"' in page.by_id("run-outcome").text

    tail = page.by_id("logs")
    assert (tail.tag, tail.attrs["class"], tail.attrs["data-live"]) == ("div", "logs", "true")
    assert tail.attrs["data-tail"] == f"/api/flow-runs/{run_id}/logs"
    assert tail.attrs["data-after"] == str(last_line)
    assert [line.text for line in tail.find_all("div")] == [
        f"{start + timedelta(seconds=n):%H:%M:%S}.000 {message}"
        for n, message in enumerate(["starting", "<script>alert(1)</script>", "done"])]
    assert not [script for script in page.find_all("script") if "alert" in script.text]

    task_rows = page.by_id("run-task-runs").find_all("tr")[1:]
    assert [row.find_all("td")[0].text for row in task_rows] == family.own_task_names
    assert page.by_id("run-subflows").find_all("a", href=f"/runs/{family.subflow}")
    _assert_the_graph(page, family)

    fragment = pages.get(f"/runs/{run_id}", headers={"X-Ostinato-Fragment": "1"})
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert 'class="top"' not in fragment.text and fragment.text.lstrip().startswith("<p id=\"flash")
    refreshed = parse(fragment.text)
    assert refreshed.by_id("run-graph") and refreshed.by_id("logs").attrs["data-live"] == "true"
    assert not refreshed.by_id("logs").find_all("div")  # the tail keeps the lines it shows

    _assert_the_subflow_run_page(pages, run_id, family)
    _assert_an_ended_run_with_no_task_runs(server, pages)
    get(pages, "/runs/not-a-run-id", 404)
    assert "No flow run has the id" in get(pages, f"/runs/{uuid.uuid4()}", 404).text


@dataclass
class Family:
    """A run's batch of events: its task runs (a diamond and one waiting), a running subflow
    run with two task runs and a subflow run of its own, and three log lines."""

    batch: dict[str, list[dict[str, Any]]]
    own_task_names: list[str]
    subflow: str
    nested: str
    edges: set[tuple[str, str]]
    running_task: str

    @property
    def task_ids(self) -> set[str]:
        return {task["id"] for task in self.batch["task_runs"]}


def _family(run_id: str, start: datetime) -> Family:
    def at(seconds: float) -> str:
        return (start + timedelta(seconds=seconds)).isoformat()

    def task(name: str, flow_run: str, begin: float, end: float | None,
             *upstream: dict[str, Any], state: str = "COMPLETED") -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "flow_run_id": flow_run, "name": name,
                "task_key": name.split("-")[0], "tags": [], "state": state,
                "upstream": [u["id"] for u in upstream], "state_name": state.capitalize(),
                "attempt": 1, "start_time": at(begin) if state != "PENDING" else None,
                "end_time": None if end is None else at(end), "error": None, "result": None,
                "history": [{"type": state, "name": state.capitalize(), "timestamp": at(begin),
                             "attempt": 1, "message": None}]}

    def subflow(name: str, parent: str, begin: float, end: float | None, state: str
                ) -> dict[str, Any]:
        return {"id": str(uuid.uuid4()), "parent_run_id": parent, "flow": name.split("-")[0],
                "name": name, "parameters": {}, "state": state, "state_name": state.capitalize(),
                "start_time": at(begin), "end_time": None if end is None else at(end),
                "message": None, "result": None, "history": []}

    top = task("fetch-1", run_id, 0, 2)
    left, right = task("left-1", run_id, 2, 4, top), task("right-1", run_id, 3, 5, top)
    join = task("join-1", run_id, 5, 6, left, right)
    waiting = task("report-1", run_id, 6, None, join, state="PENDING")
    sub = subflow("child-1", run_id, 7, None, "RUNNING")
    nested = subflow("grandchild-1", sub["id"], 8, 9, "COMPLETED")
    first = task("load-1", sub["id"], 7, 8)
    second = task("store-1", sub["id"], 8, None, first, state="RUNNING")
    deep = task("deep-1", nested["id"], 8, 9)
    own = [top, left, right, join, waiting]
    lines = [{"timestamp": at(n), "level": 20, "logger": "flow", "message": message}
             for n, message in enumerate(["starting", "<script>alert(1)</script>", "done"])]
    return Family(
        {"task_runs": [*own, first, second, deep], "flow_runs": [sub, nested], "logs": lines},
        [t["name"] for t in own], sub["id"], nested["id"],
        {(u, t["id"]) for t in (*own, first, second, deep) for u in t["upstream"]}, second["id"])


def _task_bars(within: Element) -> list[Element]:
    return [rect for rect in within.find_all("rect")
            if rect.attrs.get("class", "").split()[:1] == ["task-run"]]


def _assert_the_graph(page: Element, family: Family) -> None:
    assert "data-refresh" in page.by_id("graph").attrs
    svg = page.by_id("run-graph")
    assert svg.tag == "svg"
    bars = _task_bars(svg)
    assert sorted(bar.attrs["data-task-run-id"] for bar in bars) == sorted(family.task_ids)
    arrows = svg.find_all("path", class_="dependency")
    assert len(arrows) == len(family.edges) == 6
    assert {(a.attrs["data-from"], a.attrs["data-to"]) for a in arrows} == family.edges
    assert all(a.attrs["marker-end"] == "url(#arrow)" for a in arrows)
    assert svg.find_all("marker", id="arrow")
    [outer] = svg.find_all("g", class_="subflow", data_flow_run_id=family.subflow)
    [inner] = outer.find_all("g", class_="subflow", data_flow_run_id=family.nested)
    assert {bar.attrs["data-task-run-id"] for bar in _task_bars(outer)} == {
        task["id"] for task in family.batch["task_runs"]
        if task["flow_run_id"] in (family.subflow, family.nested)}
    assert [bar.attrs["class"] for bar in _task_bars(inner)] == ["task-run COMPLETED"]
    running = svg.find_all("rect", data_task_run_id=family.running_task)[0]
    assert running.attrs["class"] == "task-run RUNNING"
    assert float(running.attrs["x"]) + float(running.attrs["width"]) == pytest.approx(
        LABEL_WIDTH + PLOT_WIDTH, abs=1)
    assert "fetch-1" in svg.text and "child-1" in svg.text


def _assert_the_subflow_run_page(pages: httpx.Client, run_id: str, family: Family) -> None:
    page = get(pages, f"/runs/{family.subflow}")
    header = page.by_id("run-header")
    assert header.find_all("a", href=f"/runs/{run_id}")  # the run that called it
    assert not header.find_all("button")  # it stops with its flow run, not on its own
    assert len(_task_bars(page.by_id("run-graph"))) == 3
    assert len(page.by_id("run-graph").find_all("path", class_="dependency")) == 1


def _assert_an_ended_run_with_no_task_runs(server: RunningServer, pages: httpx.Client) -> None:
    quiet = store_run(server.database, "quiet-1", T0, state=S.COMPLETED)
    page = get(pages, f"/runs/{quiet}")
    assert not page.by_id("run-header").find_all("button")
    assert page.by_id("logs").attrs["data-live"] == "false"
    assert page.by_id("logs").attrs["data-after"] == "0"
    svg = page.by_id("run-graph")
    assert not _task_bars(svg) and "No task runs reported" in svg.text
