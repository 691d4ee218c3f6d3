"""What the benchmark scripts share: a fresh database per backend (SQLite in a temporary folder,
PostgreSQL in a fresh schema), a real `ostinato server start` on a free port, waited for and
stopped, percentiles, the machine's description, and the sections of docs/benchmarks.md. Scripts
run as `python tests/benchmarks/NAME.py`, so this folder is on their import path.

OSTINATO_BENCHMARK_DOCS names another file for the sections to go to: `run_all.py --quick`
points it at a copy, so a smoke run exercises every `--write-docs` without touching the real
figures."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import psutil
from sqlalchemy import Engine, create_engine, text

from ostinato.queues.database import Database, connect
from ostinato.queues.migrate import upgrade

T = TypeVar("T")
SERVER = (sys.executable, "-m", "ostinato.cli.main", "server", "start")
ROOT = Path(__file__).resolve().parents[2]
DOCS = Path(os.environ.get("OSTINATO_BENCHMARK_DOCS") or ROOT / "docs" / "benchmarks.md")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int, env: Mapping[str, str], *, out: IO[Any] | int = subprocess.DEVNULL,
                 command: Sequence[str] = SERVER) -> subprocess.Popen[bytes]:
    """`ostinato server start --port PORT` with this environment, not yet waited for."""
    return subprocess.Popen([*command, "--port", str(port)], env=dict(env), stdout=out,
                            stderr=subprocess.STDOUT)


def wait_healthy(api: str, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    """Return once `{api}/health` answers 200; fail if the server exits or takes too long."""
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=2) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} at start-up")
            try:
                if http.get(f"{api}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.01)
    process.kill()
    raise RuntimeError(f"server did not answer {api}/health within {seconds} s")


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL if it has not exited within 30 s; its exit status."""
    return stop_all([process])[0]


def stop_all(processes: Sequence[subprocess.Popen[bytes]]) -> list[int]:
    """`stop` for several processes whose shutdowns overlap: one SIGTERM to each at once (a
    second one may be taken as "stop now"), then each one's exit status."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    return [_exit_status(process) for process in processes]


def _exit_status(process: subprocess.Popen[bytes]) -> int:
    if process.returncode is None:
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout=10)


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted samples (0 for none)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


# --- databases -----------------------------------------------------------------------------------


@contextmanager
def sqlite_url() -> Iterator[str]:
    """A SQLite file in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="ostinato-bench-") as folder:
        yield f"sqlite:///{Path(folder) / 'ostinato.db'}"


@contextmanager
def postgres_url(base: str) -> Iterator[str]:
    """A fresh schema of `base`, dropped afterwards (as tests/conftest.py does)."""
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = admin_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def admin_engine(base: str) -> Engine:
    """An engine on `base` itself, with the driver the store uses."""
    return create_engine(base.replace("postgresql://", "postgresql+psycopg://"))


def postgres_version(base: str) -> str:
    """The server's `SHOW server_version`, for the machine's description."""
    engine = admin_engine(base)
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar_one())
    finally:
        engine.dispose()


def backend_urls(backend: str, postgres: str | None
                 ) -> dict[str, Callable[[], AbstractContextManager[str]]]:
    """The fresh-database makers `--backend sqlite|postgresql|both` chose, by name."""
    chosen = ["sqlite", "postgresql"] if backend == "both" else [backend]
    if "postgresql" in chosen and not postgres:
        raise SystemExit("PostgreSQL needs --postgres-url or OSTINATO_TEST_POSTGRES_URL")
    makers: dict[str, Callable[[], AbstractContextManager[str]]] = {
        "sqlite": sqlite_url, "postgresql": lambda: postgres_url(postgres or "")}
    return {name: makers[name] for name in chosen}


def on_database(url: str, action: Callable[[Database], T]) -> T:
    """`action` on the database at `url`, migrated first and disposed of afterwards."""
    database = connect(url)
    try:
        upgrade(database)
        return action(database)
    finally:
        database.dispose()


# --- the server on a given database --------------------------------------------------------------


