"""Claims over HTTP: `python tests/benchmarks/claims.py` prints one JSON object per backend.

    python tests/benchmarks/claims.py [--backend sqlite|postgresql|both] [--runs N]
        [--single-runs N] [--samples N] [--idle-polls N] [--analyze] [--postgres-url URL]
        [--write-docs]

Each backend gets a fresh database — SQLite in a temporary folder, PostgreSQL in a fresh schema
of OSTINATO_TEST_POSTGRES_URL (or --postgres-url), dropped afterwards — and one
`ostinato server start` on it with its loops off (OSTINATO_RUN_SCHEDULER=false). Measured:

- `claims_per_second`: --runs due runs (20,000) inserted straight into the store, then 8
  `tests/claimer.py` processes (`--until-empty --limit 10 --wait 0`) claim them over HTTP from
  one queue, `default`, that matches every run: runs, seconds (the longest of the claimers' own
  times, from after registering to their first empty claim), runs/s (target: ≥ 500 on SQLite,
  ≥ 1,000 on PostgreSQL). Every run must be claimed exactly once — by the claimers' lists and by
  the store's history — or the script stops with the reason. `limit_1` is the same with
  `--limit 1`, over --single-runs runs (5,000). Each also gives the server process's CPU time
  per claim request (on PostgreSQL the database's own work is in its processes, not counted).
  The runs are claimed right after they were inserted, before any statistics are gathered;
  `--analyze` runs ANALYZE first, as autovacuum (or `PRAGMA optimize`) would later.
- `long_poll_handout_ms`: one agent long-polls (wait 30 s, limit 1, no prefetch) in a loop while
  --samples manual runs (100), created ahead, fall due 150 ms apart from 2 s on; the claim
  response's arrival minus the run's scheduled time, p50/p99/max (target: p99 ≤ 50 ms).
- `wake_on_create_ms`: with that agent's long poll waiting, a manual run due now is created,
  --samples times; the claim response's arrival minus the moment the creating POST returned
  (negative when the claim answered first), and minus the moment it was sent (target: p99 ≤
  50 ms).
- `idle_long_polls`: the server's RSS before and a few seconds after --idle-polls idle long polls
  (500 agents, wait 60 s, on a queue no run matches) were sent from one asyncio process (target:
  ≤ 250 MB), with its threads and file descriptors; the wake-on-create delay of one more agent
  on another queue while they wait; then the same after they were cancelled.

All times are `time.time()` in this process, the agent's side; the server is on this machine.
`--write-docs` writes the figures into the "## Claims" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil
from harness import (
    backend_urls,
    machine,
    on_database,
    percentile,
    rss_mb,
    server,
    table,
    write_section,
)
from sqlalchemy import func, select

from ostinato.deploy.schemas import DeploymentSpec, WorkQueueFilter, WorkQueueSpec
from ostinato.queues import deployments, runs, work_queues
from ostinato.queues.database import Database
from ostinato.queues.tables import flow_run_states, flow_runs

CLAIMER = Path(__file__).resolve().parents[1] / "claimer.py"
CLAIMERS = 8
INSERT_BATCH = 5000
SAMPLES = 100
HANDOUT_SPACING, HANDOUT_LEAD = 0.15, 2.0
WAKE_PAUSE = 0.15  # the pause lets the next poll reach the server and wait
LONG_POLL = 30.0
IDLE_POLLS, IDLE_WAIT, IDLE_SETTLE = 500, 60.0, 3.0
BEHIND_RUNS = 5
BULK, HANDOUT = "bench/bulk", "bench/handout"
QUEUES = [WorkQueueSpec(name="default"),
          WorkQueueSpec(name="handout", filter=WorkQueueFilter(deployments=[HANDOUT])),
          WorkQueueSpec(name="idle", filter=WorkQueueFilter(flows=["no-such-flow"]))]
Json = dict[str, Any]
TARGETS: Json = {"claims_per_second": {"sqlite": 500, "postgresql": 1000},
                 "long_poll_handout_p99_ms": 50, "wake_on_create_p99_ms": 50,
                 "idle_long_polls_rss_mb": 250}


# --- the store, prepared directly ----------------------------------------------------------------


def prepare(database: Database) -> None:
    """The two deployments (path-based, no schedule) and the three queues."""
    with database.write() as conn:
        deployments.apply(conn, [
            DeploymentSpec(flow="bench", name=name.split("/")[1], entrypoint="flows.py:bench",
                           path="/srv/flows") for name in (BULK, HANDOUT)])
        for spec in QUEUES:
            work_queues.create(conn, spec)


def insert_due(database: Database, count: int, prefix: str, analyze: bool) -> set[str]:
    """`count` runs of the bulk deployment, all due already (then ANALYZE if asked); their
    ids."""
    with database.read() as conn:
        deployment_id = deployments.get(conn, BULK).id
    start = datetime.now(UTC) - timedelta(seconds=60 + count / 1000)
    values = [runs.new_run_values(
        name=f"{prefix}{i}", flow_name="bench", deployment_id=deployment_id,
        deployment_name=BULK, schedule_slug=None, nominal_time=start,
        scheduled_time=start + timedelta(milliseconds=i), parameters={}, tags=[],
        auto_scheduled=False) for i in range(count)]
    for first in range(0, count, INSERT_BATCH):
        with database.write() as conn:
            runs.insert_runs(conn, values[first:first + INSERT_BATCH])
    if analyze:
        with database.write() as conn:
            conn.exec_driver_sql("ANALYZE")
    return {str(value["id"]) for value in values}


def check_exactly_once(database: Database, claimed: list[str], expected: set[str]) -> None:
    """Stop the benchmark unless every inserted run was handed out exactly once."""
    handed = set(claimed)
    problems = {"handed out twice (claimers' lists)": len(claimed) - len(handed),
                "never handed out": len(expected - handed),
                "handed out but not inserted": len(handed - expected),
                **store_problems(database)}
    found = {problem: n for problem, n in problems.items() if n}
    if found:
        raise SystemExit(f"claims were not exactly once: {found}")


def store_problems(database: Database) -> dict[str, int]:
    r, s = flow_runs.c, flow_run_states.c
    twice = (select(s.flow_run_id).where(s.type == "PENDING").group_by(s.flow_run_id)
             .having(func.count() > 1).subquery())
    with database.read() as conn:
        waiting = conn.execute(select(func.count()).where(
            r.deployment_name == BULK, r.state == "SCHEDULED")).scalar_one()
        claimed_twice = conn.execute(select(func.count()).select_from(twice)).scalar_one()
    return {"still SCHEDULED in the store": int(waiting),
            "PENDING more than once in the history": int(claimed_twice)}


# --- 1. claims per second, 8 claimer processes ---------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """What the throughput runs share: the server, its store, a scratch folder, ANALYZE or not."""

    api: str
    server: psutil.Process
    database: Database
    folder: Path
    analyze: bool


def claim_throughput(bench: Bench, count: int, limit: int) -> Json:
    expected = insert_due(bench.database, count, f"limit{limit}-", bench.analyze)
    cpu, started = cpu_seconds(bench.server), time.monotonic()
    claimers = [start_claimer(bench.api, f"claimer-{limit}-{n}", limit, bench.folder)
                for n in range(CLAIMERS)]
    codes = [process.wait(timeout=900) for process, _ in claimers]
    wall, cpu = time.monotonic() - started, cpu_seconds(bench.server) - cpu
    if any(codes):
        raise SystemExit(f"claimers exited with {codes}")
    reports = [json.loads(out.read_text()) for _, out in claimers]
    claimed = [run_id for report in reports for run_id in report["claimed"]]
    check_exactly_once(bench.database, claimed, expected)
    seconds = max(report["seconds"] for report in reports)
    claims = sum(report["claims"] for report in reports)
    return {"claimers": CLAIMERS, "limit": limit, "runs": len(claimed), "claims": claims,
            "seconds": round(seconds, 2), "wall_seconds": round(wall, 2),
            "runs_per_second": round(len(claimed) / seconds, 1), "exactly_once": True,
            "server_cpu_ms_per_claim": round(cpu / claims * 1000, 2)}


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def start_claimer(api: str, name: str, limit: int, folder: Path
                  ) -> tuple[subprocess.Popen[bytes], Path]:
    out = folder / f"{name}.json"
    command = [sys.executable, str(CLAIMER), api, name, "-q", "default", "--limit", str(limit),
               "--wait", "0", "--until-empty", "--out", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL), out


# --- HTTP, as an agent ---------------------------------------------------------------------------


def ok(response: httpx.Response) -> Any:
    if not response.is_success:
        raise SystemExit(f"{response.request.method} {response.request.url}: "
                         f"{response.status_code} {response.text}")
    return response.json()


def agent_body(name: str, queue_name: str) -> Json:
    return {"name": name, "host": "bench", "queues": [queue_name]}


def claim_body(agent: Json, queue_name: str, wait: float) -> Json:
    return {"agent_id": agent["id"], "queues": [queue_name], "limit": 1, "wait_seconds": wait,
            "prefetch_seconds": 0}


def new_run(client: httpx.Client, body: Json) -> Json:
    flow, name = HANDOUT.split("/")
    return dict(ok(client.post(f"/deployments/{flow}/{name}/runs", json=body)))


def scheduled(run: Json) -> float:
    return datetime.fromisoformat(run["scheduled_time"]).timestamp()


def ms(samples: Sequence[float]) -> Json:
    ordered = sorted(samples)
    figures = {name: round(percentile(ordered, q) * 1000, 1)
               for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))}
    return {"samples": len(ordered), "min": round(ordered[0] * 1000, 1) if ordered else 0.0,
            **figures}


# --- 2. long-poll hand-out and wake-up -----------------------------------------------------------


def long_poll_handout(api: str, count: int) -> Json:
    """Runs created ahead, due one after another; one agent long-polls for them."""
    with httpx.Client(base_url=api, timeout=LONG_POLL + 30) as client:
        agent = ok(client.post("/agents", json=agent_body("handout", "handout")))
        first = time.time() + HANDOUT_LEAD
        for i in range(count):
            when = datetime.fromtimestamp(first + i * HANDOUT_SPACING, UTC)
            new_run(client, {"scheduled_time": when.isoformat()})
        if time.time() >= first:
            raise SystemExit(f"creating {count} runs took over {HANDOUT_LEAD} s")
        late: list[float] = []
        while len(late) < count:
            batch = ok(client.post("/claims", json=claim_body(agent, "handout", LONG_POLL)))
            arrived = time.time()
            if not batch:
                raise SystemExit(f"a {LONG_POLL} s long poll ended empty")
            late += [arrived - scheduled(run) for run in batch]
    figures = ms(late)
    return {**figures, "target_met": figures["p99"] <= TARGETS["long_poll_handout_p99_ms"]}


def poll_loop(api: str, agent: Json, count: int, arrivals: queue.Queue[tuple[str, float]]
              ) -> None:
    """The agent's side: `count` long polls, one after another, each arrival timed."""
    with httpx.Client(base_url=api, timeout=LONG_POLL + 30) as client:
        for _ in range(count):
            batch = ok(client.post("/claims", json=claim_body(agent, "handout", LONG_POLL)))
            arrived = time.time()
            for run in batch:
                arrivals.put((run["id"], arrived))


