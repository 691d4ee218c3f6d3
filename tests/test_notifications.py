"""Notifications, end to end: rules made through the API and the CLI, runs ended as an agent
ends them (claim, then state reports), documents posted by the server's own loop to a real
HTTP receiver on 127.0.0.1 — on SQLite and on PostgreSQL.

The server's loops run every 0.1 s and retry after 0.2 s (doubling), so a test waits a few
tenths of a second for what takes seconds with the defaults.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from ostinato.deploy.settings import Settings
from ostinato.queues.database import Database, connect
from ostinato.queues.notifications import Backoff
from tests.conftest import RunningServer, free_port, serving
from tests.test_cli import RUN_FIELDS, api_get, assert_user_error, cli

INTERVAL = 0.1
RETRY = 0.2
LATE_THRESHOLD = 0.2
SETTLE = 4 * INTERVAL  # passes enough for a second document, were one ever sent
DEPLOYMENTS = [
    {"flow": "etl", "name": "nightly", "entrypoint": "etl.py:etl", "path": "/srv/flows",
     "tags": ["etl"]},
    {"flow": "etl", "name": "hourly", "entrypoint": "etl.py:etl", "path": "/srv/flows"},
]


# --- a webhook receiver --------------------------------------------------------------------------


@dataclass
class Post:
    document: dict[str, Any]
    received: datetime
    user_agent: str


@dataclass
class Receiver:
    """Records every document posted to it, answering each with the next of `answers` (200 once
    they run out). While `hold` is clear, requests wait for it (at most 10 s)."""

    answers: list[int] = field(default_factory=list)
    posts: list[Post] = field(default_factory=list)
    hold: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def answer(self, body: bytes, user_agent: str) -> int:
        self.posts.append(Post(json.loads(body), datetime.now(UTC), user_agent))
        self.hold.wait(timeout=10)
        return self.answers.pop(0) if self.answers else 200

    def wait_for(self, count: int, timeout: float = 10) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.posts) < count:
            assert time.monotonic() < deadline, f"{len(self.posts)} posts after {timeout} s"
            time.sleep(0.02)
        return [post.document for post in self.posts]


@contextmanager
def receiving(*answers: int) -> Iterator[Receiver]:
    receiver = Receiver(list(answers))
    receiver.hold.set()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's spelling)
            body = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(receiver.answer(body, self.headers["User-Agent"]))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver.url = f"http://127.0.0.1:{http.server_address[1]}/hook"
    thread = threading.Thread(target=http.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.hold.set()
        http.shutdown()
        http.server_close()


# --- a server whose loops notify quickly, and runs ended as an agent ends them -------------------


def fast_settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", port=free_port(), scheduler_interval_seconds=INTERVAL,
                    notification_retry_seconds=RETRY, notification_timeout_seconds=5,
                    late_threshold_seconds=LATE_THRESHOLD)


@pytest.fixture
def notifying(database: Database, tmp_path: Path) -> Iterator[RunningServer]:
    """A server running its loops every 0.1 s, with two deployments and a queue for all runs."""
    with serving(database, fast_settings(tmp_path)) as running, running.client() as http:
        http.put("/deployments", json={"deployments": DEPLOYMENTS}).raise_for_status()
        http.post("/work-queues", json={"name": "all"}).raise_for_status()
        yield running


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response.json() if response.content else None


def claimed_run(http: httpx.Client, deployment: str) -> dict[str, Any]:
    """A manual run of `deployment`, due now, claimed by an agent."""
    ok(http.post(f"/deployments/{deployment}/runs", json={}), 201)
    agent = ok(http.post("/agents", json={"name": "worker", "host": "h", "queues": ["all"]}))
    (run,) = ok(http.post("/claims", json={"agent_id": agent["id"], "queues": ["all"]}))
    return dict(run)


def end_run(http: httpx.Client, deployment: str, state: str) -> str:
    """A run of `deployment` claimed, started and ended in `state` by its agent; its id."""
    run = claimed_run(http, deployment)
    for report in ("RUNNING", state):
        ok(http.post(f"/flow-runs/{run['id']}/state",
                     json={"state": report, "fencing_token": run["fencing_token"]}))
    return str(run["id"])


def deliveries(http: httpx.Client, **params: str) -> list[dict[str, Any]]:
    return list(ok(http.get("/notifications/deliveries", params=params)))


# --- documents -----------------------------------------------------------------------------------


def test_a_failed_run_posts_exactly_one_document_even_with_two_servers(
        notifying: RunningServer, database_url: str, tmp_path: Path) -> None:
    other = connect(database_url)  # a second server on the same database, with its own pool
    with receiving() as receiver, serving(other, fast_settings(tmp_path)), \
            notifying.client() as http:
        rule = ok(http.post("/notifications", json={
            "states": ["crashed", "FAILED"], "deployment": "etl/nightly",
            "webhook": receiver.url}), 201)
        assert rule["states"] == ["FAILED", "CRASHED"]
        end_run(http, "etl/nightly", "COMPLETED")  # not a watched state
        end_run(http, "etl/hourly", "FAILED")  # not the watched deployment
        failed = end_run(http, "etl/nightly", "FAILED")

        (document,) = receiver.wait_for(1)
        time.sleep(SETTLE)
        assert len(receiver.posts) == 1
        (delivery,) = deliveries(http)
        listed = ok(http.get("/notifications"))
    other.dispose()

    assert document["event"] == "state" and document["notification"] == rule["id"]
    assert (document["state"], document["state_name"]) == ("FAILED", "Failed")
    assert document["flow_run"]["id"] == failed and RUN_FIELDS <= set(document["flow_run"])
    assert document["timestamp"] == document["flow_run"]["end_time"]
    assert document["text"].startswith("etl/nightly: run ") and "FAILED" in document["text"]
    assert receiver.posts[0].user_agent.startswith("ostinato/")
    assert document["id"] == delivery["id"]
    assert (delivery["status"], delivery["attempts"], delivery["last_status_code"]) == (
        "delivered", 1, 200)
    assert delivery["next_attempt_at"] is None and delivery["delivered_at"] is not None
    assert listed[0]["deliveries"] == {"pending": 0, "delivered": 1, "failed": 0}


def test_a_refusing_receiver_gets_the_document_on_the_third_try(
        notifying: RunningServer) -> None:
    with receiving(500, 500) as receiver, notifying.client() as http:
        ok(http.post("/notifications", json={"states": ["FAILED"], "tag": "etl",
                                             "webhook": receiver.url}), 201)
        end_run(http, "etl/nightly", "FAILED")

        first, second, third = receiver.wait_for(3)
        time.sleep(SETTLE)
        (delivery,) = deliveries(http, status="delivered")

    assert len(receiver.posts) == 3
    assert first == second == third  # one document, sent again as it was
    assert (delivery["status"], delivery["attempts"]) == ("delivered", 3)
    assert (delivery["last_status_code"], delivery["last_error"]) == (200, None)
    times = [post.received for post in receiver.posts]
    assert times[1] - times[0] >= timedelta(seconds=RETRY)  # back-off: 0.2 s, then 0.4 s
    assert times[2] - times[1] >= timedelta(seconds=2 * RETRY)


def test_a_run_late_too_long_posts_a_late_document(notifying: RunningServer) -> None:
    with receiving() as receiver, notifying.client() as http:
        rule = ok(http.post("/notifications", json={"late_after": 0.3,
                                                    "webhook": receiver.url}), 201)
        ok(http.post("/deployments/etl/hourly/runs", json={"start_in": 3600}), 201)  # not late
        run = ok(http.post("/deployments/etl/nightly/runs", json={}), 201)

        (document,) = receiver.wait_for(1)
        time.sleep(SETTLE)

    assert len(receiver.posts) == 1
    assert (document["event"], document["notification"]) == ("late", rule["id"])
    assert (document["state"], document["state_name"]) == ("SCHEDULED", "Late")
    assert document["flow_run"]["id"] == run["id"] and "is late" in document["text"]
    late_since = datetime.fromisoformat(run["scheduled_time"]) + timedelta(
        seconds=LATE_THRESHOLD + 0.3)
    assert datetime.fromisoformat(document["timestamp"]) == late_since
    assert receiver.posts[0].received >= late_since


def test_a_receiver_that_hangs_never_holds_up_claims(notifying: RunningServer) -> None:
    with receiving() as receiver, notifying.client() as http:
        receiver.hold.clear()
        ok(http.post("/notifications", json={"states": ["FAILED"], "webhook": receiver.url}),
           201)
        end_run(http, "etl/nightly", "FAILED")
        receiver.wait_for(1)  # the loop is now waiting for the receiver's answer

        started = time.monotonic()
        claimed_run(http, "etl/hourly")
        took = time.monotonic() - started
        assert not receiver.hold.is_set()  # still hanging
    assert took < 2, f"a claim took {took:.2f} s while a webhook hung"


def test_back_off_doubles_up_to_its_cap() -> None:
    backoff = Backoff(first=timedelta(seconds=5), cap=timedelta(seconds=30))
    assert [backoff.delay(n).total_seconds() for n in (1, 2, 3, 4, 100)] == [5, 10, 20, 30, 30]


# --- the CLI -------------------------------------------------------------------------------------


WEBHOOK = "http://example.com/hook"


@pytest.mark.parametrize("args, fragment", [
    (["--state", "FAILED", "--webhook", "ftp://example.com/hook"], "http:// or https://"),
    (["--state", "EXPLODED", "--webhook", WEBHOOK], "unknown state 'EXPLODED'"),
    (["--state", "FAILED", "--deployment", "etl/nightly", "--tag", "etl", "--webhook", WEBHOOK],
     "not both"),
    (["--webhook", WEBHOOK], "states to watch or late_after"),
], ids=["url scheme", "unknown state", "deployment and tag", "nothing to watch"])
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the server decides alone
def test_bad_input_is_one_line_and_creates_nothing(server: RunningServer, args: list[str],
                                                   fragment: str) -> None:
    assert_user_error(cli(server.url, "notification", "create", *args), fragment)
    assert api_get(server.url, "/notifications") == []


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_api_refuses_what_no_rule_could_watch(server: RunningServer) -> None:
    with server.client() as http:
        ok(http.put("/deployments", json={"deployments": DEPLOYMENTS}))
        refusals = [http.post("/notifications", json={"webhook": WEBHOOK, **body}) for body in (
            {"states": ["RUNNING"]}, {"states": ["FAILED"], "deployment": "etl/missing"},
            {"late_after": 0}, {"states": ["FAILED"], "webhook": "http:///no-host"},
            {"states": ["FAILED"], "url": WEBHOOK})]
        assert ok(http.get("/notifications")) == []
    assert [response.status_code for response in refusals] == [422, 404, 422, 422, 422]
    assert "RUNNING cannot be watched" in refusals[0].json()["detail"]
    assert "deployment 'etl/missing' not found" == refusals[1].json()["detail"]


# The CLI only talks to the API; the API's listings are checked on both backends above.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_create_ls_and_delete(notifying: RunningServer) -> None:
    url = notifying.url
    with receiving(*[500] * 20) as receiver, notifying.client() as http:
        created = cli(url, "notification", "create", "--state", "FAILED", "--state", "CRASHED",
                      "--late-after", "10m", "--deployment", "etl/nightly", "--webhook",
                      receiver.url, "--json").json()
        tagged = ok(http.post("/notifications", json={"states": ["COMPLETED"], "tag": "etl",
                                                      "webhook": WEBHOOK}), 201)
        end_run(http, "etl/nightly", "FAILED")
        receiver.wait_for(1)

        listed = cli(url, "notification", "ls", "--json").json()
        table = cli(url, "notification", "ls").stdout
        shown = cli(url, "notification", "ls", "--deliveries", "--status", "pending").stdout
        (delivery,) = deliveries(http, notification=created["id"])

    assert (created["states"], created["late_after"]) == (["FAILED", "CRASHED"], 600)
    assert (created["deployment"], created["tag"]) == ("etl/nightly", None)
    assert listed == api_get(url, "/notifications")
    assert [rule["id"] for rule in listed] == [created["id"], tagged["id"]]
    rows = {line.split()[0]: line for line in table.splitlines()[2:]}
    assert "FAILED, CRASHED, late 10m" in rows[created["id"]]
    assert "etl/nightly" in rows[created["id"]] and receiver.url in rows[created["id"]]
    assert "COMPLETED" in rows[tagged["id"]] and "tag etl" in rows[tagged["id"]]
    assert delivery["status"] == "pending" and delivery["last_status_code"] == 500
    assert delivery["flow_run_id"] in shown and "HTTP 500" in shown

    deleted = cli(url, "notification", "delete", created["id"])
    assert deleted.code == 0 and created["id"] in deleted.stdout
    assert [rule["id"] for rule in api_get(url, "/notifications")] == [tagged["id"]]
    assert api_get(url, "/notifications/deliveries") == []
    assert_user_error(cli(url, "notification", "delete", created["id"]), "not found")
