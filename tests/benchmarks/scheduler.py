"""The scheduler at size: `python tests/benchmarks/scheduler.py` prints one JSON object.

    python tests/benchmarks/scheduler.py [--backend sqlite|postgresql|both] [--deployments N]
        [--skip-server] [--api-seconds S] [--profile N] [--write-docs]

On each backend — SQLite in a temporary file, PostgreSQL in a fresh schema of
OSTINATO_TEST_POSTGRES_URL (or --postgres-url), dropped afterwards — it measures:

- `create`: N deployments on `* * * * *` through `queues.deployments.apply`, 1,000 per
  transaction;
- `first_materialisation`: `materialize.tick()` until nothing is due — wall time, runs created,
  runs/s (target: under 60 s for 10,000 deployments);
- `idle_tick`: 20 `tick()` calls with nothing due, median and p95 in ms (target: under 50 ms);
- `server` (unless --skip-server): `ostinato server start` on that database with its loops on;
  its RSS after ~10 s idle (target: under 300 MB), then deployment creation through the API
  (PUT /api/deployments, one deployment per request, 4 client threads, --api-seconds) while its
  scheduler materialises the new ones — requests/s, latency percentiles, errors — and its RSS
  after that; then the same load on a server with its loops off, for comparison.

`--profile N` also profiles one first tick over N fresh deployments (cProfile, top 15 functions
by cumulative time). `--write-docs` writes the figures into the "## Scheduler" section of
docs/benchmarks.md. Figures depend on the machine; the JSON names it.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import sysconfig
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from harness import (
    DOCS,
    backend_urls,
    machine,
    on_database,
    percentile,
    rss_mb,
    server,
    table,
    write_section,
)

from ostinato.deploy.schedules import Cron
from ostinato.deploy.schemas import DeploymentSpec
from ostinato.queues import deployments
from ostinato.queues.database import Database
from ostinato.scheduler.materialize import tick

BATCH = 1000
IDLE_TICKS = 20
IDLE_SECONDS = 10.0
API_CLIENTS = 4
TARGETS = {"first_materialisation_s": 60.0, "idle_tick_ms": 50.0, "server_rss_mb": 300.0}
EDITABLE = Path(deployments.__file__ or ".").parents[2]  # holds ostinato/

# --- deployments ---------------------------------------------------------------------------------


def spec(name: str) -> DeploymentSpec:
    return DeploymentSpec(flow="bench", name=name, entrypoint="flows.py:bench",
                          path="/srv/flows", schedules=[Cron("* * * * *")])


def create(database: Database, count: int, prefix: str = "d") -> dict[str, Any]:
    started = time.perf_counter()
    for first in range(0, count, BATCH):
        with database.write() as conn:
            deployments.apply(conn, [spec(f"{prefix}{n:06}")
                                     for n in range(first, min(first + BATCH, count))])
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 2), "deployments_per_second": round(count / seconds, 1)}


# --- ticks ---------------------------------------------------------------------------------------


def first_materialisation(database: Database) -> dict[str, Any]:
    started = time.perf_counter()
    result = tick(database)
    seconds = time.perf_counter() - started
    left = tick(database)
    return {"seconds": round(seconds, 2), "runs_created": result.runs_created,
            "schedules": result.schedules, "batches": result.batches,
            "runs_per_second": round(result.runs_created / seconds, 1),
            "due_after": left.schedules,
            "target_met": seconds < TARGETS["first_materialisation_s"]}


def idle_tick(database: Database) -> dict[str, Any]:
    samples: list[float] = []
    for _ in range(IDLE_TICKS):
        started = time.perf_counter()
        done = tick(database)
        samples.append((time.perf_counter() - started) * 1000)
        assert done.schedules == 0, f"{done.schedules} schedules were due in an idle tick"
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(percentile(ordered, 0.95), 2),
            "target_met": percentile(ordered, 0.95) < TARGETS["idle_tick_ms"]}


def profile(database: Database, count: int) -> dict[str, Any]:
    create(database, count, prefix="p")
    profiler = cProfile.Profile()
    started = time.perf_counter()
    result = profiler.runcall(tick, database)
    seconds = time.perf_counter() - started
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(15)
    lines = [short_paths(line.rstrip()) for line in stream.getvalue().splitlines()
             if line.strip() and not line.lstrip().startswith(("Ordered by", "List reduced"))]
    return {"deployments": count, "seconds_under_profiler": round(seconds, 2),
            "runs_created": result.runs_created, "top_cumulative": lines[-16:]}


def short_paths(line: str) -> str:
    """A profile line with site-packages and the editable build's folder left out."""
    for folder in sorted({*sysconfig.get_paths().values(), str(EDITABLE)}, key=len,
                         reverse=True):
        line = line.replace(folder.rstrip("/") + "/", "")
    return line


# --- the server ----------------------------------------------------------------------------------


def client_loop(api: str, number: int, deadline: float, latencies: list[float],
                errors: Counter[str]) -> None:
    with httpx.Client(base_url=api, timeout=60) as client:
        iteration = 0
        while time.monotonic() < deadline:
            body = {"deployments": [spec(f"api{number}-{iteration:06}").model_dump(mode="json")]}
            iteration += 1
            started = time.perf_counter()
            try:
                status = str(client.put("/deployments", json=body).status_code)
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            latencies.append(time.perf_counter() - started)
            if status != "200":
                errors[status] += 1


def api_creation(api: str, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    threads = [threading.Thread(target=client_loop, args=(api, n, deadline, latencies, errors))
               for n in range(API_CLIENTS)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    ordered = sorted(latencies)
    return {"clients": API_CLIENTS, "seconds": round(elapsed, 2), "requests": len(ordered),
            "requests_per_second": round(len(ordered) / elapsed, 1),
            "errors": dict(errors),
            "latency_ms": {name: round(percentile(ordered, q) * 1000, 1)
                           for name, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99),
                                           ("max", 1.0))}}