def wake_on_create(api: str, count: int) -> Json:
    """With the agent's poll waiting, create a run due now; how soon the claim answers."""
    with httpx.Client(base_url=api, timeout=30) as client:
        agent = ok(client.post("/agents", json=agent_body("waker", "handout")))
        arrivals: queue.Queue[tuple[str, float]] = queue.Queue()
        poller = threading.Thread(target=poll_loop, args=(api, agent, count, arrivals),
                                  daemon=True)
        poller.start()
        after_return, after_send = [], []
        for _ in range(count):
            time.sleep(WAKE_PAUSE)
            sent = time.time()
            run = new_run(client, {})
            returned = time.time()
            run_id, arrived = arrivals.get(timeout=LONG_POLL + 5)
            if run_id != run["id"]:
                raise SystemExit(f"created {run['id']}, the agent was handed {run_id}")
            after_return.append(arrived - returned)
            after_send.append(arrived - sent)
        poller.join(timeout=5)
    figures = {"after_post_returned": ms(after_return), "after_post_sent": ms(after_send)}
    p99 = figures["after_post_returned"]["p99"]
    return {**figures, "target_met": p99 <= TARGETS["wake_on_create_p99_ms"]}


# --- 3. idle long polls --------------------------------------------------------------------------


async def register(client: httpx.AsyncClient, name: str, queue_name: str) -> Json:
    response = await client.post("/agents", json=agent_body(name, queue_name))
    return dict(ok(response))


