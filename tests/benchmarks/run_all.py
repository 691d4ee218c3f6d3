"""Every benchmark in turn: `python tests/benchmarks/run_all.py` refreshes docs/benchmarks.md.

    python tests/benchmarks/run_all.py [--quick] [--only NAME… | --skip NAME…]
        [--backend sqlite|postgresql|both] [--postgres-url URL]
        [--write-docs | --no-write-docs] [--out DIR]

Each script runs as a subprocess, one after another so that none measures while another loads
the machine: `python tests/benchmarks/NAME.py --backend both --write-docs` with its own sizes
(`cli.py` and `sqlite_load.py` measure SQLite whatever --backend, and take none; `claims.py`
gets `--analyze`, as its section explains). PostgreSQL is OSTINATO_TEST_POSTGRES_URL or
--postgres-url, handed down through the environment so no section's command shows it. A
script's stdout (its JSON) and stderr go to DIR (a new temporary folder unless --out), its
progress to stderr; a failing script is recorded — exit status, the tail of its stderr — and
the next one runs. Then the part of docs/benchmarks.md before its sections is rewritten: the
machine (with the PostgreSQL version), the date, the commit, this command, and per script its
status, duration, load average before and after, and a link to its section; the sections are
the scripts' own. Stdout gets one JSON summary; the exit status is 1 if any script failed.

`--quick` gives every script small sizes: a smoke run of a few minutes whose figures mean
nothing. It writes the scripts' sections and the header into DIR's copy of docs/benchmarks.md
(harness.py's OSTINATO_BENCHMARK_DOCS), never into the real one, unless --write-docs is given
too; a full run writes the real one unless --no-write-docs. Each script's docstring and section
say what it measures; their figures add up to about 15 minutes for a full run on 2 CPUs, the
first materialisations, the claims and the agents' runs falling due taking most of it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness import (
    DOCS,
    DOCS_INTRO,
    ROOT,
    load_average,
    machine,
    machine_line,
    postgres_version,
    read_docs,
    split_sections,
    write_preamble,
)

Json = dict[str, Any]
HERE = Path(__file__).resolve().parent
HEARTBEAT = 30.0  # seconds between "still running" lines
TAIL = 20  # lines of a failing script's stderr kept in the summary


@dataclass(frozen=True)
class Script:
    """A benchmark script: the sizes a smoke run gives it, the arguments it always gets, and
    whether it takes --backend."""

    name: str
    quick: tuple[str, ...]
    always: tuple[str, ...] = ()
    backends: bool = True


SCRIPTS = (
    Script("scheduler", ("--deployments", "50", "--api-seconds", "1")),
    Script("claims", ("--runs", "200", "--single-runs", "50", "--samples", "10",
                      "--idle-polls", "50"), always=("--analyze",)),
    Script("agent", ("--runs", "10", "--drain-runs", "20")),
    Script("cli", ("--runs", "2"), backends=False),
    Script("sdk", ("--tasks", "20", "--runs", "1")),
    Script("retention", ("--old-runs", "2000", "--purge-runs", "500", "--claims", "20",
                         "--deployments", "10")),
    Script("ui", ("--runs", "2000", "--requests", "2")),
    Script("sqlite_load", ("--seconds", "2", "--clients", "2"), backends=False),
)
NAMES = [script.name for script in SCRIPTS]


# --- what to run ---------------------------------------------------------------------------------


def arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, for a smoke run; writes no real docs")
    chosen = parser.add_mutually_exclusive_group()
    names = f"among {', '.join(NAMES)}"
    chosen.add_argument("--only", nargs="+", choices=NAMES, metavar="NAME", help=names)
    chosen.add_argument("--skip", nargs="+", choices=NAMES, metavar="NAME", default=[],
                        help=names)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--postgres-url", default=os.environ.get("OSTINATO_TEST_POSTGRES_URL"))
    parser.add_argument("--write-docs", action=argparse.BooleanOptionalAction,
                        help="write docs/benchmarks.md (default: yes, unless --quick)")
    parser.add_argument("--out", type=Path, help="for the scripts' output (default: a new "
                                                 "temporary folder, kept)")
    args = parser.parse_args(argv)
    if args.write_docs is None:
        args.write_docs = not args.quick
    if needs_postgres(args) and not args.postgres_url:
        parser.error("PostgreSQL needs --postgres-url or OSTINATO_TEST_POSTGRES_URL")
    return args


def selected(args: argparse.Namespace) -> list[Script]:
    return [script for script in SCRIPTS
            if (args.only is None or script.name in args.only) and script.name not in args.skip]


def needs_postgres(args: argparse.Namespace) -> bool:
    return args.backend != "sqlite" and any(script.backends for script in selected(args))


def script_arguments(script: Script, args: argparse.Namespace) -> list[str]:
    """What follows `tests/benchmarks/NAME.py` on its command line."""
    backend = ["--backend", args.backend] if script.backends else []
    return [*backend, *script.always, *(script.quick if args.quick else ()), "--write-docs"]


def backends(script: Script, args: argparse.Namespace) -> list[str]:
    if not script.backends:
        return ["sqlite"]
    return ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]


def environment(args: argparse.Namespace, docs: Path) -> dict[str, str]:
    """Ours, with the document the sections go to and the PostgreSQL to measure."""
    env = {**os.environ, "OSTINATO_BENCHMARK_DOCS": str(docs)}
    if args.postgres_url:
        env["OSTINATO_TEST_POSTGRES_URL"] = args.postgres_url
    return env


# --- running one script --------------------------------------------------------------------------


def run_script(script: Script, args: argparse.Namespace, env: Mapping[str, str], out: Path
               ) -> Json:
    """Run it to its end; its exit status, duration, the load average around it, and where
    its output went."""
    argv = script_arguments(script, args)
    stdout, stderr = out / f"{script.name}.stdout", out / f"{script.name}.stderr"
    before, started = load_average(), time.monotonic()
    with stdout.open("wb") as out_file, stderr.open("wb") as err_file:
        process = subprocess.Popen([sys.executable, str(HERE / f"{script.name}.py"), *argv],
                                   stdout=out_file, stderr=err_file, env=dict(env), cwd=ROOT)
        code = wait_reporting(process, script.name, started)
    outcome: Json = {
        "name": script.name, "command": " ".join(["python", f"tests/benchmarks/{script.name}.py",
                                                 *argv]),
        "backends": backends(script, args), "exit_code": code,
        "status": "ok" if code == 0 else f"failed (exit {code})",
        "seconds": round(time.monotonic() - started, 1),
        "load_average": {"before": before, "after": load_average()},
        "stdout": str(stdout), "stderr": str(stderr)}
    if code:
        outcome["stderr_tail"] = tail(stderr)
    return outcome


def wait_reporting(process: subprocess.Popen[bytes], name: str, started: float) -> int:
    """Its exit status, saying every HEARTBEAT seconds that it still runs."""
    while True:
        try:
            return process.wait(timeout=HEARTBEAT)
        except subprocess.TimeoutExpired:
            say(f"  {name}.py still running, {duration(time.monotonic() - started)}")


def tail(path: Path, lines: int = TAIL) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def duration(seconds: float) -> str:
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# --- docs/benchmarks.md's header -----------------------------------------------------------------


def section_of(name: str, sections: Mapping[str, str]) -> str | None:
    """The title of the section `name`.py wrote: the one whose text starts by naming it."""
    marker = f"`tests/benchmarks/{name}.py`"
    return next((title for title, text in sections.items()
                 if text.split("\n", 1)[-1].lstrip().startswith(marker)), None)


def anchor(title: str) -> str:
    """The fragment a Markdown renderer (GitHub's) gives a heading."""
    return "#" + re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def header(run: Json) -> str:
    """What docs/benchmarks.md says before its sections: the run, the machine, each script."""
    quick = ("; `--quick`: small sizes, a smoke run whose figures mean nothing"
             if run["quick"] else "")
    lines = [DOCS_INTRO, f"Last run: `{run['command']}` on {run['date']}, "
             f"{duration(run['seconds'])}{quick}.  ", machine_line(run["machine"]), "",
             "| script | backends | status | duration | load average (1 min): before → after "
             "| section |", "|---|---|---|---|---|---|", *map(row, run["scripts"])]
    return "\n".join(lines) + "\n"


def row(entry: Json) -> str:
    section = entry.get("section")
    link = f"[{section}]({anchor(section)})" if section else "—"
    if section and entry["status"] != "ok":
        link += ", from an earlier run"
    if "seconds" not in entry:
        return f"| `{entry['name']}.py` | — | {entry['status']} | — | — | {link} |"
    load = entry["load_average"]
    return (f"| `{entry['name']}.py` | {', '.join(entry['backends'])} | {entry['status']} "
            f"| {duration(entry['seconds'])} | {load['before'][0]} → {load['after'][0]} "
            f"| {link} |")


# --- the whole run -------------------------------------------------------------------------------


def describe(args: argparse.Namespace) -> Json:
    """The machine, with the PostgreSQL version when PostgreSQL is measured."""
    found = machine()
    if needs_postgres(args):
        found["postgresql"] = postgres_version(args.postgres_url)
    return found


def docs_for(args: argparse.Namespace, out: Path) -> Path:
    """The real docs/benchmarks.md, or a copy in `out` that a smoke run may scribble on."""
    if args.write_docs:
        return DOCS
    copy = out / DOCS.name
    if DOCS.exists():
        shutil.copyfile(DOCS, copy)
    return copy


def run_scripts(args: argparse.Namespace, env: Mapping[str, str], out: Path) -> list[Json]:
    """Every script of this run, in order, then where each one's section is; the scripts not
    chosen as "not run"."""
    chosen = selected(args)
    outcomes: dict[str, Json] = {}
    for number, script in enumerate(chosen, 1):
        say(f"[{number}/{len(chosen)}] {script.name}.py {' '.join(script_arguments(script, args))}")
        outcomes[script.name] = outcome = run_script(script, args, env, out)
        say(f"[{number}/{len(chosen)}] {script.name}.py: {outcome['status']}, "
            f"{duration(outcome['seconds'])}")
        if outcome["exit_code"]:
            say(outcome["stderr_tail"])
    return [outcomes.get(script.name, {"name": script.name, "status": "not run"})
            for script in SCRIPTS]


def main() -> None:
    args = arguments(sys.argv[1:])
    out = args.out or Path(tempfile.mkdtemp(prefix="ostinato-benchmarks-"))
    out.mkdir(parents=True, exist_ok=True)
    docs = docs_for(args, out)
    run: Json = {"command": " ".join(["python tests/benchmarks/run_all.py", *sys.argv[1:]]),
                 "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "quick": args.quick,
                 "machine": describe(args), "out": str(out), "docs": str(docs),
                 "real_docs": args.write_docs}
    say(f"output in {out}; sections and header to {docs}")
    started = time.monotonic()
    run["scripts"] = run_scripts(args, environment(args, docs), out)
    run["seconds"] = round(time.monotonic() - started, 1)
    _, sections = split_sections(read_docs(docs))
    for entry in run["scripts"]:
        entry["section"] = section_of(entry["name"], sections)
    write_preamble(header(run), docs)
    run["failed"] = [entry["name"] for entry in run["scripts"] if entry.get("exit_code")]
    say(f"{len(run['failed'])} failed of {len(selected(args))}, {duration(run['seconds'])}")
    print(json.dumps(run, indent=2))
    sys.exit(1 if run["failed"] else 0)


if __name__ == "__main__":
    main()
