"""Secrets stay secret: a database URL's password and API keys never reach a log line, an error
message or a repr — in the server, the client the CLI and agents use, or the settings."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from ostinato.cli import output
from ostinato.deploy.client import Client
from ostinato.deploy.errors import InvalidInput, Unauthorized
from ostinato.deploy.settings import Settings
from ostinato.queues.database import connect
from tests.conftest import RunningServer, free_port, server_subprocess

PASSWORD = "s3cr3t-pw"
KEYS = ["ost_0123456789ab_NotARealSecretButSecretEnough", "not-even-shaped-like-a-key"]
POSTGRESQL = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def with_password(url: str) -> str:
    """`url` with PASSWORD in it (PostgreSQL's trust authentication ignores it)."""
    return make_url(url).set(password=PASSWORD).render_as_string(hide_password=False)


def test_a_postgresql_url_keeps_its_password_for_connecting_and_nowhere_else() -> None:
    """`str()` of an SQLAlchemy URL masks the password: an engine built from that string
    would send `***` to the server."""
    database = connect(f"postgresql://ostinato:{PASSWORD}@db.invalid:5432/ostinato")

    assert database.engine.url.password == PASSWORD
    assert PASSWORD not in f"{database!r} {database.engine!r} {database.engine.url}"


def test_an_unreadable_database_url_is_refused_without_quoting_it() -> None:
    with pytest.raises(InvalidInput) as caught:
        connect(f"postgresql//ostinato:{PASSWORD}@db.invalid/ostinato")

    assert PASSWORD not in str(caught.value)
    assert caught.value.__suppress_context__


def test_settings_show_no_secret_in_their_repr_or_their_errors() -> None:
    settings = Settings(database_url=f"postgresql://u:{PASSWORD}@h/db", api_key=KEYS[0],
                        admin_key="a-long-enough-admin-key-of-32-characters")

    shown = repr(settings)
    assert not [secret for secret in (PASSWORD, KEYS[0], "a-long-enough") if secret in shown]
    with pytest.raises(ValueError) as caught:
        Settings(admin_key="too-short-" + KEYS[0][:10])
    assert KEYS[0][:10] not in str(caught.value)


def _refused_with_every_key(url: str) -> None:
    """Send each bad key once; the client's errors must not quote the key either."""
    for key in KEYS:
        with Client(url, key) as client, pytest.raises(Unauthorized) as caught:
            client.get("/deployments")
        assert key not in str(caught.value)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_client_logs_no_api_key_even_at_debug_level(
        server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        _refused_with_every_key(server.url)

    assert "HTTP Request" in caplog.text  # httpx did log each request
    assert not [key for key in KEYS if key in caplog.text]


@POSTGRESQL
def test_the_server_log_shows_neither_the_database_password_nor_an_api_key(
        database_url: str, tmp_path: Path) -> None:
    with server_subprocess(with_password(database_url), tmp_path) as url:
        assert httpx.get(f"{url}/health").status_code == 200
        _refused_with_every_key(url)

    log = (tmp_path / "server.log").read_text()
    assert log.count("refused an unknown, expired or revoked API key") == len(KEYS)
    assert not [secret for secret in (PASSWORD, *KEYS) if secret in log], log


@POSTGRESQL
def test_a_server_that_cannot_reach_its_database_says_so_without_the_password(
        database_url: str, tmp_path: Path) -> None:
    unreachable = make_url(with_password(database_url)).set(port=free_port())
    env = {**os.environ, "OSTINATO_HOME": str(tmp_path),
           "OSTINATO_DATABASE_URL": unreachable.render_as_string(hide_password=False)}

    started = subprocess.run(
        [sys.executable, "-m", "ostinato.cli.main", "server", "start", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60)

    output = started.stdout + started.stderr
    assert started.returncode != 0
    assert str(unreachable.port) in output, output  # the reason is shown…
    assert PASSWORD not in output  # …but not the password


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_logging_as_servers_and_agents_do_leaves_request_urls_out(
        server: RunningServer, caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A webhook's URL is often its secret; httpx would log it with every delivery."""
    for name in ("httpx", "apscheduler"):  # log_to_stderr sets them: restored after the test
        monkeypatch.setattr(logging.getLogger(name), "level", logging.getLogger(name).level)
    output.log_to_stderr("info")

    with caplog.at_level(logging.INFO):
        httpx.get(f"{server.url}/health", params={"token": "webhook-secret"})

    assert "webhook-secret" not in caplog.text