@contextmanager
def server(url: str, home: Path, loops: bool = True
           ) -> Iterator[tuple[str, psutil.Process, dict[str, Any]]]:
    """`ostinato server start` on `url`, with or without its loops; yields its API URL and
    process, and fills the dict with its exit status and its log's tracebacks once stopped."""
    port = free_port()
    env = {**os.environ, "OSTINATO_DATABASE_URL": url, "OSTINATO_HOME": str(home),
           "OSTINATO_PORT": str(port), "OSTINATO_RUN_SCHEDULER": str(loops).lower(),
           "OSTINATO_LOG_LEVEL": "warning"}
    log = home / "server.log"
    home.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = start_server(port, env, out=out)
    outcome: dict[str, Any] = {}
    try:
        api = f"http://127.0.0.1:{port}/api"
        wait_healthy(api, process)
        yield api, psutil.Process(process.pid), outcome
    finally:
        outcome["exit_code"] = stop(process)
        outcome["log_tracebacks"] = log.read_text(errors="replace").count("Traceback")


def rss_mb(process: psutil.Process) -> float:
    return round(process.memory_info().rss / 2**20, 1)


# --- the machine and docs/benchmarks.md ----------------------------------------------------------


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), "unknown")
    meminfo = Path("/proc/meminfo").read_text().split()
    memory_gb = int(meminfo[meminfo.index("MemTotal:") + 1]) / 2**20
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return {"nproc": int(nproc), "cpu": model, "memory_gb": round(memory_gb, 1),
            "python": sys.version.split()[0], "commit": revision()}


def revision() -> str:
    """The checked-out commit, marked `+changes` when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True,
                              cwd=ROOT).stdout.strip()
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + ("+changes" if dirty else "")


def load_average() -> list[float]:
    """The 1, 5 and 15 min load averages: how busy the rest of the machine was."""
    return [round(value, 2) for value in os.getloadavg()]


def machine_line(m: Mapping[str, Any]) -> str:
    """`machine()` in one line, with the PostgreSQL version when the caller added it."""
    postgresql = f", PostgreSQL {m['postgresql']}" if m.get("postgresql") else ""
    return (f"Machine: {m['nproc']} CPUs (`nproc`), {m['cpu']}, {m['memory_gb']} GB memory, "
            f"Python {m['python']}{postgresql}; code at {m['commit']}.")


Rows = Sequence[tuple[str, str, Sequence[str]]]  # label, target, dotted paths into the figures


def table(report: dict[str, Any], command: str, rows: Rows) -> str:
    """The command, the machine, and one row per measure with a column per backend."""
    lines = [f"Command: `{command}`  ", machine_line(report["machine"]), "",
             "| measure | target | " + " | ".join(report["results"]) + " |",
             "|---|---|" + "---|" * len(report["results"])]
    for label, target, paths in rows:
        cells = ["; ".join(_cell(figures, path) for path in paths)
                 for figures in report["results"].values()]
        lines.append(f"| {label} | {target} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(figures: Any, path: str) -> str:
    for key in path.split("."):
        if not isinstance(figures, dict) or key not in figures:
            return "—"
        figures = figures[key]
    if isinstance(figures, dict):  # errors by kind
        return ", ".join(f"{kind}: {count}" for kind, count in figures.items()) or "none"
    return str(figures)


def write_section(title: str, section: str, path: Path = DOCS) -> None:
    """Replace the "## {title}" section of `path` with `section` (which starts with that
    heading), or add it at the end, keeping every other section."""
    preamble, sections = split_sections(read_docs(path))
    sections[title] = section
    _write(path, preamble, sections)


def write_preamble(preamble: str, path: Path = DOCS) -> None:
    """Replace what comes before the first section of `path`, keeping every section."""
    _, sections = split_sections(read_docs(path))
    _write(path, preamble, sections)


def read_docs(path: Path = DOCS) -> str:
    return path.read_text() if path.exists() else DOCS_INTRO


def split_sections(content: str) -> tuple[str, dict[str, str]]:
    """The text before the first "## " heading, and each section from its heading on, by
    title: each script owns one section, and rewriting it must leave the others alone."""
    preamble, *sections = re.split(r"^(?=## )", content, flags=re.MULTILINE)
    return preamble, {section.split("\n", 1)[0][3:].strip(): section for section in sections}


def _write(path: Path, preamble: str, sections: Mapping[str, str]) -> None:
    parts = [preamble, *sections.values()]
    path.write_text("\n\n".join(part.rstrip("\n") for part in parts if part.strip()) + "\n")


DOCS_INTRO = """\
# Benchmarks

Figures measured by the scripts in `tests/benchmarks/`, each section with the command that
produced it and the machine it ran on. They are snapshots, not guarantees: rerun the command to
compare a change.
"""
