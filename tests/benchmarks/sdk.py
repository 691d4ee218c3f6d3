"""Task runs at scale: `python tests/benchmarks/sdk.py` prints one JSON document.

    python tests/benchmarks/sdk.py [--backend sqlite|postgresql|both] [--tasks N] [--runs N]
        [--postgres-url URL] [--write-docs]

Target: a flow of 1,000 tasks run by an agent records every task run and log line and takes at
most `1.2 × baseline + 1 ms × tasks` (the median run against the median baseline). The flow file
(a temporary folder) has a task hashing 8 KB 80 times (~0.6 ms of CPU) and logging one line with
`get_run_logger().info`, and a flow calling it --tasks times, every odd call with the previous
result (so tasks // 2 upstream edges). Per backend: a fresh database and `ostinato server start`
(harness.py), the file registered with `ostinato deployment create`, one `ostinato agent start`
(agent.py's), then:

- `baseline`: a fresh `python` runs the same loop on the undecorated `digest.fn` 3 times.
- --runs runs made with `ostinato deployment run`, one after another: `run_seconds` (the server's
  end − start time: from RUNNING accepted, before the process starts, to its exit; the first run
  also starts the agent's fork server), `flow_seconds` (the loop timed in the flow, its result),
  `records_after_end_seconds` (end time → the API shows every record, to within the 50 ms poll),
  `overhead_us_per_task` = (run − baseline) / tasks and `engine_us_per_task` = (flow − baseline)
  / tasks; `cpu_seconds` of the run's process (with the agent's fork server), the agent and the
  server from making the run to seeing it ended, and `elsewhere_cores_busy` meanwhile (agent.py's
  `cpu_meter`). The median run is the one of median `run_seconds`.
- Checked through the API, else it exits non-zero after printing: exactly --tasks task runs, all
  COMPLETED, each odd one with the one before as its only upstream, one log line attributed
  (`task_run_id`) to each. `--write-docs` writes the "## Task runs" section of benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from harness import backend_urls, machine, server, table, write_section

from agent import (  # noqa: TID251 (tests/benchmarks/agent.py, not ostinato.agent)
    OSTINATO,
    QUEUE,
    Agents,
    Bench,
    cpu_meter,
    start_agent,
    stop_agents,
    timestamp,
)
from ostinato.deploy.client import Client
from ostinato.deploy.states import TERMINAL_STATES
from ostinato.queues.logs import MAX_LOG_PAGE
from ostinato.queues.task_runs import MAX_TASK_RUN_PAGE

Json = dict[str, Any]
FLOW, DEPLOYMENT = "sdk-bench", "chain"
TASKS, RUNS, BASELINE_REPEATS = 1000, 3, 3
SLOWDOWN, PER_TASK = 1.2, 0.001  # the target: 1.2 × baseline + 1 ms a task
POLL, DEADLINE, LATE_RECORDS = 0.05, 600.0, 10.0
ENDED = {state.value for state in TERMINAL_STATES}

FLOW_FILE = '''\
import hashlib
import time
from ostinato.deploy import Deployment, flow, get_run_logger, task

BLOCK, ROUNDS = bytes(range(256)) * 32, 80  # 8 KB

@task
def digest(seed: str, previous: str | None = None) -> str:
    value = (seed + (previous or "")).encode()
    for _ in range(ROUNDS):
        value = hashlib.sha256(value + BLOCK).digest()
    get_run_logger().info("digest %s: %s", seed, value.hex()[:16])
    return value.hex()

def chain_of(step, tasks):
    """`step` called `tasks` times, every odd call with the previous call's result."""
    previous = None
    for number in range(tasks):
        previous = step(str(number), previous if number % 2 else None)

@flow(name="{flow}")
def chain(tasks: int = {tasks}) -> float:
    started = time.perf_counter()
    chain_of(digest, tasks)
    return time.perf_counter() - started