def measure_server(url: str, home: Path, api_seconds: float, database: Database
                   ) -> dict[str, Any]:
    with server(url, home) as (api, process, outcome):
        time.sleep(IDLE_SECONDS)
        idle = rss_mb(process)
        before = run_count(database)
        load = api_creation(api, api_seconds)
        after_load = rss_mb(process)
        time.sleep(3)  # a scheduler interval or so: let it finish the last ones
        load["runs_created_meanwhile"] = run_count(database) - before
    return {"rss_idle_mb": idle, "rss_after_api_mb": after_load,
            "rss_target_met": idle < TARGETS["server_rss_mb"], "api_creation": load, **outcome}


def run_count(database: Database) -> int:
    with database.read() as conn:
        return int(conn.exec_driver_sql("SELECT count(*) FROM flow_runs").scalar_one())


# --- one backend, the whole run ------------------------------------------------------------------


def measure(database: Database, url: str, args: argparse.Namespace) -> dict[str, Any]:
    figures: dict[str, Any] = {"create": create(database, args.deployments)}
    figures["first_materialisation"] = first_materialisation(database)
    figures["idle_tick"] = idle_tick(database)
    if args.skip_server:
        return figures
    with tempfile.TemporaryDirectory(prefix="ostinato-bench-home-") as home:
        figures["server"] = measure_server(url, Path(home), args.api_seconds, database)
        with server(url, Path(home), loops=False) as (api, _process, _outcome):
            figures["server"]["api_creation_with_loops_off"] = api_creation(
                api, args.api_seconds)
    return figures


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine(), "deployments": args.deployments,
                              "targets": TARGETS, "results": {}}
    for name, make_url in backend_urls(args.backend, args.postgres_url).items():
        with make_url() as url:
            report["results"][name] = on_database(url, lambda db: measure(db, url, args))
        if args.profile:
            with make_url() as url:
                report["results"][name]["profile"] = on_database(
                    url, lambda db: profile(db, args.profile))
    return report


# --- docs/benchmarks.md --------------------------------------------------------------------------


API, QUIET = "server.api_creation", "server.api_creation_with_loops_off"
ROWS: list[tuple[str, str, list[str]]] = [
    ("create deployments: s; per s", "", ["create.seconds", "create.deployments_per_second"]),
    ("first materialisation: s", "< 60 s", ["first_materialisation.seconds"]),
    ("runs created; runs/s", "", ["first_materialisation.runs_created",
                                  "first_materialisation.runs_per_second"]),
    ("idle tick: median; p95 ms", "< 50 ms", ["idle_tick.median_ms", "idle_tick.p95_ms"]),
    ("server RSS idle ~10 s: MB", "< 300 MB", ["server.rss_idle_mb"]),
    ("server RSS after API load: MB", "", ["server.rss_after_api_mb"]),
    ("API PUT /deployments, loops on: req/s; p50; p99 ms", "",
     [f"{API}.requests_per_second", f"{API}.latency_ms.p50", f"{API}.latency_ms.p99"]),
    ("same, server loops off: req/s; p50; p99 ms", "",
     [f"{QUIET}.requests_per_second", f"{QUIET}.latency_ms.p50", f"{QUIET}.latency_ms.p99"]),
    ("API errors (loops on; off)", "none", [f"{API}.errors", f"{QUIET}.errors"]),
]

SECTION_INTRO = """\
`tests/benchmarks/scheduler.py`: N deployments on `* * * * *` created through
`queues.deployments.apply` (1,000 per transaction); the first full materialisation
(`materialize.tick()` until nothing is due); 20 idle ticks; then `ostinato server start` on that
database, its RSS after ~10 s idle, and deployment creation through the API (one deployment per
`PUT /api/deployments`, 4 client threads) while its scheduler materialises the new ones — and
the same load on a server with its loops off, for comparison.
"""


NOTES = """\
Earlier figures (55.1 s on SQLite, 60–66 s on PostgreSQL) came from a slower VM (Intel Xeon);
on a 2-CPU AMD EPYC VM the PostgreSQL first materialisation took 29.1 s before COPY stopped
sending the columns every run of a batch shares (55ccbbe) and 25.8–26.8 s after it (same
command, `--backend postgresql`).
"""


def profiles(report: dict[str, Any]) -> str:
    blocks = [f"Profile of one first tick over {figures['profile']['deployments']} deployments "
              f"on {name} (top 15 by cumulative time):\n\n```\n"
              + "\n".join(figures["profile"]["top_cumulative"]) + "\n```\n"
              for name, figures in report["results"].items() if "profile" in figures]
    return "\n".join(blocks)


def write_docs(report: dict[str, Any], command: str, path: Path = DOCS) -> None:
    """Replace the "## Scheduler" section of `path`, keeping every other section."""
    parts = [f"## Scheduler\n\n{SECTION_INTRO}", table(report, command, ROWS), NOTES,
             profiles(report)]
    write_section("Scheduler", "\n\n".join(part.rstrip("\n") for part in parts if part), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--deployments", type=int, default=10_000)
    parser.add_argument("--postgres-url", default=os.environ.get("OSTINATO_TEST_POSTGRES_URL"))
    parser.add_argument("--skip-server", action="store_true",
                        help="skip the server's RSS and the API creation rate")
    parser.add_argument("--api-seconds", type=float, default=10.0)
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile a first tick over N deployments")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    report = run(args)
    print(json.dumps(report, indent=2))
    if args.write_docs:
        write_docs(report, "python tests/benchmarks/scheduler.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
