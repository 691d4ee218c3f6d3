"""Fixtures shared by the suite: real databases and real HTTP servers on 127.0.0.1 (in a thread
of the test process, or an `ostinato server start` process of its own).

`database` runs a test once on a fresh SQLite file and once on PostgreSQL in a fresh schema
(skipped, saying why, when OSTINATO_TEST_POSTGRES_URL is unset; CI always sets it).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import create_engine, text

from ostinato.deploy.settings import Settings
from ostinato.queues.database import Database, connect
from ostinato.queues.tables import Base
from ostinato.scheduler.app import create_app

POSTGRES_URL = os.environ.get("OSTINATO_TEST_POSTGRES_URL")
BACKENDS = ["sqlite", "postgresql"]


def _postgres_schema_url(schema: str) -> str:
    assert POSTGRES_URL
    separator = "&" if "?" in POSTGRES_URL else "?"
    return f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database of the requested backend, dropped after the test."""
    backend = getattr(request, "param", "sqlite")
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'ostinato.db'}"
        return
    if not POSTGRES_URL:
        pytest.skip("OSTINATO_TEST_POSTGRES_URL is not set (CI sets it; see .ci/run)")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL.replace("postgresql://", "postgresql+psycopg://"))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield _postgres_schema_url(schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """An empty database with the current schema."""
    db = connect(database_url)
    Base.metadata.create_all(db.engine)
    yield db
    db.dispose()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests that use a database run on every backend unless they ask for one."""
    if "database_url" in metafunc.fixturenames and not _parametrized(metafunc, "database_url"):
        metafunc.parametrize("database_url", BACKENDS, indirect=True)


def _parametrized(metafunc: pytest.Metafunc, name: str) -> bool:
    return any(name in marker.args[0] for marker in metafunc.definition.iter_markers("parametrize"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    url: str  # the API root, e.g. http://127.0.0.1:PORT/api
    database: Database
    settings: Settings
    app: FastAPI

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10)


@contextmanager
def serving(database: Database, settings: Settings) -> Iterator[RunningServer]:
    """The real app served by uvicorn on `settings.port` of loopback, in a thread of this
    process."""
    app = create_app(settings, database)
    config = uvicorn.Config(app, host="127.0.0.1", port=settings.port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "server did not start within 10 s"
        time.sleep(0.01)
    try:
        yield RunningServer(f"http://127.0.0.1:{settings.port}/api", database, settings, app)
    finally:
        uv.should_exit = True
        thread.join(timeout=15)


@pytest.fixture
def server(database: Database, tmp_path: Path) -> Iterator[RunningServer]:
    """A server without its scheduling loops, so tests decide what exists."""
    settings = Settings(home=tmp_path / "home", port=free_port(), run_scheduler=False)
    with serving(database, settings) as running:
        yield running


@pytest.fixture
def server_process(database_url: str, tmp_path: Path) -> Iterator[str]:
    """`ostinato server start` in its own process on the test's database, without its
    scheduling loops; yields the API's URL."""
    with server_subprocess(database_url, tmp_path) as url:
        yield url


@contextmanager
def server_subprocess(database_url: str, folder: Path, *args: str,
                      ca_bundle: Path | None = None) -> Iterator[str]:
    """`ostinato server start ARGS` as `server_process` runs it, with its home and log in
    `folder`; with `ca_bundle` (the CA of the certificate ARGS name) it serves HTTPS."""
    port = free_port()
    env = {**os.environ, "OSTINATO_DATABASE_URL": database_url, "OSTINATO_RUN_SCHEDULER": "false",
           "OSTINATO_HOME": str(folder / "home"), "OSTINATO_LOG_LEVEL": "warning"}
    log = folder / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "ostinato.cli.main", "server", "start",
                                   "--port", str(port), *args], env=env, stdout=out, stderr=out)
    url = f"{'https' if ca_bundle else 'http'}://127.0.0.1:{port}/api"
    try:
        verify = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else True
        _wait_for_health(url, server, log, verify)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=20)


def exit_status_after(process: subprocess.Popen[bytes], signum: int, timeout: float,
                      log: Path) -> int:
    """Send `signum`, then the exit status; fails the test, showing the process's `log`, if it
    needs more than `timeout` seconds to exit."""
    process.send_signal(signum)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{process.args!r} still running {timeout} s after signal {signum}:"
                             f"\n{log.read_text(errors='replace')}") from None


def _wait_for_health(url: str, server: subprocess.Popen[bytes], log: Path,
                     verify: ssl.SSLContext | bool = True) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/health", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"server not healthy within 30 s:\n{log.read_text()}")
