"""The web UI in a real browser: Debian's Chromium, driven by Playwright, against a real server
with a real agent (`ostinato agent start`, a process of its own) running real flows.

Every page loads without a console error, an uncaught exception or a failed request; "run now"
makes a run the agent completes; pause and resume buttons change the store; the run filters
show exactly the runs the API lists for the same filter; the task graph draws one box per task
run and one arrow per recorded dependency; and with an API key configured, pages send the
browser to the login form, whose cookie is HTTP-only and same-site.

One SQLite server serves the whole module (what the browser sees does not depend on the
database). Full-page screenshots of every page go to a temporary folder, named at the start;
docs/images/dashboard.png and run.png are its `dashboard.png` and `run.png`. Skipped, saying
why, without /usr/bin/chromium (Debian's `chromium` package; CI's .ci/run installs it).
"""

from __future__ import annotations

import logging
import random
import re
import textwrap
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    Request,
    expect,
    sync_playwright,
)
from playwright.sync_api import Response as PageResponse

from ostinato.deploy.client import Client
from ostinato.deploy.registration import register_file
from ostinato.deploy.settings import Settings
from ostinato.deploy.states import StateType
from ostinato.queues import deployments, runs
from ostinato.queues.database import Database, connect
from ostinato.queues.tables import Base
from ostinato.scheduler.ui.pages import REFRESH_SECONDS
from tests.agents import ended, start_run
from tests.conftest import RunningServer, free_port, serving
from tests.test_agent_processes import agent_process
from tests.test_agents_e2e import FLOWS as SQUARES
from tests.test_task_runs_e2e import FLOWS as GRAPH

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason=f"{CHROMIUM} is missing: `apt-get install chromium` (CI's .ci/run installs it)")
log = logging.getLogger(__name__)

# Deployments of our own beside the two flows the agent runs: schedules and tags, so the pages
# have next runs, late runs and a history to show (their runs go straight into the store), and
# a small ETL whose tasks take long enough to draw (run once, by hand, as `nightly-etl/backfill`).
SCHEDULED = textwrap.dedent("""
    import time
    from ostinato.deploy import Cron, Deployment, Interval, flow, get_run_logger, task

    @task
    def extract(table: str) -> list[str]:
        time.sleep(0.15 + 0.05 * len(table) / 4)
        return [table] * len(table)

    @task
    def transform(rows: list[str]) -> int:
        time.sleep(0.2)
        return len(rows)

    @task
    def load(orders: int, customers: int, invoices: int) -> int:
        time.sleep(0.1)
        return orders + customers + invoices

    @flow
    def publish(day: str, total: int) -> str:
        get_run_logger().info("published %d rows for %s", total, day)
        return f"{day}: {total}"

    @flow(name="nightly-etl")
    def nightly_etl(day: str = "yesterday", full_refresh: bool = False) -> str:
        log = get_run_logger()
        counts = {}
        for table in ("orders", "customers", "invoices"):
            counts[table] = transform.submit(extract.submit(table))
            log.info("%s extracted", table)
        return publish(day, load(**counts))

    @flow(name="reports")
    def reports(region: str = "eu", top: int = 10) -> None:
        pass

    prod = Deployment(nightly_etl, name="prod", schedules=[Cron("0 2 * * *")],
                      tags=["etl", "prod"])
    backfill = Deployment(nightly_etl, name="backfill", parameters={"day": "2030-01-31"})
    hourly = Deployment(reports, name="hourly", schedules=[Interval(3600)], tags=["reports"])
""")
# Minutes between the runs of each deployment's history (their runs go straight into the store).
HISTORY = {"nightly-etl/prod": 20, "reports/hourly": 6}
HISTORY_HOURS = 36
LATE_RUNS = 3  # SCHEDULED runs of the `etl` queue, which no agent serves
QUEUES = [{"name": "default",
           "filter": {"deployments": ["squares/e2e", "graph/d", "nightly-etl/backfill"]}},
          {"name": "etl", "filter": {"tags": ["etl"]}, "description": "nightly loads"},
          {"name": "reports", "filter": {"deployments": ["reports/hourly"]}, "priority": 5}]