deployment = Deployment(chain, name="{deployment}", parameters={{"tasks": {tasks}}})
'''

BASELINE = """\
import importlib.util, json, sys, time
spec = importlib.util.spec_from_file_location("chain_file", sys.argv[1])
chain_file = importlib.util.module_from_spec(spec)
spec.loader.exec_module(chain_file)
seconds = []
for _ in range(int(sys.argv[3])):
    started = time.perf_counter()
    chain_file.chain_of(chain_file.digest.fn, int(sys.argv[2]))  # the same loop, undecorated
    seconds.append(time.perf_counter() - started)
print(json.dumps(seconds))
"""


def register(bench: Bench, tasks: int) -> Path:
    """The flow file in a folder of its own, registered with its bundle; its path."""
    project = bench.folder / "project"
    project.mkdir()
    flow_file = project / "chain.py"
    flow_file.write_text(FLOW_FILE.format(flow=FLOW, deployment=DEPLOYMENT, tasks=tasks))
    subprocess.run([OSTINATO, "deployment", "create", str(flow_file)], env=bench.env(),
                   check=True, stdout=subprocess.DEVNULL)
    return flow_file


def baseline(bench: Bench, flow_file: Path, tasks: int) -> Json:
    """The same loop on the undecorated function, in a fresh interpreter: best and median."""
    done = subprocess.run([sys.executable, "-c", BASELINE, str(flow_file), str(tasks),
                           str(BASELINE_REPEATS)], env=bench.env(), check=True,
                          capture_output=True, text=True)
    seconds = json.loads(done.stdout)
    return {"best_seconds": round(min(seconds), 4),
            "median_seconds": round(statistics.median(seconds), 4),
            "samples": [round(value, 4) for value in seconds]}


def one_run(bench: Bench, client: Client, agents: Agents, tasks: int, base: float
            ) -> tuple[Json, list[str]]:
    """Make a run, wait for it and its records; its figures and what is wrong with them. The
    CPU figures cover making the run to seeing it ended, not reading its records."""
    with cpu_meter(bench, agents) as used:
        made = subprocess.run([OSTINATO, "deployment", "run", f"{FLOW}/{DEPLOYMENT}", "--json"],
                              env=bench.env(), check=True, capture_output=True, text=True)
        run_id = json.loads(made.stdout)["id"]
        run = wait_ended(client, run_id)
    task_runs, lines, seen = read_records(client, run_id, tasks)
    start, end = timestamp(run["start_time"]), timestamp(run["end_time"])
    flow_seconds = run["result"] if isinstance(run["result"], float) else float("nan")
    figures = {
        "id": run_id, "state": run["state"], "run_seconds": round(end - start, 3),
        "flow_seconds": round(flow_seconds, 3), "records_after_end_seconds": round(seen - end, 3),
        "overhead_us_per_task": round((end - start - base) / tasks * 1e6),
        "engine_us_per_task": round((flow_seconds - base) / tasks * 1e6),
        "task_runs": len(task_runs), "log_lines": len(lines),
        "upstream_edges": sum(len(task_run["upstream"]) for task_run in task_runs),
        "task_log_lines": sum(1 for line in lines if line["task_run_id"]),
        "cpu_seconds": {key: round(value, 2) for key, value in used.items() if key != "elsewhere"},
        "elsewhere_cores_busy": round(used["elsewhere"], 2)}
    problems = check(task_runs, lines, tasks)
    if run["state"] != "COMPLETED":
        problems.insert(0, f"the run ended {run['state']}: {run['reason']}")
    return figures, [f"run {run_id}: {problem}" for problem in problems]


def wait_ended(client: Client, run_id: str) -> Json:
    deadline = time.monotonic() + DEADLINE
    run: Json
    while (run := client.get(f"/flow-runs/{run_id}"))["state"] not in ENDED:
        if time.monotonic() > deadline:
            raise SystemExit(f"run {run_id} unfinished after {DEADLINE} s")
        time.sleep(POLL)
    return run


def read_records(client: Client, run_id: str, tasks: int
                 ) -> tuple[list[Json], list[Json], float]:
    """The ended run's task runs and log lines, and when (wall clock) they were first all
    there: read again for a while if some are missing."""
    give_up = time.monotonic() + LATE_RECORDS
    while True:
        seen = time.time()
        task_runs = read_all(client, f"/flow-runs/{run_id}/task-runs", MAX_TASK_RUN_PAGE)
        lines = read_all(client, f"/flow-runs/{run_id}/logs", MAX_LOG_PAGE, by_id=True)
        if len(task_runs) >= tasks and len(lines) >= tasks or time.monotonic() > give_up:
            return task_runs, lines, seen
        time.sleep(0.5)


def read_all(client: Client, path: str, limit: int, *, by_id: bool = False) -> list[Json]:
    """Every row of a paged list: page after page by offset, or after the last id seen."""
    found: list[Json] = []
    while True:
        cursor = {"after": found[-1]["id"] if found else 0} if by_id else {"offset": len(found)}
        page = client.get(path, limit=limit, **cursor)
        found += page
        if len(page) < limit:
            return found


def check(task_runs: list[Json], lines: list[Json], tasks: int) -> list[str]:
    """What is missing or wrong in the records of one run of the chain."""
    problems = []
    ids = {task_run["name"]: task_run["id"] for task_run in task_runs}
    upstream = {f"digest-{n}": [ids.get(f"digest-{n - 1}")] if n % 2 else [] for n in range(tasks)}
    if len(task_runs) != tasks or ids.keys() != upstream.keys():
        problems.append(f"{len(task_runs)} task runs ({len(ids)} names), not digest-0…{tasks - 1}")
    states = Counter(task_run["state"] for task_run in task_runs)
    if states != Counter({"COMPLETED": tasks}):
        problems.append(f"task runs by state: {dict(states)}")
    wrong = [run["name"] for run in task_runs if run["upstream"] != upstream.get(run["name"])]
    if wrong:
        problems.append(f"{len(wrong)} task runs with wrong upstream, e.g. {wrong[0]}")
    per_task_run = Counter(line["task_run_id"] for line in lines if line["task_run_id"])
    if per_task_run != Counter({task_run["id"]: 1 for task_run in task_runs}):
        problems.append(f"{sum(per_task_run.values())} task log lines for "
                        f"{len(per_task_run)} task runs, not one for each of {len(task_runs)}")
    return problems


def measure(url: str, args: argparse.Namespace) -> tuple[Json, list[str]]:
    with tempfile.TemporaryDirectory(prefix="ostinato-bench-sdk-") as tmp:
        folder = Path(tmp)
        with server(url, folder / "server") as (api, process, outcome), \
                Client(api, "") as client:
            bench = Bench(api, process, folder, folder / "unused")
            flow_file = register(bench, args.tasks)
            client.post("/work-queues", {"name": QUEUE})
            agents: Agents = {"agent-1": start_agent(bench, client, "agent-1")}
            try:
                base = baseline(bench, flow_file, args.tasks)
                done = [one_run(bench, client, agents, args.tasks, base["median_seconds"])
                        for _ in range(args.runs)]
            finally:
                stopped = stop_agents(bench, agents)
    runs = [figures for figures, _ in done]
    median = sorted(runs, key=lambda figures: figures["run_seconds"])[len(runs) // 2]
    budget = SLOWDOWN * base["median_seconds"] + PER_TASK * args.tasks
    problems = [problem for _, found in done for problem in found]
    return {"baseline": base, "runs": runs, "median_run": median,
            "budget_seconds": round(budget, 3),
            "target_met": not problems and median["run_seconds"] <= budget,
            "problems": problems, "agents": stopped, "server": outcome}, problems


# --- docs/benchmarks.md --------------------------------------------------------------------------


MEDIAN = "median_run"
ROWS = [
    ("undecorated functions (baseline): best; median s", "",
     ["baseline.best_seconds", "baseline.median_seconds"]),
    ("run by an agent, median run: whole run; flow body s", "≤ budget",
     [f"{MEDIAN}.run_seconds", f"{MEDIAN}.flow_seconds"]),
    ("budget (1.2 × baseline + 1 ms × tasks) s; met", "", ["budget_seconds", "target_met"]),
    ("overhead a task: whole run; flow body µs", "",
     [f"{MEDIAN}.overhead_us_per_task", f"{MEDIAN}.engine_us_per_task"]),
    ("run end → every record stored s", "", [f"{MEDIAN}.records_after_end_seconds"]),
    ("CPU of the run's process; the agent; the server s", "",
     [f"{MEDIAN}.cpu_seconds.{key}" for key in ("runners", "agents", "server")]),
    ("rest of the machine meanwhile (PostgreSQL included), cores busy", "",
     [f"{MEDIAN}.elsewhere_cores_busy"]),
    ("task runs; upstream edges; task log lines", "",
     [f"{MEDIAN}.{key}" for key in ("task_runs", "upstream_edges", "task_log_lines")]),
]
SECTION_INTRO = """\
`tests/benchmarks/sdk.py`: a flow of {tasks} calls of a task that hashes 8 KB 80 times and logs
one line (every odd call takes the previous result), registered with `ostinato deployment
create` and run {runs} times by one `ostinato agent start`; the baseline calls the undecorated
function the same way in a fresh `python`. Every task run, upstream edge and task log line is
checked through the API. Target: the median run takes at most 1.2 × baseline + 1 ms × tasks.
"""


def write_docs(report: Json, command: str) -> None:
    intro = SECTION_INTRO.format(tasks=f"{report['tasks']:,}", runs=report["runs"])
    write_section("Task runs", f"## Task runs\n\n{intro}\n{table(report, command, ROWS)}")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--tasks", type=int, default=TASKS)
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--postgres-url", default=os.environ.get("OSTINATO_TEST_POSTGRES_URL"))
    parser.add_argument("--write-docs", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    report: Json = {"machine": machine(), "tasks": args.tasks, "runs": args.runs, "results": {}}
    problems: list[str] = []
    for backend, make_url in backend_urls(args.backend, args.postgres_url).items():
        with make_url() as url:
            report["results"][backend], found = measure(url, args)
        problems += [f"{backend}: {problem}" for problem in found]
    print(json.dumps(report, indent=2), flush=True)
    if problems:
        raise SystemExit("records missing or wrong:\n" + "\n".join(problems))
    if args.write_docs:
        write_docs(report, "python tests/benchmarks/sdk.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
