"""What the benchmark scripts share: a fresh database per backend (SQLite in a temporary folder,
PostgreSQL in a fresh schema), a real `ostinato server start` on a free port, waited for and
stopped, percentiles, the machine's description, and the sections of docs/benchmarks.md. Scripts
run as `python tests/benchmarks/NAME.py`, so this folder is on their import path."""

from __future__ import annotations

import os
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
from sqlalchemy import create_engine, text

from ostinato.queues.database import Database, connect
from ostinato.queues.migrate import upgrade

T = TypeVar("T")
SERVER = (sys.executable, "-m", "ostinato.cli.main", "server", "start")
DOCS = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


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
    admin = create_engine(base.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    separator = "&" if "?" in base else "?"
    try:
        yield f"{base}{separator}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


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
                              cwd=DOCS.parent).stdout.strip()
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return git("rev-parse", "--short", "HEAD") + ("+changes" if dirty else "")


Rows = Sequence[tuple[str, str, Sequence[str]]]  # label, target, dotted paths into the figures


def table(report: dict[str, Any], command: str, rows: Rows) -> str:
    """The command, the machine, and one row per measure with a column per backend."""
    m = report["machine"]
    lines = [f"Command: `{command}`  ", f"Machine: {m['nproc']} CPUs (`nproc`), {m['cpu']}, "
             f"{m['memory_gb']} GB memory, Python {m['python']}; code at {m['commit']}.", "",
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
    heading), keeping every other section."""
    content = path.read_text() if path.exists() else DOCS_INTRO
    head, found, rest = content.partition(f"## {title}\n")
    following = rest.find("\n## ") if found else -1
    tail = rest[following + 1:] if following >= 0 else ""
    parts = [head.rstrip("\n"), section.rstrip("\n"), tail.rstrip("\n")]
    path.write_text("\n\n".join(part for part in parts if part) + "\n")


DOCS_INTRO = """\
# Benchmarks

Figures measured by the scripts in `tests/benchmarks/`, each section with the command that
produced it and the machine it ran on. They are snapshots, not guarantees: rerun the command to
compare a change.
"""
