"""The agent with real processes: `python tests/benchmarks/agent.py` prints one JSON document.

    python tests/benchmarks/agent.py [--backend sqlite|postgresql|both] [--runs N]
        [--drain-runs N] [--postgres-url URL] [--write-docs]

Each backend gets a fresh database (as claims.py does) and one `ostinato server start` on it;
a flow file in a temporary folder is registered with `ostinato deployment create` (so agents
fetch it as a bundle), a work queue with an empty filter takes its runs, and agents run as
`ostinato agent start -q QUEUE --api URL --limit 8 --name NAME`, the console script users run,
without PYTHONDONTWRITEBYTECODE (as on an ordinary install). The flow, first thing, appends to a
marker file: its run id, `time.time()`, when its process started and its own RSS. Measured:

- `agent_idle_rss_mb`: the first agent's RSS (its process and any children) once it has
  registered and has waited a few seconds in its long poll with nothing to do (target: ≤ 60 MB);
  `agents_after_runs` gives the same for every agent once all runs are done.
- `start_lag_ms`: that agent (limit 8) alone; --runs runs (200) due 200 ms apart, the first 2 s
  plus 20 ms a run after their creation began (so it has ended), each falling due while the
  agent waits in a long poll. Per run, from its scheduled time to: the server recording RUNNING
  (the run's start time: the agent reports it before it spawns the child), the child process
  starting (target: p99 ≤ 100 ms) and the flow being entered (target: p50 ≤ 400 ms);
  p50/p90/p99/max. `runner_rss_mb`: the child's RSS at flow entry, p50/max (target: ≤ 40 MB).
  A run costs about 0.25 s of CPU here: 150 ms apart would keep 2 cores ~90% busy, and the lag
  would measure runs queueing for CPU (`cores_busy` says how busy they were).
- `throughput`: a second agent (limit 8) joins; --drain-runs runs (500), all due at one instant
  after they were created; from that instant to the last run's end time in the store, runs/s
  (target: ≥ 20). Every run must end COMPLETED; the counts by state (and reason) say otherwise.
- In both phases, `cpu_ms_per_run` splits the CPU used between the server, the agents and the
  run processes (reaped children of the agents); `cores_busy` is their sum over the phase's
  seconds, and `elsewhere_cores_busy` what the rest of the machine used meanwhile.
- `agents.stop_seconds`: one SIGTERM to every agent, idle by then, until all have exited.

The flow file declares its Deployment, as users' files do, so each run imports what theirs
would. A process's start is read from /proc/self/stat (clock ticks since boot, rounded down)
against CLOCK_BOOTTIME, so it may show up to 10 ms early; psutil's `create_time()` adds the boot
time in whole seconds and is off by up to 1 s. The RSS is /proc/self/statm's, which psutil
reports as `rss`; the flow imports nothing to measure, so it does not inflate what it measures.
`--write-docs` writes the figures into the "## Agent" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
from harness import backend_urls, machine, percentile, server, stop_all, table, write_section

from ostinato.deploy.client import Client
from ostinato.queues.runs import MAX_PAGE

Json = dict[str, Any]
Agents = dict[str, subprocess.Popen[bytes]]  # by name
OSTINATO = str(Path(sys.executable).with_name("ostinato"))  # the console script of this install
QUEUE, FLOW, DEPLOYMENT = "bench-agents", "agent-bench", "probe"
LIMIT = 8
LAG_RUNS, LAG_SPACING, LAG_LEAD = 200, 0.2, 2.0
DRAIN_RUNS, DRAIN_AGENTS = 500, 2
CREATE_ALLOWANCE = 0.02  # seconds per run, added to a lead so creating them ends before it
IDLE_SETTLE = 3.0
POLL, DEADLINE = 0.25, 600.0
UNFINISHED = ["SCHEDULED", "PENDING", "RUNNING", "CANCELLING"]
TARGETS: Json = {"process_start_lag_p99_ms": 100, "flow_entry_lag_p50_ms": 400,
                 "runner_rss_mb": 40, "runs_per_second": 20, "agent_idle_rss_mb": 60}

FLOW_FILE = '''\
"""Appends when and how this run started to the marker file, then returns."""

import json
import os
import time

from ostinato.deploy import Deployment, flow


def process_start() -> float:
    """This process's start on the wall clock, to one clock tick."""
    with open("/proc/self/stat") as stat:
        ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    return time.time() - age


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@flow(name="{flow}")
def probe(marker: str) -> None:
    entered = time.time()
    line = json.dumps({{"id": os.environ["OSTINATO_FLOW_RUN_ID"], "entered": entered,
                       "started": process_start(), "rss": rss()}})
    with open(marker, "a") as out:
        out.write(line + "\\n")