async def timed_claim(client: httpx.AsyncClient, agent: Json, queue_name: str, wait: float
                      ) -> tuple[list[Json], float]:
    response = await client.post("/claims", json=claim_body(agent, queue_name, wait))
    return ok(response), time.time()


def server_side(process: psutil.Process, port: int) -> Json:
    connections = [c for c in process.net_connections(kind="tcp")
                   if c.laddr and c.laddr.port == port and c.status == psutil.CONN_ESTABLISHED]
    return {"rss_mb": rss_mb(process), "threads": process.num_threads(),
            "fds": process.num_fds(), "connections": len(connections)}


async def until_held(process: psutil.Process, port: int, count: int) -> float:
    """Wait for `count` connections to the server and then for it to go quiet (it makes one
    claim per poll first); the seconds that took."""
    started = time.monotonic()
    deadline = started + 120
    while server_side(process, port)["connections"] < count:
        if time.monotonic() > deadline:
            raise SystemExit(f"the server never held {count} connections")
        await asyncio.sleep(0.1)
    process.cpu_percent(None)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        if process.cpu_percent(None) < 5:
            break
    return time.monotonic() - started


async def wake_behind(client: httpx.AsyncClient, agent: Json) -> Json:
    """Wake-on-create for `agent` (queue `handout`) while other polls wait or linger."""
    samples: list[float] = []
    for _ in range(BEHIND_RUNS):
        poll = asyncio.create_task(timed_claim(client, agent, "handout", LONG_POLL))
        await asyncio.sleep(WAKE_PAUSE)
        response = await client.post(f"/deployments/{HANDOUT}/runs", json={})
        returned = time.time()
        ok(response)
        batch, arrived = await poll
        if not batch:
            raise SystemExit("the long poll behind the idle ones ended empty")
        samples.append(arrived - returned)
    figures = ms(samples)
    return {key: figures[key] for key in ("samples", "p50", "max")}