# How the history's runs ended, by weight: mostly completed.
ENDINGS = {StateType.COMPLETED: 88, StateType.FAILED: 5, StateType.CANCELLED: 3,
           StateType.CRASHED: 2, StateType.SKIPPED: 2}
RUN_DEADLINE = 30.0  # seconds for the agent to finish a run


# --- the browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless. `chromium_sandbox=False` (Playwright's default, spelled out)
    passes `--no-sandbox`, the one flag root in a container needs: with its sandbox Chromium
    exits at once ("Chromium sandboxing failed!" — it will not sandbox as root, and a container
    has neither the user namespaces nor the setuid helper it would use). The pages it loads are
    our own, so the sandbox protects nothing here. Playwright also passes
    `--disable-dev-shm-usage`, which a container's 64 MB /dev/shm would need."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                              chromium_sandbox=False)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory,
                pytestconfig: pytest.Config) -> Path:
    """Where every page's full-page screenshot goes; the folder is printed (and logged)."""
    folder = tmp_path_factory.mktemp("ui-screenshots")
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else nullcontext():
        print(f"\nUI screenshots: {folder}")
    log.info("UI screenshots: %s", folder)
    return folder


@dataclass
class Tab:
    """A browser tab on one server that records what went wrong on its pages: console errors,
    uncaught exceptions, failed requests and HTTP errors (unless `allow`ed)."""

    page: Page
    root: str  # http://127.0.0.1:PORT
    shots: Path
    problems: list[str] = field(default_factory=list)
    allow: set[int] = field(default_factory=set)  # HTTP statuses a test expects

    def __post_init__(self) -> None:
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not self._allowed_console(message.text):
            self.problems.append(f"console error: {message.text} ({message.location})")

    def _allowed_console(self, text: str) -> bool:
        """Chromium logs every 4xx/5xx resource as a console error; expected ones are fine."""
        return any(f"status of {status}" in text for status in self.allow)

    def _failed(self, request: Request) -> None:
        """Any failed request, but a refresh or log tail the page dropped as it went away."""
        if request.resource_type == "fetch" and request.failure == "net::ERR_ABORTED":
            return
        self.problems.append(f"request failed: {request.method} {request.url}: {request.failure}")

    def _response(self, response: PageResponse) -> None:
        if response.status >= 400 and response.status not in self.allow:
            self.problems.append(f"HTTP {response.status}: {response.request.method} "
                                 f"{response.url}")

    def open(self, path: str, shot: str | None = None) -> Page:
        """Load the page at `path`; it must answer 200 (after redirects) and say how long the
        server took (tests/benchmarks/ui.py reads that)."""
        response = self.page.goto(self.root + path, wait_until="load")
        assert response is not None and response.status == 200, (path, response and
                                                                   response.status)
        assert re.fullmatch(r"app;dur=[0-9.]+", response.headers.get("server-timing", "")), path
        if shot:
            self.shoot(shot)
        return self.page

    def shoot(self, name: str) -> None:
        self.page.screenshot(path=self.shots / f"{name}.png", full_page=True)

    def assert_clean(self) -> None:
        assert not self.problems, "\n".join(self.problems)


