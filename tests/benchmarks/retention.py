"""Retention at size: `python tests/benchmarks/retention.py` prints one JSON object per backend.

    python tests/benchmarks/retention.py [--backend sqlite|postgresql|both] [--old-runs N]
        [--purge-runs N] [--claims N] [--deployments N] [--postgres-url URL] [--write-docs]

Each backend gets a fresh database — SQLite in a temporary folder, PostgreSQL in a fresh schema
of OSTINATO_TEST_POSTGRES_URL (or --postgres-url), dropped afterwards — with --deployments
minutely deployments materialised (as `scheduler.py` makes them) and one `ostinato server start`
on it with its loops off. Measured, first with an empty history, then with --old-runs finished
runs (1,000,000) of the deployment the claims take from, one log line per 100 runs:

- `idle_tick`: 20 `materialize.tick()` calls with nothing due, median and p95 ms (as in
  `scheduler.py`);
- `claims`: --claims single claims over HTTP (limit 1, no wait) of due runs, one after another
  from one agent, p50/p95/p99/max ms. Target for both: within ~1.5x of the empty history.

Then `purge`: `queues.retention.purge_finished_runs`, as the loop calls it (a pause as long as
each batch between batches), over the oldest --purge-runs (100,000) of the old runs — runs/s,
batches; an idle pass (nothing left to delete, the other old runs still there), median ms; and
the next --purge-runs deleted while the agent claims meanwhile, with those claims' latencies (the
purge runs in this process and the server in its own, as with `ostinato scheduler start`).

The old runs go in with the materialisation's bulk insert, 50,000 per transaction. PostgreSQL
gets ANALYZE after each bulk insert, as autovacuum would within a minute; SQLite gets none (the
server never runs ANALYZE). `--write-docs` writes the "## Retention" section of
docs/benchmarks.md. The JSON names the machine and its load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from claims import BULK, agent_body, claim_body, insert_due, ms, ok, prepare
from harness import (
    backend_urls,
    load_average,
    machine,
    on_database,
    percentile,
    server,
    table,
    write_section,
)
from sqlalchemy import event, insert

from ostinato.deploy.schemas import WorkQueueFilter, WorkQueueSpec
from ostinato.deploy.states import StateType
from ostinato.queues import deployments, runs, work_queues
from ostinato.queues.bulk import insert_runs_ignoring_duplicates
from ostinato.queues.database import Database
from ostinato.queues.retention import Retention, delete_finished_runs, purge_finished_runs
from ostinato.queues.tables import logs

# The benchmark script next to this one, not the package.
from scheduler import create, first_materialisation, idle_tick  # noqa: TID251

Json = dict[str, Any]
KEEP = timedelta(days=90)
STEP = timedelta(seconds=20)  # between old runs' scheduled times; each ended STEP / 2 later
INSERT_BATCH = 50_000
LOG_EVERY = 100
IDLE_PASSES = 20
QUEUE = WorkQueueSpec(name="bulk", filter=WorkQueueFilter(deployments=[BULK]))
TARGET_RATIO = 1.5


# --- the store -----------------------------------------------------------------------------------


def setup(database: Database, deployment_count: int) -> None:
    """The claims benchmark's deployments and queues, a queue of the bulk deployment alone (the
    minutely ones fall due meanwhile), and --deployments materialised minutely ones."""
    prepare(database)
    with database.write() as conn:
        work_queues.create(conn, QUEUE)
    create(database, deployment_count)
    first_materialisation(database)


def old_run(deployment_id: Any, n: int, first: datetime) -> Json:
    """The n-th old run: COMPLETED, every 20th FAILED, every 50th SKIPPED (never started)."""
    scheduled = first + n * STEP
    state = (StateType.SKIPPED if n % 50 == 49 else StateType.FAILED if n % 20 == 19
             else StateType.COMPLETED)
    ended = None if state is StateType.SKIPPED else scheduled + STEP / 2
    values = runs.slot_run_values(
        deployment_id, BULK, "every-20s", scheduled, scheduled_time=scheduled, parameters={},
        tags=[], auto_scheduled=True, state=state, created=scheduled - timedelta(hours=1))
    return {**values, "start_time": scheduled if ended else None, "end_time": ended,
            "updated": ended or scheduled}


def insert_old(database: Database, count: int, first: datetime, analyze: bool) -> Json:
    with database.read() as conn:
        deployment_id = deployments.get(conn, BULK).id
    started = time.perf_counter()
    for start in range(0, count, INSERT_BATCH):
        batch = [old_run(deployment_id, n, first)
                 for n in range(start, min(start + INSERT_BATCH, count))]
        with database.write() as conn:
            insert_runs_ignoring_duplicates(conn, batch)
            conn.execute(insert(logs), [
                {"flow_run_id": row["id"], "level": 20, "logger": "bench", "message": "done",
                 "timestamp": row["updated"]} for row in batch[::LOG_EVERY]])
    if analyze:
        with database.write() as conn:
            conn.exec_driver_sql("ANALYZE")
    seconds = time.perf_counter() - started
    return {"runs": count, "log_lines": len(range(0, count, LOG_EVERY)),
            "seconds": round(seconds, 1), "runs_per_second": round(count / seconds)}


# --- claims over HTTP ----------------------------------------------------------------------------


def latencies(samples: list[float]) -> Json:
    """`claims.ms` with the p95 too."""
    return {**ms(samples), "p95": round(percentile(sorted(samples), 0.95) * 1000, 1)}


def timed_claims(api: str, name: str, go_on: Callable[[int], bool]) -> list[float]:
    """Single claims from the bulk queue, one after another, while `go_on(claims so far)`."""
    samples: list[float] = []
    with httpx.Client(base_url=api, timeout=60) as client:
        agent = ok(client.post("/agents", json=agent_body(name, QUEUE.name)))
        while go_on(len(samples)):
            started = time.perf_counter()
            claimed = ok(client.post("/claims", json=claim_body(agent, QUEUE.name, 0)))
            samples.append(time.perf_counter() - started)
            if not claimed:
                raise SystemExit(f"claim {len(samples)} of {name} found no due run")
    return samples


def history_figures(database: Database, api: str, claims: int, label: str, analyze: bool
                    ) -> Json:
    insert_due(database, claims, f"{label}-", analyze)
    samples = timed_claims(api, label, lambda done: done < claims)
    return {"idle_tick": idle_tick(database), "claims_ms": latencies(samples)}


# --- purging -------------------------------------------------------------------------------------


def purge(database: Database, first: datetime, upto: int) -> Json:
    """Delete the old runs before the `upto`-th, as the loop does, in one pass."""
    now = first + upto * STEP + KEEP  # the cutoff falls right after the last of them
    started = time.perf_counter()
    result = purge_finished_runs(database, Retention(KEEP, pass_seconds=3600), now,
                                 pause=threading.Event().wait)
    seconds = time.perf_counter() - started
    return {"runs_deleted": result.runs_deleted, "batches": result.batches,
            "seconds": round(seconds, 2), "runs_per_second": round(result.runs_deleted / seconds),
            "now": now}


def idle_pass(database: Database, now: datetime) -> Json:
    samples = []
    for _ in range(IDLE_PASSES):
        started = time.perf_counter()
        deleted = purge_finished_runs(database, Retention(KEEP), now).runs_deleted
        samples.append((time.perf_counter() - started) * 1000)
        assert deleted == 0, f"an idle pass deleted {deleted} runs"
    ordered = sorted(samples)
    return {"median_ms": round(percentile(ordered, 0.5), 2),
            "p95_ms": round(percentile(ordered, 0.95), 2)}


def batch_plans(database: Database, now: datetime) -> list[Json]:
    """EXPLAIN of each distinct statement one batch runs, at this size (rolled back)."""
    statements: dict[str, Any] = {}

    def keep(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "flow_runs" in statement:
            statements[statement] = parameters  # the last: its state has runs to delete

    explain = "EXPLAIN QUERY PLAN " if database.is_sqlite else "EXPLAIN "
    with database.engine.connect() as conn, conn.begin() as transaction:
        event.listen(conn, "before_cursor_execute", keep)
        delete_finished_runs(conn, now - KEEP, Retention().batch_size,
                             skip_locked=database.skip_locked)
        event.remove(conn, "before_cursor_execute", keep)
        plans = [{"statement": " ".join(statement.split())[:100],
                  "plan": [" ".join(str(cell) for cell in row)[:160]
                           for row in conn.exec_driver_sql(explain + statement, parameters)]}
                 for statement, parameters in statements.items()]
        transaction.rollback()
    return plans


def purge_while_claiming(database: Database, api: str, first: datetime, upto: int,
                         claims_cap: int, analyze: bool) -> Json:
    insert_due(database, claims_cap, "during-", analyze)
    figures: Json = {}
    purger = threading.Thread(target=lambda: figures.update(purge(database, first, upto)))
    purger.start()
    samples = timed_claims(api, "during", lambda done: purger.is_alive() and done < claims_cap)
    purger.join()
    return {**figures, "claims_ms": latencies(samples)}


def purge_figures(database: Database, api: str, args: argparse.Namespace, first: datetime,
                  analyze: bool) -> Json:
    plans = batch_plans(database, first + args.purge_runs * STEP + KEEP)
    alone = purge(database, first, args.purge_runs)
    figures: Json = {"alone": alone, "idle_pass": idle_pass(database, alone.pop("now"))}
    during = purge_while_claiming(database, api, first, 2 * args.purge_runs, 10 * args.claims,
                                  analyze)
    during.pop("now")
    return {**figures, "while_claiming": during, "plans": plans}


# --- one backend, the whole run ------------------------------------------------------------------


def measure(backend: str, url: str, args: argparse.Namespace) -> Json:
    analyze = backend == "postgresql"
    with tempfile.TemporaryDirectory(prefix="ostinato-bench-retention-") as home, \
            server(url, Path(home), loops=False) as (api, _process, outcome):
        def run(database: Database) -> Json:
            setup(database, args.deployments)
            figures: Json = {"empty": history_figures(database, api, args.claims, "empty",
                                                      analyze)}
            first = datetime.now(UTC) - KEEP - args.old_runs * STEP - timedelta(days=30)
            figures["insert_old"] = insert_old(database, args.old_runs, first, analyze)
            figures["old"] = history_figures(database, api, args.claims, "old", analyze)
            figures["ratios"] = ratios(figures["empty"], figures["old"])
            figures["purge"] = purge_figures(database, api, args, first, analyze)
            return figures

        figures = on_database(url, run)
    return {**figures, "server": outcome}


def ratios(empty: Json, old: Json) -> Json:
    """Old history over empty history, for the figures with a target."""
    found = {"idle_tick_median": old["idle_tick"]["median_ms"] / empty["idle_tick"]["median_ms"],
             **{f"claims_{q}": old["claims_ms"][q] / empty["claims_ms"][q]
                for q in ("p50", "p95", "p99")}}
    rounded = {name: round(value, 2) for name, value in found.items()}
    return {**rounded, "target_met": all(value <= TARGET_RATIO for value in found.values())}


# --- docs/benchmarks.md --------------------------------------------------------------------------


def claim_row(label: str, target: str, path: str) -> tuple[str, str, list[str]]:
    return label, target, [f"{path}.{q}" for q in ("p50", "p95", "p99", "max")]


ROWS = [
    ("idle tick, empty history: median; p95 ms", "", ["empty.idle_tick.median_ms",
                                                      "empty.idle_tick.p95_ms"]),
    ("idle tick, 1M old runs: median; p95 ms", "≤ 1.5 × empty",
     ["old.idle_tick.median_ms", "old.idle_tick.p95_ms"]),
    claim_row("claim, empty history: p50; p95; p99; max ms", "", "empty.claims_ms"),
    claim_row("claim, 1M old runs: p50; p95; p99; max ms", "≤ 1.5 × empty", "old.claims_ms"),
    ("old over empty: tick median; claim p50; p95; p99", "≤ 1.5",
     ["ratios.idle_tick_median", "ratios.claims_p50", "ratios.claims_p95", "ratios.claims_p99"]),
    ("insert old runs: s; runs/s", "", ["insert_old.seconds", "insert_old.runs_per_second"]),
    ("purge 100,000 old runs: runs/s; s; batches", "",
     ["purge.alone.runs_per_second", "purge.alone.seconds", "purge.alone.batches"]),
    ("idle purge pass, 0.8M old runs not yet due: median; p95 ms", "",
     ["purge.idle_pass.median_ms", "purge.idle_pass.p95_ms"]),
    ("purge 100,000 more while claiming: runs/s", "", ["purge.while_claiming.runs_per_second"]),
    claim_row("claims meanwhile: p50; p95; p99; max ms", "", "purge.while_claiming.claims_ms"),
]

SECTION_INTRO = """\
`tests/benchmarks/retention.py`: 1,000 minutely deployments materialised; `ostinato server
start` with its loops off; idle ticks (`materialize.tick()`) and single claims over HTTP (limit
1, one agent, runs due), first with an empty history, then with 1,000,000 finished runs of the
claimed deployment in the database (one log line per 100); then the retention pass as its loop
runs it (a pause as long as each batch between batches) over 100,000 of them, an idle pass, and
100,000 more while the agent claims (from another process, as with `ostinato scheduler start`).
"""


PLANS = """\
The script's `plans` are the EXPLAIN of one batch's statements at 1,000,000 old runs. The
search is one range of `ix_flow_runs_state_scheduled_time` per terminal state, read in order up
to the batch size (SQLite: `SEARCH flow_runs USING INDEX ix_flow_runs_state_scheduled_time
(state=? AND scheduled_time<?)`; PostgreSQL: `Limit` over `LockRows` over an `Index Scan` of
it); the `max_runs` countdown check is an index probe of `deployment_schedules` per run on
SQLite, one hashed scan of it per query on PostgreSQL; subflow runs are found through
`ix_flow_runs_parent_run_id`; the DELETE finds runs by primary key, and its cascades find their
rows through the `flow_run_id` indexes (`ix_logs_flow_run_id_id` for logs; on PostgreSQL the
cascade's nested statements were read with `auto_explain`). Nothing scans the table: an idle
pass costs a few index probes whatever the history (on PostgreSQL a little more until vacuum
drops the index entries of the runs just deleted).
"""


def write_docs(report: Json, command: str) -> None:
    load = report["load_average"]
    note = f"Load average (1, 5, 15 min) before: {load['before']}; after: {load['after']}."
    write_section("Retention", f"## Retention\n\n{SECTION_INTRO}\n{table(report, command, ROWS)}"
                  f"\n\n{note}\n\n{PLANS}")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--old-runs", type=int, default=1_000_000)
    parser.add_argument("--purge-runs", type=int, default=100_000)
    parser.add_argument("--claims", type=int, default=1000)
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--postgres-url", default=os.environ.get("OSTINATO_TEST_POSTGRES_URL"))
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if 2 * args.purge_runs > args.old_runs:
        parser.error("--old-runs must hold twice --purge-runs")
    return args


def backends(args: argparse.Namespace) -> Iterator[tuple[str, Json]]:
    for backend, make_url in backend_urls(args.backend, args.postgres_url).items():
        with make_url() as url:
            yield backend, measure(backend, url, args)


def main() -> None:
    args = arguments()
    report: Json = {"machine": machine(), "load_average": {"before": load_average()},
                    "results": {}}
    for backend, figures in backends(args):
        report["results"][backend] = figures
        heading = {"backend": backend, "machine": report["machine"], "old_runs": args.old_runs}
        print(json.dumps({**heading, **figures}, indent=2, default=str), flush=True)
    report["load_average"]["after"] = load_average()
    print(json.dumps({"load_average": report["load_average"]}), flush=True)
    if args.write_docs:
        write_docs(report, "python tests/benchmarks/retention.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
