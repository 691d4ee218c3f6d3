"""How fast the command line answers: `python tests/benchmarks/cli.py` prints one JSON object.

    python tests/benchmarks/cli.py [--runs N] [--write-docs]

Measured, each as wall time from spawning the process to its exit:

- `ostinato --help`, --runs runs (10) (target: under 0.5 s);
- `ostinato deployment ls` against a running server holding 20 deployments, --runs runs
  (target: under 0.5 s);
- `ostinato server start` on a fresh SQLite home until /api/health first answers 200, 3 runs
  (target: under 3 s).

Each command runs once untimed first. Bytecode caching is left on, as on an ordinary install
(PYTHONDONTWRITEBYTECODE is removed from the children's environment). The CPU time of each run
(user + system) is reported too: on a busy machine it shows what the wall time would be alone.
`--write-docs` writes the "## Command line" section of docs/benchmarks.md (the server is on
SQLite, hence its column).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness
from harness import free_port, machine, stop, table, wait_healthy, write_section

RUNS = 10
SERVER_RUNS = 3
DEPLOYMENTS = 20
TARGETS = {"help": 0.5, "deployment_ls": 0.5, "server_health": 3.0}

FLOW_FILE = f'''
from ostinato.deploy import Cron, Deployment, flow


@flow(name="bench")
def bench(limit: int = 10) -> None:
    print(limit)


for number in range({DEPLOYMENTS}):
    globals()[f"d{{number}}"] = Deployment(
        bench, name=f"d{{number:02d}}", tags=["bench"], parameters={{"limit": number}},
        schedules=[Cron(f"{{number}} * * * *", timezone="Europe/Paris")])
'''


def ostinato() -> list[str]:
    """The console script, as users run it (the module if the script is not on PATH)."""
    script = shutil.which("ostinato")
    return [script] if script else [sys.executable, "-m", "ostinato.cli.main"]


def environment(home: Path, api_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OSTINATO_") and k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "OSTINATO_HOME": str(home), "OSTINATO_API_URL": api_url}


def timed(command: Sequence[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, cpu) seconds of one run; it must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def summary(samples: Sequence[tuple[float, float]], target: float) -> dict[str, Any]:
    walls = [wall for wall, _ in samples]
    return {"runs": len(walls), "median_s": round(statistics.median(walls), 3),
            "max_s": round(max(walls), 3), "min_s": round(min(walls), 3),
            "cpu_median_s": round(statistics.median(cpu for _, cpu in samples), 3),
            "target_s": target, "met": statistics.median(walls) < target}


def repeat(command: Sequence[str], env: dict[str, str], target: float, runs: int
           ) -> dict[str, Any]:
    timed(command, env)  # warm-up: bytecode, page cache
    return summary([timed(command, env) for _ in range(runs)], target)


def start_server(home: Path, port: int) -> subprocess.Popen[bytes]:
    """The server as users start it, through the console script."""
    env = environment(home, f"http://127.0.0.1:{port}/api")
    return harness.start_server(port, env, command=[*ostinato(), "server", "start"])


def time_to_health(root: Path) -> dict[str, Any]:
    samples = []
    for number in range(SERVER_RUNS):
        port = free_port()
        start = time.perf_counter()
        process = start_server(root / f"fresh-{number}", port)
        try:
            wait_healthy(f"http://127.0.0.1:{port}/api", process)
            samples.append(time.perf_counter() - start)
        finally:
            stop(process)
    return {"runs": len(samples), "median_s": round(statistics.median(samples), 3),
            "max_s": round(max(samples), 3), "target_s": TARGETS["server_health"],
            "met": statistics.median(samples) < TARGETS["server_health"]}


def commands(root: Path, runs: int) -> dict[str, Any]:
    port = free_port()
    home = root / "home"
    env = environment(home, f"http://127.0.0.1:{port}/api")
    server = start_server(home, port)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/api", server)
        project = root / "project"
        project.mkdir()
        (project / "flows.py").write_text(FLOW_FILE)
        subprocess.run([*ostinato(), "deployment", "create", str(project / "flows.py")],
                       env=env, check=True, stdout=subprocess.DEVNULL)
        listed = subprocess.run([*ostinato(), "deployment", "ls", "--json"], env=env,
                                check=True, capture_output=True, text=True).stdout
        assert len(json.loads(listed)) == DEPLOYMENTS
        return {"help": repeat([*ostinato(), "--help"], env, TARGETS["help"], runs),
                "deployment_ls": repeat([*ostinato(), "deployment", "ls"], env,
                                        TARGETS["deployment_ls"], runs)}
    finally:
        stop(server)


# --- docs/benchmarks.md --------------------------------------------------------------------------


ROWS = [
    ("`ostinato --help`: median; max; CPU median s", "< 0.5 s",
     ["help.median_s", "help.max_s", "help.cpu_median_s"]),
    ("`ostinato deployment ls`: median; max; CPU median s", "< 0.5 s",
     ["deployment_ls.median_s", "deployment_ls.max_s", "deployment_ls.cpu_median_s"]),
    ("`server start` → `/api/health` 200, fresh database: median; max s", "< 3 s",
     ["server_health.median_s", "server_health.max_s"]),
]
SECTION_INTRO = """\
`tests/benchmarks/cli.py`: wall time of `ostinato --help` and of `ostinato deployment ls`
against a running server with 20 deployments ({runs} runs each), and the time from spawning
`ostinato server start` on a fresh SQLite home to its first 200 from `/api/health` (3 runs).
"""
NOTES = """\
About 0.3 s of `deployment ls` is imports (`python -X importtime`): typer builds a pydantic
adapter per option (~75 ms), pydantic-settings (~50 ms), httpx (~50 ms with its optional
command-line extras kept out). The commands run with bytecode caching on, as an installed package
would; the figures vary by ±0.15 s from run to run on a busy VM, where the CPU median shows what
an idle machine would take.
"""


def write_docs(results: dict[str, Any], runs: int, command: str) -> None:
    report = {"machine": machine(), "results": {"sqlite": results}}
    write_section("Command line", f"## Command line\n\n{SECTION_INTRO.format(runs=runs)}\n"
                  f"{table(report, command, ROWS)}\n\n{NOTES}")


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="timed runs of each command")
    parser.add_argument("--write-docs", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = arguments()
    with tempfile.TemporaryDirectory(prefix="ostinato-bench-") as tmp:
        root = Path(tmp)
        results = commands(root, args.runs)
        results["server_health"] = time_to_health(root)
    results["context"] = {
        "deployments": DEPLOYMENTS, "command": " ".join(ostinato()),
        "python": sys.version.split()[0], "cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(results, indent=2))
    if args.write_docs:
        write_docs(results, args.runs, "python tests/benchmarks/cli.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