@pytest.fixture
def tab(browser: Browser, site: Site, screenshots: Path) -> Iterator[Tab]:
    """A fresh browser context (no cookies) on the module's server."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        yield Tab(context.new_page(), site.root, screenshots)
    finally:
        context.close()


# --- the server, its agent, and what they hold ---------------------------------------------------


@dataclass
class Site:
    server: RunningServer
    graph_run: str  # a run of the diamond flow with subflows, ended
    etl_run: str  # a run of the small ETL, ended
    now: datetime  # what the history of runs is relative to

    @property
    def root(self) -> str:
        return self.server.url.removesuffix("/api")

    def api(self) -> httpx.Client:
        return self.server.client()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A server on a fresh SQLite database (loops off), its deployments and queues, a history of
    runs, and an `ostinato agent start` process on the `default` queue; the diamond flow and
    the ETL have run once when the tests start."""
    folder = tmp_path_factory.mktemp("ui-site")
    database = _database(folder)
    settings = Settings(home=folder / "home", port=free_port(), run_scheduler=False)
    with serving(database, settings) as server:
        _register(server, folder)
        now = datetime.now(UTC)
        _history(database, now)
        graph_run, etl_run = start_run(server, "graph/d"), start_run(server, "nightly-etl/backfill")
        with agent_process(server, folder / "agent") as agent:
            for run_id in (graph_run, etl_run):
                run = ended(server, run_id, timeout=RUN_DEADLINE)
                assert run["state"] == "COMPLETED", (run, agent.output())
            yield Site(server, graph_run, etl_run, now)
        server.app.state.notifier.close()  # the killed agent's long poll answers, as at shutdown
    database.dispose()


def _database(folder: Path) -> Database:
    database = connect(f"sqlite:///{folder / 'ostinato.db'}")
    Base.metadata.create_all(database.engine)
    return database


def _register(server: RunningServer, folder: Path) -> None:
    """Three flow files as users register them (bundled, with their parameters), the diamond
    flow by path (as tests/test_task_runs_e2e.py does), and QUEUES."""
    project = folder / "project"
    project.mkdir()
    for name, source in (("squares.py", SQUARES), ("graph.py", GRAPH),
                         ("scheduled.py", SCHEDULED)):
        (project / name).write_text(source)
    spec = {"flow": "graph", "name": "d", "entrypoint": "graph.py:graph", "path": str(project)}
    with Client(server.url, "") as client:
        register_file(client, project / "squares.py")
        register_file(client, project / "scheduled.py")
        client.put("/deployments", {"deployments": [spec]})
        for queue in QUEUES:
            client.post("/work-queues", queue)