deployment = Deployment(probe, name="{deployment}", parameters={{"marker": {marker!r}}})
'''


@dataclass(frozen=True)
class Bench:
    """What every phase shares: the server, the scratch folder, the marker file."""

    api: str
    server: psutil.Process
    folder: Path
    marker: Path

    def env(self) -> dict[str, str]:
        """An ordinary environment pointing at this server, with a home of its own."""
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("OSTINATO_") and key != "PYTHONDONTWRITEBYTECODE"}
        return {**env, "OSTINATO_HOME": str(self.folder / "agents"), "OSTINATO_API_URL": self.api}


# --- setting up: the flow, its deployment, the queue, the agents ---------------------------------


def register(bench: Bench) -> None:
    """Write the flow file into a folder of its own and register it, bundle and all."""
    project = bench.folder / "project"
    project.mkdir()
    flow_file = project / "probe.py"
    flow_file.write_text(FLOW_FILE.format(flow=FLOW, deployment=DEPLOYMENT,
                                          marker=str(bench.marker)))
    subprocess.run([OSTINATO, "deployment", "create", str(flow_file)], env=bench.env(),
                   check=True, stdout=subprocess.DEVNULL)


def start_agent(bench: Bench, client: Client, name: str) -> subprocess.Popen[bytes]:
    """`ostinato agent start`, returned once the server lists it."""
    with (bench.folder / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(
            [OSTINATO, "agent", "start", "-q", QUEUE, "--api", bench.api, "--limit", str(LIMIT),
             "--name", name], env=bench.env(), stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not any(agent["name"] == name for agent in client.get("/agents")):
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"agent {name} did not register (see {name}.log)")
        time.sleep(0.05)
    return process


def agent_memory(process: subprocess.Popen[bytes]) -> Json:
    """RSS of the agent's process tree (the console script is one Python process), and its
    threads: each run it supervises holds a thread."""
    root = psutil.Process(process.pid)
    tree = [root, *root.children(recursive=True)]
    rss = sum(member.memory_info().rss for member in tree)
    return {"rss_mb": round(rss / 2**20, 1), "processes": len(tree),
            "threads": root.num_threads()}


def stop_agents(bench: Bench, agents: Agents) -> Json:
    """Stop them all at once; their exit codes, how long stopping idle agents took, and the
    tracebacks their logs hold."""
    started = time.monotonic()
    codes = dict(zip(agents, stop_all(list(agents.values())), strict=True))
    tracebacks = sum((bench.folder / f"{name}.log").read_text(errors="replace")
                     .count("Traceback") for name in agents)
    return {"exit_codes": codes, "stop_seconds": round(time.monotonic() - started, 1),
            "log_tracebacks": tracebacks}


# --- runs ----------------------------------------------------------------------------------------


def create_runs(client: Client, instants: Sequence[float]) -> list[Json]:
    """One manual run due at each instant; all must be created before the first is due."""
    path = f"/deployments/{FLOW}/{DEPLOYMENT}/runs"
    created = [client.post(path, {"scheduled_time": datetime.fromtimestamp(t, UTC).isoformat()})
               for t in instants]
    if time.time() >= min(instants):
        raise SystemExit(f"creating {len(instants)} runs took longer than their lead")
    return created


def wait_finished(client: Client) -> None:
    """Until no run of the deployment is waiting, claimed or running."""
    deadline = time.monotonic() + DEADLINE
    while client.get("/flow-runs", deployment=f"{FLOW}/{DEPLOYMENT}", state=UNFINISHED,
                     limit=1):
        if time.monotonic() > deadline:
            raise SystemExit(f"runs still unfinished after {DEADLINE} s")
        time.sleep(POLL)


def read_runs(client: Client, ids: set[str]) -> list[Json]:
    """These runs as the API has them now, paged."""
    found: list[Json] = []
    offset = 0
    while True:
        page = client.get("/flow-runs", deployment=f"{FLOW}/{DEPLOYMENT}", limit=MAX_PAGE,
                          offset=offset)
        found += [run for run in page if run["id"] in ids]
        if len(page) < MAX_PAGE:
            return found
        offset += MAX_PAGE


def outcomes(done: Sequence[Json]) -> dict[str, int]:
    """How many runs ended how: COMPLETED, or the state and its reason."""
    return dict(Counter(run["state"] if run["state"] == "COMPLETED"
                        else f"{run['state']}: {run['reason']}" for run in done))


def markers(bench: Bench) -> dict[str, Json]:
    lines = bench.marker.read_text().splitlines() if bench.marker.exists() else []
    return {entry["id"]: entry for entry in map(json.loads, lines)}


def timestamp(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def spread(samples: Sequence[float], scale: float = 1000.0) -> Json:
    """Samples (seconds, unless `scale` says otherwise) as ms: count, p50/p90/p99/max."""
    ordered = sorted(samples)
    figures = {name: round(percentile(ordered, q) * scale, 1)
               for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))}
    return {"samples": len(ordered), **figures}


# --- the phases ----------------------------------------------------------------------------------


def start_lag(bench: Bench, client: Client, agents: Agents, count: int) -> Json:
    """Runs falling due one by one while the agent waits in its long poll."""
    first = time.time() + LAG_LEAD + count * CREATE_ALLOWANCE
    created = create_runs(client, [first + i * LAG_SPACING for i in range(count)])
    with cpu_meter(bench, agents) as used:
        wait_finished(client)
    done = read_runs(client, {run["id"] for run in created})
    entries = markers(bench)
    rss = [entries[run["id"]]["rss"] for run in done if run["id"] in entries]
    return {"runs": count, "states": outcomes(done), **lags(done, entries),
            "runner_rss_mb": {key: value for key, value in spread(rss, 2**-20).items()
                              if key in ("samples", "p50", "max")},
            **cpu_use(used, count, last_end(done) - first)}


def lags(done: Sequence[Json], entries: dict[str, Json]) -> Json:
    """From each run's scheduled time to RUNNING in the store, to its process's start and to
    its flow's entry."""
    found: dict[str, list[float]] = {"running_recorded": [], "process_started": [],
                                     "flow_entered": []}
    for run in done:
        due, entry = timestamp(run["scheduled_time"]), entries.get(run["id"])
        if run["start_time"]:
            found["running_recorded"].append(timestamp(run["start_time"]) - due)
        if entry:
            found["process_started"].append(entry["started"] - due)
            found["flow_entered"].append(entry["entered"] - due)
    return {name: spread(samples) for name, samples in found.items()}


def throughput(bench: Bench, client: Client, agents: Agents,
               count: int) -> Json:
    """Runs all due at one instant, taken by every agent; how fast they are worked off, and
    the CPU each run cost the server, the agents and the runs' own processes."""
    due = time.time() + LAG_LEAD + count * CREATE_ALLOWANCE
    created = create_runs(client, [due] * count)
    with cpu_meter(bench, agents) as used:
        wait_finished(client)
    done = read_runs(client, {run["id"] for run in created})
    states = outcomes(done)
    seconds = last_end(done) - due
    return {"runs": count, "agents": DRAIN_AGENTS, "limit": LIMIT, "states": states,
            "seconds": round(seconds, 2), "runs_per_second": round(count / seconds, 1),
            "all_completed": states.get("COMPLETED") == count,
            **cpu_use(used, count, seconds)}


def last_end(done: Sequence[Json]) -> float:
    return max(timestamp(run["end_time"]) for run in done if run["end_time"])


def cpu_use(used: dict[str, float], count: int, seconds: float) -> Json:
    """CPU per run by kind of process, and how many cores they kept busy together from the
    first run due to the last one ended: near the machine's count, runs queue for CPU."""
    ours = {key: used[key] for key in ("runners", "agents", "server")}
    return {"cpu_ms_per_run": {key: round(value / count * 1000, 1) for key, value in ours.items()},
            "cores_busy": round(sum(ours.values()) / seconds, 2),
            "elsewhere_cores_busy": round(used["elsewhere"], 2)}


@contextmanager
def cpu_meter(bench: Bench, agents: Agents) -> Iterator[dict[str, float]]:
    """CPU seconds the block cost the server, the agents and the run processes (the agents'
    reaped children); and the cores the rest of the machine kept busy meanwhile, since other
    work competes with the runs."""
    before, busy, wall = cpu_seconds(bench, agents), machine_busy(), time.monotonic()
    used: dict[str, float] = {}
    yield used
    after = cpu_seconds(bench, agents)
    used.update({key: after[key] - before[key] for key in after})
    elsewhere = machine_busy() - busy - sum(used.values())
    used["elsewhere"] = max(0.0, elsewhere) / (time.monotonic() - wall)


def cpu_seconds(bench: Bench, agents: Agents) -> dict[str, float]:
    """CPU so far of the server, the agents, and the runs: children the agents reaped (runs
    started as interpreters) plus their fork servers and the runs those reaped."""
    server = bench.server.cpu_times()
    own = [psutil.Process(process.pid) for process in agents.values()]
    forkers = [child.cpu_times() for agent in own for child in agent.children()]
    return {"server": server.user + server.system,
            "agents": sum(_own(agent.cpu_times()) for agent in own),
            "runners": sum(_reaped(agent.cpu_times()) for agent in own)
            + sum(_own(times) + _reaped(times) for times in forkers)}


def _own(times: Any) -> float:
    return float(times.user + times.system)


def _reaped(times: Any) -> float:
    return float(times.children_user + times.children_system)


def machine_busy() -> float:
    """CPU seconds every process on the machine has used (guest time is within user's)."""
    times = psutil.cpu_times()
    return float(times.user + times.nice + times.system + times.irq + times.softirq)


# --- one backend, the whole run ------------------------------------------------------------------


def measure(url: str, args: argparse.Namespace) -> Json:
    with tempfile.TemporaryDirectory(prefix="ostinato-bench-agent-") as tmp:
        folder = Path(tmp)
        with server(url, folder / "server") as (api, process, outcome), \
                Client(api, "") as client:
            bench = Bench(api, process, folder, folder / "markers.jsonl")
            register(bench)
            client.post("/work-queues", {"name": QUEUE})
            agents: Agents = {}
            try:
                figures = phases(bench, client, agents, args)
            finally:
                stopped = stop_agents(bench, agents)
    return {**figures, "agents": stopped, "server": outcome}


def phases(bench: Bench, client: Client, agents: Agents,
           args: argparse.Namespace) -> Json:
    """Idle, then start lag with one agent, then throughput with all; `agents` holds the
    agents started, for the caller to stop."""
    agents["agent-1"] = start_agent(bench, client, "agent-1")
    time.sleep(IDLE_SETTLE)
    figures: Json = {"agent_idle_rss_mb": agent_memory(agents["agent-1"])}
    figures["start_lag_ms"] = start_lag(bench, client, agents, args.runs)
    for number in range(2, DRAIN_AGENTS + 1):
        agents[f"agent-{number}"] = start_agent(bench, client, f"agent-{number}")
    figures["throughput"] = throughput(bench, client, agents, args.drain_runs)
    figures["agents_after_runs"] = {name: agent_memory(p) for name, p in agents.items()}
    figures["targets_met"] = targets_met(figures)
    return figures


def targets_met(figures: Json) -> dict[str, bool]:
    lag, drain = figures["start_lag_ms"], figures["throughput"]
    return {
        "process_start_lag_p99_ms": lag["process_started"]["p99"]
        <= TARGETS["process_start_lag_p99_ms"],
        "flow_entry_lag_p50_ms": lag["flow_entered"]["p50"] <= TARGETS["flow_entry_lag_p50_ms"],
        "runner_rss_mb": lag["runner_rss_mb"]["max"] <= TARGETS["runner_rss_mb"],
        "runs_per_second": drain["all_completed"]
        and drain["runs_per_second"] >= TARGETS["runs_per_second"],
        "agent_idle_rss_mb": figures["agent_idle_rss_mb"]["rss_mb"]
        <= TARGETS["agent_idle_rss_mb"],
    }


# --- docs/benchmarks.md --------------------------------------------------------------------------


LAG = "start_lag_ms"
ROWS = [
    ("agent RSS, idle in its long poll MB", "≤ 60 MB", ["agent_idle_rss_mb.rss_mb"]),
    ("scheduled → RUNNING recorded: p50; p99 ms", "",
     [f"{LAG}.running_recorded.p50", f"{LAG}.running_recorded.p99"]),
    ("scheduled → child process started: p50; p99; max ms", "p99 ≤ 100 ms",
     [f"{LAG}.process_started.p50", f"{LAG}.process_started.p99",
      f"{LAG}.process_started.max"]),
    ("scheduled → flow entered: p50; p99; max ms", "p50 ≤ 400 ms",
     [f"{LAG}.flow_entered.p50", f"{LAG}.flow_entered.p99", f"{LAG}.flow_entered.max"]),
    ("runner RSS at flow entry: p50; max MB", "≤ 40 MB",
     [f"{LAG}.runner_rss_mb.p50", f"{LAG}.runner_rss_mb.max"]),
    ("2 agents × limit 8, runs due at once: runs/s; s", "≥ 20 runs/s",
     ["throughput.runs_per_second", "throughput.seconds"]),
    ("CPU a run costs its process; the agent; the server ms", "",
     [f"throughput.cpu_ms_per_run.{key}" for key in ("runners", "agents", "server")]),
]
SECTION_INTRO = """\
`tests/benchmarks/agent.py`: `ostinato server start` on a fresh database, a flow file registered
with `ostinato deployment create`, agents as `ostinato agent start --limit 8`; one agent for runs
falling due 200 ms apart while it long-polls, then two for runs all due at once. The flow records
when its process started, when it was entered and its RSS.
"""


def write_docs(report: Json, command: str) -> None:
    write_section("Agent", f"## Agent\n\n{SECTION_INTRO}\n{table(report, command, ROWS)}")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument("--runs", type=int, default=LAG_RUNS)
    parser.add_argument("--drain-runs", type=int, default=DRAIN_RUNS)
    parser.add_argument("--postgres-url", default=os.environ.get("OSTINATO_TEST_POSTGRES_URL"))
    parser.add_argument("--write-docs", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    report: Json = {"machine": machine(), "targets": TARGETS, "runs": args.runs,
                    "drain_runs": args.drain_runs, "results": {}}
    for backend, make_url in backend_urls(args.backend, args.postgres_url).items():
        with make_url() as url:
            report["results"][backend] = measure(url, args)
    print(json.dumps(report, indent=2), flush=True)
    if args.write_docs:
        write_docs(report, "python tests/benchmarks/agent.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
