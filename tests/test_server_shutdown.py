"""`ostinato server start` exits promptly on SIGTERM even while agents hold long polls open: each
waiting poll answers at once (no runs) instead of holding the shutdown up until its wait ends.

Run several times on each backend, since a shutdown must be prompt every time, not usually.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import _wait_for_health, free_port

POLLS = 5
POLL_WAIT_SECONDS = 60
EXIT_SECONDS = 5.0  # after SIGTERM; typically under 1 s, and 10 s if the polls held it up
SETTLE_SECONDS = 0.5  # for the polls to reach the server and start waiting


@dataclass
class Server:
    """One `ostinato server start` process; its stdout and stderr go to `log`."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Iterator[Server]:
    """`ostinato server start` on the test's database, healthy; killed after if still running."""
    port, log = free_port(), tmp_path / "server.log"
    env = {**os.environ, "OSTINATO_DATABASE_URL": database_url,
           "OSTINATO_HOME": str(tmp_path / "home"), "OSTINATO_LOG_LEVEL": "warning"}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "ostinato.cli.main", "server", "start", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_for_health(url, process, log)
        yield Server(process, url, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def _long_poll(url: str, agent_id: str, outcomes: list[object]) -> None:
    """One claim that would wait a minute; records the runs it got, or the transport error."""
    body = {"agent_id": agent_id, "queues": ["default"], "limit": 1,
            "wait_seconds": POLL_WAIT_SECONDS}
    try:
        response = httpx.post(f"{url}/claims", json=body, timeout=POLL_WAIT_SECONDS + 10)
        outcomes.append(response.json())
    except httpx.TransportError as exc:  # a closed connection is an answer too
        outcomes.append(type(exc).__name__)


def _open_long_polls(url: str, outcomes: list[object]) -> list[threading.Thread]:
    """POLLS claims of one agent, waiting on an empty queue; each adds its outcome."""
    httpx.post(f"{url}/work-queues", json={"name": "default"}).raise_for_status()
    agent = httpx.post(f"{url}/agents", json={"name": "waiting", "host": "test",
                                              "queues": ["default"]}).json()
    polls = [threading.Thread(target=_long_poll, args=(url, agent["id"], outcomes), daemon=True)
             for _ in range(POLLS)]
    for poll in polls:
        poll.start()
    time.sleep(SETTLE_SECONDS)
    return polls


@pytest.mark.parametrize("attempt", range(3))
def test_sigterm_stops_the_server_promptly_while_long_polls_wait(server: Server,
                                                                  attempt: int) -> None:
    outcomes: list[object] = []
    polls = _open_long_polls(server.url, outcomes)
    assert all(poll.is_alive() for poll in polls), f"answered before any shutdown: {outcomes}"
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=EXIT_SECONDS + 5) == 0, server.output()
    assert time.monotonic() - started < EXIT_SECONDS, server.output()
    for poll in polls:
        poll.join(timeout=1)
    assert not any(poll.is_alive() for poll in polls), "a long poll still hangs"
    answered_or_closed = [o for o in outcomes if o == [] or isinstance(o, str)]
    assert len(answered_or_closed) == POLLS, outcomes