def _history(database: Database, now: datetime) -> None:
    """HISTORY_HOURS of runs of each of HISTORY's deployments that ended, LATE_RUNS overdue
    runs of the nightly one, and a day of hourly upcoming runs of both."""
    with database.write() as conn:
        ids = {name: deployments.get(conn, name).id for name in HISTORY}
    ending = random.Random(7)  # the same history every time
    rows = [_ended_run(ids[name], name, now - timedelta(minutes=every * n), ending)
            for name, every in HISTORY.items() for n in range(1, HISTORY_HOURS * 60 // every)]
    rows += [_run(ids[name], name, now + timedelta(hours=hour))
             for name in HISTORY for hour in range(1, 25)]
    rows += [_run(ids["nightly-etl/prod"], "nightly-etl/prod", now - timedelta(minutes=7 * late))
             for late in range(1, LATE_RUNS + 1)]
    with database.write() as conn:
        runs.insert_runs(conn, rows)


def _run(deployment_id: Any, name: str, when: datetime,
         state: StateType = StateType.SCHEDULED, **times: datetime | None) -> dict[str, Any]:
    tags = ["etl", "prod"] if name.startswith("nightly") else ["reports"]
    values = runs.slot_run_values(deployment_id, name, "history", when, scheduled_time=when,
                                  parameters={}, tags=tags, auto_scheduled=True, state=state,
                                  created=when - timedelta(hours=1))
    return {**values, "start_time": times.get("start"), "end_time": times.get("end")}


def _ended_run(deployment_id: Any, name: str, when: datetime, ending: random.Random
               ) -> dict[str, Any]:
    """A run that started on time and ended a few minutes later in a state drawn by ENDINGS'
    weights (SKIPPED runs never start)."""
    state = ending.choices(list(ENDINGS), list(ENDINGS.values()))[0]
    if state is StateType.SKIPPED:
        return _run(deployment_id, name, when, state, end=when)
    return _run(deployment_id, name, when, state, start=when,
                end=when + timedelta(seconds=ending.uniform(20, 400)))


def _pages(site: Site) -> dict[str, str]:
    """Every page of the UI, by the name of its screenshot."""
    return {"dashboard": "/", "deployments": "/deployments",
            "deployment": "/deployments/squares/e2e", "runs": "/runs",
            "run": f"/runs/{site.etl_run}", "work-queues": "/work-queues",
            "work-queue": "/work-queues/default", "agents": "/agents", "login": "/login"}


# --- every page ----------------------------------------------------------------------------------


def test_every_page_loads_without_errors(tab: Tab, site: Site) -> None:
    for name, path in _pages(site).items():
        page = tab.open(path, shot=name)
        assert page.title().endswith("· Ostinato"), (path, page.title())
        expect(page.locator("main#content")).not_to_be_empty()
    tab.assert_clean()


# --- logging in ----------------------------------------------------------------------------------


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[tuple[RunningServer, str]]:
    """A server of its own (it stays locked once it has a key) and a read key made on it by a
    loopback client before there was any key, as a first admin would."""
    database = _database(tmp_path)
    settings = Settings(home=tmp_path / "home", port=free_port(), run_scheduler=False)
    with serving(database, settings) as server, server.client() as client:
        created = client.post("/tokens", json={"name": "browser", "scope": "read"})
        yield server, created.raise_for_status().json()["key"]
    database.dispose()


def test_a_locked_server_sends_the_browser_to_log_in_and_keeps_the_key_in_a_strict_cookie(
        browser: Browser, locked: tuple[RunningServer, str], screenshots: Path) -> None:
    server, key = locked
    context = browser.new_context()
    try:
        _log_in_and_out(Tab(context.new_page(), server.url.removesuffix("/api"), screenshots,
                            allow={401}), key)
    finally:
        context.close()


def _log_in_and_out(tab: Tab, key: str) -> None:
    context = tab.page.context
    page = tab.open("/runs?state=FAILED")
    assert page.url == f"{tab.root}/login?next=/runs%3Fstate%3DFAILED"
    _log_in(page, "not-the-key")
    expect(page.locator("[role=alert]")).to_have_count(1)
    assert "\n" not in page.locator("[role=alert]").inner_text().strip()
    tab.shoot("login-refused")
    _log_in(page, key)
    expect(page).to_have_url(f"{tab.root}/runs?state=FAILED")
    (cookie,) = context.cookies()
    assert (cookie["name"], cookie["value"]) == ("ostinato_key", key)
    assert (cookie["httpOnly"], cookie["sameSite"]) == (True, "Strict")
    for path in ("/", "/deployments", "/runs", "/work-queues", "/agents"):
        tab.open(path)
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login"))
    assert context.cookies() == []
    tab.assert_clean()


def _log_in(page: Page, key: str) -> None:
    page.fill("input[name=key]", key)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_load_state("load")


# --- pause and resume ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/deployments/nightly-etl/prod", "/work-queues/etl"])
def test_pause_then_resume_from_the_page(tab: Tab, site: Site, path: str) -> None:
    page = tab.open(path)
    for click, offered, paused in (("Pause", "Resume", True), ("Resume", "Pause", False)):
        page.get_by_role("button", name=click, exact=True).click()
        expect(page.get_by_role("button", name=offered, exact=True)).to_be_visible()
        with site.api() as api:
            assert api.get(path).raise_for_status().json()["paused"] is paused
    tab.assert_clean()


# --- the runs list's filters ---------------------------------------------------------------------


FILTERS = ("states", "deployment, tag and window", "tag and state")


def _filters(now: datetime) -> dict[str, dict[str, Any]]:
    """FILTERS as the form takes them, each matching fewer runs than a page shows (50): a
    window of three hours of the history; runs no other test changes (pausing a deployment
    deletes its scheduled runs)."""
    def moment(hours: float) -> str:
        return (now - timedelta(hours=hours)).strftime("%Y-%m-%dT%H:%M:%S")

    return {"states": {"state": ["FAILED", "CRASHED"]},
            "deployment, tag and window": {"deployment": "reports/hourly", "tag": "reports",
                                           "after": moment(16), "before": moment(13)},
            "tag and state": {"tag": "reports", "state": ["SCHEDULED"]}}


@pytest.mark.parametrize("case", FILTERS)
def test_the_run_filters_show_exactly_the_matching_runs(tab: Tab, site: Site, case: str) -> None:
    chosen = _filters(site.now)[case]
    page = tab.open("/runs")
    form = page.locator("form.filters")
    if "state" in chosen:
        form.locator("select[name=state]").select_option(chosen["state"])
    for name in ("deployment", "tag", "after", "before"):
        if name in chosen:
            form.locator(f"input[name={name}]").fill(chosen[name])
    form.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"/runs\?"))
    shown = page.locator("tr[data-run-id]").evaluate_all(
        "rows => rows.map(row => row.dataset.runId)")
    with site.api() as api:
        listed = api.get("/flow-runs", params={**chosen, "limit": 500}).raise_for_status().json()
    assert shown == [run["id"] for run in listed] and shown, chosen
    tab.shoot(f"runs-filtered-{FILTERS.index(case)}")
    tab.assert_clean()


