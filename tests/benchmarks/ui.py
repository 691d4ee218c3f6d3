"""The web UI at size: `python tests/benchmarks/ui.py` prints one JSON object per backend.

    python tests/benchmarks/ui.py [--backend sqlite|postgresql|both] [--runs N] [--days D]
        [--requests N] [--postgres-url URL] [--write-docs]

Each backend gets a fresh database — SQLite in a temporary folder, PostgreSQL in a fresh schema
of OSTINATO_TEST_POSTGRES_URL (or --postgres-url), dropped afterwards — filled straight through
the store: 20 deployments of 5 flows with schedules and tags, 6 work queues, --runs runs
(100,000) over --days days (10) up to half a day ahead (the past ones ended: mostly COMPLETED,
some FAILED, CRASHED, CANCELLED, SKIPPED; the future ones SCHEDULED), 30 late runs of which
two agents then claim 8 over HTTP, 10 agents (4 not heard from for a day), and for 3 runs 200 task
runs each (a layered graph, every task run depending on one or two of the layer before), 2,000
log lines and 3 subflow runs. PostgreSQL gets ANALYZE after the bulk insert, as autovacuum
would within a minute; SQLite gets none (the server never runs ANALYZE).

Then `ostinato server start` on it, loops off, and every page of the UI requested --requests
times (20) after 3 warm-ups, one request at a time over loopback from this process: the
server's time as it reports it (`Server-Timing: app;dur=…`, from the request's arrival to the
response's start, added by `ostinato.scheduler.ui.timing`) and the time this client waited for
the whole response, p50/p95 ms each. Target: server p95 < 300 ms on every page. Refreshes (the
`X-Ostinato-Fragment: 1` request each open page repeats every 5 s) are measured for the pages
with parts that refresh. `--write-docs` writes the "## Web UI" section of docs/benchmarks.md.
Both backends take about 45 s on 2 CPUs, a third of it filling the databases.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from harness import backend_urls, machine, on_database, percentile, server, table, write_section

from ostinato.deploy.protocol import AgentRegistration, LogLine, TaskRunReport
from ostinato.deploy.schedules import parse_schedule
from ostinato.deploy.schemas import DeploymentSpec, WorkQueueFilter, WorkQueueSpec
from ostinato.deploy.states import StateType
from ostinato.queues import agents, deployments, logs, runs, task_runs, work_queues
from ostinato.queues.database import Database

Json = dict[str, Any]
TARGET_MS = 300.0
FLOWS = ("etl", "reports", "ml-train", "billing", "sync")
DEPLOYMENTS = 20
QUEUES = [WorkQueueSpec(name="etl", filter=WorkQueueFilter(tags=["etl"])),
          WorkQueueSpec(name="reports", filter=WorkQueueFilter(flows=["reports"]), priority=5),
          WorkQueueSpec(name="ml", filter=WorkQueueFilter(flows=["ml-train"]),
                        concurrency_limit=2),
          WorkQueueSpec(name="billing", filter=WorkQueueFilter(tags=["billing"])),
          WorkQueueSpec(name="team-b", filter=WorkQueueFilter(tags=["team-b"],
                                                              exclude_tags=["slow"])),
          WorkQueueSpec(name="default")]
# How past runs ended, by weight: mostly completed.
ENDINGS = {StateType.COMPLETED: 90, StateType.FAILED: 6, StateType.CANCELLED: 2,
           StateType.CRASHED: 1, StateType.SKIPPED: 1}
LATE = 30
CLAIMED = 8
DETAILED = 3  # runs with task runs, logs and subflow runs
TASK_RUNS = 200
LAYER = 20  # task runs per layer of their graph
LOG_LINES = 2000
SUBFLOWS = 3
INSERT_BATCH = 50_000
WARM_UPS = 3
FIGURES = ("server_p50", "server_p95", "client_p50", "client_p95")


# --- the store -----------------------------------------------------------------------------------


def deployment_name(n: int) -> str:
    return f"{FLOWS[n % len(FLOWS)]}/job-{n:02d}"


def deployment_spec(n: int) -> DeploymentSpec:
    flow, name = deployment_name(n).split("/")
    tags = [flow, "team-a" if n % 2 else "team-b", *(["slow"] if n % 7 == 0 else [])]
    schedule = parse_schedule({"kind": "cron", "cron": f"{n % 60} * * * *"})
    return DeploymentSpec(flow=flow, name=name, entrypoint=f"flows/{flow}.py:main",
                          path="/srv/flows", tags=tags, schedules=[schedule],
                          parameters={"batch": n}, description=f"{flow} job {n}")


def fill(database: Database, count: int, days: float, now: datetime) -> Json:
    """Everything but the claimed runs; the ids of the runs the pages show in detail."""
    with database.write() as conn:
        deployments.apply(conn, [deployment_spec(n) for n in range(DEPLOYMENTS)])
        for queue in QUEUES:
            work_queues.create(conn, queue)
        ids = {deployment_name(n): deployments.get(conn, deployment_name(n)).id
               for n in range(DEPLOYMENTS)}
        _offline_agents(conn, now)
    rows = list(history(ids, count, days, now, random.Random(42)))
    for first in range(0, len(rows), INSERT_BATCH):
        with database.write() as conn:
            runs.insert_runs(conn, rows[first:first + INSERT_BATCH])
    detailed = [row for row in rows if row["state"] == StateType.COMPLETED][-DETAILED:]
    for row in detailed:
        with database.write() as conn:
            _details(conn, row)
    if database.engine.dialect.name == "postgresql":
        with database.write() as conn:
            conn.exec_driver_sql("ANALYZE")
    return {"detailed": [str(row["id"]) for row in detailed],
            "plain": str(rows[len(rows) // 2]["id"])}


def history(ids: dict[str, uuid.UUID], count: int, days: float, now: datetime,
            rng: random.Random) -> Iterator[Json]:
    """`count` runs evenly spaced from `days` ago to half a day ahead, deployment by
    deployment in turn, plus LATE runs due in the last hour that nobody has taken yet."""
    start = now - timedelta(days=days - 0.5)
    step = timedelta(days=days) / count
    names = list(ids)
    states, weights = list(ENDINGS), list(ENDINGS.values())
    for n in range(count):
        when = start + step * n
        ended = when < now - timedelta(minutes=10)
        state = rng.choices(states, weights)[0] if ended else StateType.SCHEDULED
        yield _run(ids, names[n % len(names)], when, state, rng)
    for n in range(LATE):
        when = now - timedelta(minutes=2 + 2 * n)
        yield _run(ids, names[n % len(names)], when, StateType.SCHEDULED, rng, slug="late")


def _run(ids: dict[str, uuid.UUID], name: str, when: datetime, state: StateType,
         rng: random.Random, slug: str = "bench") -> Json:
    values = runs.slot_run_values(ids[name], name, slug, when, scheduled_time=when,
                                  parameters={"batch": 1}, tags=[name.split("/")[0]],
                                  auto_scheduled=True, state=state,
                                  created=when - timedelta(hours=1))
    started = state not in (StateType.SCHEDULED, StateType.SKIPPED)
    took = timedelta(seconds=rng.uniform(5, 600))
    return {**values, "start_time": when if started else None,
            "end_time": when + took if started else (when if state.is_terminal else None),
            "agent_name": f"agent-{rng.randrange(6)}" if started else None,
            "work_queue": "default" if started else None}


def _details(conn: Any, row: Json) -> None:
    """TASK_RUNS task runs in layers of LAYER, LOG_LINES log lines and SUBFLOWS subflow runs."""
    run_id: uuid.UUID = row["id"]
    reports = list(_task_runs(run_id, row["start_time"]))
    task_runs.upsert(conn, reports, row["start_time"])
    logs.insert_logs(conn, run_id, [_line(row["start_time"], n, reports[n % TASK_RUNS].id)
                                    for n in range(LOG_LINES)])
    children = [{**runs.new_run_values(
        name=f"child-{n}", flow_name="inner", deployment_id=None, deployment_name=None,
        schedule_slug=None, nominal_time=row["start_time"],
        scheduled_time=row["start_time"], parameters={"n": n}, tags=[], auto_scheduled=False),
        "state": StateType.COMPLETED.value, "state_name": "Completed",
        "parent_run_id": run_id, "start_time": row["start_time"], "end_time": row["end_time"]}
        for n in range(SUBFLOWS)]
    runs.insert_runs(conn, children)


def _task_runs(run_id: uuid.UUID, start: datetime) -> Iterator[TaskRunReport]:
    ids = [uuid.uuid4() for _ in range(TASK_RUNS)]
    for n, task_id in enumerate(ids):
        layer = n // LAYER
        upstream = [] if layer == 0 else sorted(
            {ids[(layer - 1) * LAYER + n % LAYER], ids[(layer - 1) * LAYER + (n * 7) % LAYER]})
        begin = start + timedelta(seconds=layer * 3)
        entry = {"type": "COMPLETED", "name": "Completed", "timestamp": begin, "attempt": 1,
                 "message": None}
        yield TaskRunReport.model_validate({
            "id": task_id, "flow_run_id": run_id, "name": f"step{n % LAYER}-{layer}",
            "task_key": f"flows.py:step{n % LAYER}", "tags": [], "upstream": upstream,
            "state": "COMPLETED", "state_name": "Completed", "attempt": 1, "start_time": begin,
            "end_time": begin + timedelta(seconds=2), "error": None, "result": n,
            "history": [entry]})


def _line(start: datetime, n: int, task_run: uuid.UUID) -> LogLine:
    return LogLine(timestamp=start + timedelta(milliseconds=10 * n), level=20,
                   logger="flows", message=f"processed batch {n} of {LOG_LINES}",
                   task_run_id=task_run)


def _offline_agents(conn: Any, now: datetime) -> None:
    for n in range(4):
        registration = AgentRegistration(name=f"old-agent-{n}", host=f"vm-{n}",
                                         queues=["default"])
        agents.register(conn, registration, now - timedelta(days=1), timedelta(seconds=30))


def claim_some(api: str) -> None:
    """Six agents online; two of them take CLAIMED of the late runs (PENDING, leased)."""
    with httpx.Client(base_url=api, timeout=30) as http:
        online = [http.post("/agents", json={"name": f"agent-{n}", "host": f"host-{n}",
                                             "queues": ["default"]}).raise_for_status().json()
                  for n in range(6)]
        for agent in online[:2]:
            http.post("/claims", json={
                "agent_id": agent["id"], "queues": ["default"], "limit": CLAIMED // 2,
                "wait_seconds": 0, "prefetch_seconds": 0}).raise_for_status()


# --- the pages -----------------------------------------------------------------------------------


def pages(made: Json, now: datetime) -> dict[str, str]:
    """Every page, by a label; the runs list also filtered each way its form filters."""
    day = (now - timedelta(days=3)).replace(microsecond=0, tzinfo=None)
    window = f"after={day.isoformat()}&before={(day + timedelta(hours=6)).isoformat()}"
    return {
        "/": "/", "/deployments": "/deployments",
        "/deployments/{flow}/{name}": f"/deployments/{deployment_name(0)}",
        "/runs": "/runs", "/runs?state=FAILED": "/runs?state=FAILED",
        "/runs?deployment=…": f"/runs?deployment={deployment_name(3)}",
        "/runs?tag=…": "/runs?tag=billing", "/runs?after=…&before=… (6 h)": f"/runs?{window}",
        "/runs/{id} (200 task runs, 2,000 lines)": f"/runs/{made['detailed'][0]}",
        "/runs/{id} (plain)": f"/runs/{made['plain']}",
        "/work-queues": "/work-queues", "/work-queues/{name}": "/work-queues/default",
        "/agents": "/agents", "/login": "/login",
    }


REFRESHED = ("/", "/runs", "/runs/{id} (200 task runs, 2,000 lines)", "/work-queues/{name}",
             "/agents")
TIMING = re.compile(r"app;dur=([0-9.]+)")


def timed(http: httpx.Client, path: str, fragment: bool = False) -> tuple[float, float]:
    """One request: the server's ms (Server-Timing) and this client's ms."""
    headers = {"X-Ostinato-Fragment": "1"} if fragment else {}
    started = time.perf_counter()
    response = http.get(path, headers=headers)
    waited = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise SystemExit(f"GET {path}: {response.status_code} {response.text[:500]}")
    found = TIMING.search(response.headers.get("server-timing", ""))
    if not found:
        raise SystemExit(f"GET {path}: no Server-Timing header (ostinato.scheduler.ui.timing)")
    return float(found.group(1)), waited


def measure_page(http: httpx.Client, path: str, count: int, fragment: bool = False) -> Json:
    for _ in range(WARM_UPS):
        timed(http, path, fragment)
    samples = [timed(http, path, fragment) for _ in range(count)]
    server_ms = sorted(s for s, _ in samples)
    client_ms = sorted(c for _, c in samples)
    return {"server_p50": _ms(server_ms, 0.5), "server_p95": _ms(server_ms, 0.95),
            "client_p50": _ms(client_ms, 0.5), "client_p95": _ms(client_ms, 0.95),
            "target_met": percentile(server_ms, 0.95) < TARGET_MS}


def _ms(ordered: list[float], fraction: float) -> float:
    return round(percentile(ordered, fraction), 1)


def measure_pages(root: str, made: Json, now: datetime, count: int) -> Json:
    figures: Json = {}
    with httpx.Client(base_url=root, timeout=60) as http:
        for label, path in pages(made, now).items():
            figures[label] = measure_page(http, path, count)
            if label in REFRESHED:
                figures[f"{label} refresh"] = measure_page(http, path, count, fragment=True)
    return figures


# --- one backend ---------------------------------------------------------------------------------


def measure(url: str, args: argparse.Namespace) -> Json:
    now = datetime.now(UTC)
    started = time.perf_counter()
    made = on_database(url, lambda database: fill(database, args.runs, args.days, now))
    filled = round(time.perf_counter() - started, 1)
    with tempfile.TemporaryDirectory(prefix="ostinato-bench-ui-") as tmp:
        with server(url, Path(tmp) / "home", loops=False) as (api, _, outcome):
            claim_some(api)
            figures = measure_pages(api.removesuffix("/api"), made, now, args.requests)
    over = [label for label, page in figures.items() if not page["target_met"]]
    return {"fill_seconds": filled, "pages": figures, "over_target": over, "server": outcome}


# --- docs/benchmarks.md --------------------------------------------------------------------------


SECTION_INTRO = """\
`tests/benchmarks/ui.py`: `ostinato server start` (loops off) on a fresh database holding
100,000 runs over 10 days (mostly ended, half a day of them ahead, 30 late, 8 claimed), 20
deployments, 6 queues, 10 agents, and 3 runs with 200 task runs, 2,000 log lines and 3 subflow
runs each; every page requested 20 times after 3 warm-ups, one at a time over loopback. Each
cell: server p50; p95; client p50; p95, in ms. Server: the page's `Server-Timing` (from the
request's arrival to the response's start); client: the whole response as this process waited
for it. "refresh" is the `X-Ostinato-Fragment: 1` request an open page repeats every 5 s.
"""


def rows(report: Json) -> list[tuple[str, str, list[str]]]:
    first = next(iter(report["results"].values()))
    return [(f"`{label}`", "" if n else "server p95 < 300 ms, every page",
             [f"pages.{label}.{figure}" for figure in FIGURES])
            for n, label in enumerate(first["pages"])]


NOTES = """\
Every page meets the target at 100,000 runs. The run list does not scale with the history,
though: at 1,000,000 runs (90 days of retention at ~11,000 runs a day; `--backend sqlite --runs
1000000 --requests 5`) `/runs` took 1,971 ms p50 and 2,894 ms p95 on SQLite (its refresh 1,576
ms, every 5 s for each open tab), `/runs?tag=…` 594 ms, `/runs?deployment=…` 195 ms and a
six-hour window 169 ms, while the dashboard took 55 ms and every other page under 25 ms
(p50).
No index starts with `scheduled_time`, by which the list is ordered and windowed, so each of
these reads the whole table and sorts it: SQLite's plan is `SCAN flow_runs` + `USE TEMP B-TREE
FOR ORDER BY` (the tag adds a correlated `json_each`; the deployment filter compares
`deployment_name`, which has no index, where `ix_flow_runs_deployment_id_scheduled_time` is by
id), PostgreSQL's a `Parallel Seq Scan` feeding a top-N heapsort (62 ms at 100,000 runs). With
an index on `flow_runs (scheduled_time)` added by hand, the same four queries at 1,000,000 runs
took about 1 ms each instead of 1,447, 642, 177 and 163 ms (SQLite walks the index newest first
and stops after a page; a rare tag or deployment would walk further). It would cost every
materialised run one more index entry: a decision for the store.

The run page's p95 (about 120 ms against a p50 of 25 ms) is the server's cyclic garbage
collector: a generation-2 pass over the ~190,000 objects the server keeps takes about 100 ms
and lands on about one render in eight of that page, which allocates the most.
"""


def write_docs(report: Json, command: str) -> None:
    body = table(report, command, rows(report))
    write_section("Web UI", f"## Web UI\n\n{SECTION_INTRO}\n{body}\n\n{NOTES}")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--days", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--postgres-url", default=os.environ.get("OSTINATO_TEST_POSTGRES_URL"))
    parser.add_argument("--write-docs", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    report: Json = {"machine": machine(), "results": {}}
    for backend, make_url in backend_urls(args.backend, args.postgres_url).items():
        with make_url() as url:
            figures = report["results"][backend] = measure(url, args)
        heading = {"backend": backend, "machine": report["machine"], "runs": args.runs,
                   "days": args.days, "target_server_p95_ms": TARGET_MS}
        print(json.dumps({**heading, **figures}, indent=2), flush=True)
    if args.write_docs:
        write_docs(report, "python tests/benchmarks/ui.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