async def idle_polls(api: str, process: psutil.Process, count: int) -> Json:
    port = urlsplit(api).port or 80
    limits = httpx.Limits(max_connections=count + 100, max_keepalive_connections=count + 100)
    async with httpx.AsyncClient(base_url=api, timeout=IDLE_WAIT + 30, limits=limits) as client:
        agents = [await register(client, f"idle-{n}", "idle") for n in range(count)]
        other = await register(client, "behind", "handout")
        figures: Json = {"polls": count, "before": server_side(process, port)}
        polls = [asyncio.create_task(timed_claim(client, agent, "idle", IDLE_WAIT))
                 for agent in agents]
        figures["seconds_to_hold"] = round(await until_held(process, port, count), 2)
        await asyncio.sleep(IDLE_SETTLE)
        figures["held"] = server_side(process, port)
        figures["ended_early"] = sum(poll.done() for poll in polls)
        figures["held"]["wake_behind_ms"] = await wake_behind(client, other)
        for poll in polls:
            poll.cancel()
        await asyncio.gather(*polls, return_exceptions=True)
        await asyncio.sleep(2)
        figures["cancelled"] = server_side(process, port)
        figures["cancelled"]["wake_behind_ms"] = await wake_behind(client, other)
    figures["target_met"] = figures["held"]["rss_mb"] <= TARGETS["idle_long_polls_rss_mb"]
    return figures


# --- one backend, the whole run ------------------------------------------------------------------


def measure(backend: str, url: str, args: argparse.Namespace) -> Json:
    on_database(url, prepare)
    with tempfile.TemporaryDirectory(prefix="ostinato-bench-claims-") as tmp:
        folder = Path(tmp)
        with server(url, folder / "home", loops=False) as (api, process, outcome):
            figures = {"claims_per_second": on_database(url, lambda db: throughputs(
                Bench(api, process, db, folder, args.analyze), args, backend))}
            figures["long_poll_handout_ms"] = long_poll_handout(api, args.samples)
            figures["wake_on_create_ms"] = wake_on_create(api, args.samples)
            figures["idle_long_polls"] = asyncio.run(idle_polls(api, process, args.idle_polls))
    return {**figures, "server": outcome}