# --- the task graph ------------------------------------------------------------------------------


def _tree(api: httpx.Client, run_id: str) -> list[str]:
    """The run and its subflow runs, theirs too, depth first."""
    children = api.get("/flow-runs", params={"parent": run_id}).raise_for_status().json()
    return [run_id, *(found for child in children for found in _tree(api, child["id"]))]


def test_the_graph_draws_every_task_run_and_dependency_of_the_run_tree(tab: Tab,
                                                                       site: Site) -> None:
    with site.api() as api:
        tree = _tree(api, site.graph_run)
        tasks = {run: api.get(f"/flow-runs/{run}/task-runs").raise_for_status().json()
                 for run in tree}
    edges = {(up, task["id"]) for own in tasks.values() for task in own
             for up in task["upstream"]}
    svg = tab.open(f"/runs/{site.graph_run}").locator("svg#run-graph")
    tab.shoot("run-graph")
    assert _ids(svg.locator(":scope > rect.task-run")) == {t["id"] for t in tasks[tree[0]]}
    assert _ids(svg.locator("g.subflow"), "flowRunId") == set(tree[1:])
    for subflow in tree[1:]:
        own = svg.locator(f"g.subflow[data-flow-run-id='{subflow}'] > rect.task-run")
        assert _ids(own) == {t["id"] for t in tasks[subflow]}, subflow
    assert svg.locator("rect.task-run").count() == sum(map(len, tasks.values()))
    arrows = svg.locator("path.dependency").evaluate_all(
        "paths => paths.map(path => [path.dataset.from, path.dataset.to])")
    assert sorted(map(tuple, arrows)) == sorted(edges) and len(edges) == 4
    tab.assert_clean()


def _ids(found: Locator, key: str = "taskRunId") -> set[str]:
    """The `data-…` ids of the elements, checked to be distinct."""
    ids: list[str] = found.evaluate_all(f"items => items.map(item => item.dataset.{key})")
    assert len(ids) == len(set(ids)), ids
    return set(ids)


# --- run now -------------------------------------------------------------------------------------


def test_run_now_makes_a_run_the_agent_completes_and_its_page_shows_it(tab: Tab,
                                                                      site: Site) -> None:
    page = tab.open("/deployments/squares/e2e", shot="run-now-form")
    form = page.locator("form[data-run-now]")
    form.locator("[data-parameter=n]").fill("3")
    form.locator("[data-parameter=label]").fill("browser")
    form.locator("[type=submit]").click()
    page.wait_for_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    run = ended(site.server, page.url.rsplit("/", 1)[1], timeout=RUN_DEADLINE)
    assert (run["state"], run["parameters"]) == ("COMPLETED", {"n": 3, "label": "browser"}), run
    assert run["result"] == {"label": "browser", "total": 5}
    # No reload: the page's refreshing parts catch up within one refresh period.
    expect(page.locator("#run-header h1 .badge")).to_have_text(
        "Completed", timeout=(REFRESH_SECONDS + 5) * 1000)
    tab.shoot("run-now")
    tab.assert_clean()