def throughputs(bench: Bench, args: argparse.Namespace, backend: str) -> Json:
    figures = claim_throughput(bench, args.runs, 10)
    figures["target_met"] = figures["runs_per_second"] >= TARGETS["claims_per_second"][backend]
    return {**figures, "limit_1": claim_throughput(bench, args.single_runs, 1)}


# --- docs/benchmarks.md --------------------------------------------------------------------------


CPS, IDLE = "claims_per_second", "idle_long_polls"
ROWS = [
    ("claims, 8 processes, limit 10: runs/s; s", "≥ 500 SQLite, ≥ 1,000 PostgreSQL",
     [f"{CPS}.runs_per_second", f"{CPS}.seconds"]),
    ("same, limit 1: runs/s", "", [f"{CPS}.limit_1.runs_per_second"]),
    ("long-poll hand-out after due: p50; p99; max ms", "p99 ≤ 50 ms",
     ["long_poll_handout_ms.p50", "long_poll_handout_ms.p99", "long_poll_handout_ms.max"]),
    ("wake on create, after the POST returned: p50; p99 ms", "p99 ≤ 50 ms",
     ["wake_on_create_ms.after_post_returned.p50", "wake_on_create_ms.after_post_returned.p99"]),
    ("server RSS: before; with 500 idle long polls MB", "≤ 250 MB",
     [f"{IDLE}.before.rss_mb", f"{IDLE}.held.rss_mb"]),
    ("wake on create behind 500 idle polls: p50; max ms", "",
     [f"{IDLE}.held.wake_behind_ms.p50", f"{IDLE}.held.wake_behind_ms.max"]),
    ("same, once they were cancelled: p50; max ms", "",
     [f"{IDLE}.cancelled.wake_behind_ms.p50", f"{IDLE}.cancelled.wake_behind_ms.max"]),
]
SECTION_INTRO = """\
`tests/benchmarks/claims.py`: `ostinato server start` with its loops off on a fresh database;
8 `tests/claimer.py` processes claiming 20,000 due runs (limit 10, then 5,000 with limit 1, no
wait) from one queue, every run checked to be claimed once; one agent long-polling for 100 runs
falling due 150 ms apart; the same agent woken by runs created due now; 500 idle long polls.
"""


NOTES = """\
`--analyze` runs ANALYZE right after inserting the 20,000 due runs, as autovacuum does within a
minute: in real use runs are materialised an hour before they fall due, so the planner has
statistics by then. Without it (runs inserted and claimed at once) the same command measured
1,364 runs/s on SQLite and 814–966 runs/s on PostgreSQL over three runs: with no statistics
PostgreSQL sorts every due run for each claim instead of reading the index in order.

Before a wake found useless skipped polls of the same queues (15ce6b5), a run created while 500
polls waited on another queue reached its agent 1.6–4.6 s later: each poll in turn ran a claim.
"""


def write_docs(report: Json, command: str) -> None:
    section = f"## Claims\n\n{SECTION_INTRO}\n{table(report, command, ROWS)}\n\n{NOTES}"
    write_section("Claims", section)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--single-runs", type=int, default=5_000)
    parser.add_argument("--samples", type=int, default=SAMPLES,
                        help="runs handed out to a long poll, and runs woken for")
    parser.add_argument("--idle-polls", type=int, default=IDLE_POLLS)
    parser.add_argument("--analyze", action="store_true",
                        help="ANALYZE after inserting the due runs, before claiming them")
    parser.add_argument("--postgres-url", default=os.environ.get("OSTINATO_TEST_POSTGRES_URL"))
    parser.add_argument("--write-docs", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    report: Json = {"machine": machine(), "results": {}}
    for backend, make_url in backend_urls(args.backend, args.postgres_url).items():
        with make_url() as url:
            figures = report["results"][backend] = measure(backend, url, args)
        heading = {"backend": backend, "machine": report["machine"], "runs": args.runs,
                   "analyze": args.analyze, "targets": TARGETS}
        print(json.dumps({**heading, **figures}, indent=2), flush=True)
    if args.write_docs:
        write_docs(report, "python tests/benchmarks/claims.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
