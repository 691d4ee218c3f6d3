"""Schemathesis fuzzes every operation of the real server, on SQLite and on PostgreSQL.

The OpenAPI document comes from the running server. Each operation gets schemathesis' phases:
the document's examples, boundary values of every parameter (coverage), then generated valid
and invalid requests; every other request of an operation is aimed at objects seeded
beforehand, so paths reach real rows and not only 404s. Whatever arrives, the server never
answers with a 5xx, and every refusal is a 4xx with a one-line `detail`. Examples are
derandomized: a failure CI finds is found again on any machine.

The server is keyed with an admin key (`admin_key`): the fuzzer creates API keys, and on a
keyless server the first one would lock every later request out.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import not_a_server_error

from ostinato.deploy.settings import Settings
from ostinato.queues.database import Database
from tests.conftest import free_port, serving

ADMIN_KEY = "fuzz-admin-key-" + "k" * 32
HEADERS = {"Authorization": f"Bearer {ADMIN_KEY}"}
LONG_POLL_SECONDS = 0.05  # what a claim's generated `wait_seconds` (up to 60) becomes


@dataclass
class Api:
    """The keyed server, a session speaking to it, and the objects seeded in it by the path
    parameters that name them: `existing` for every operation, `doomed` for deletions (so
    deleting does not take the others' objects away)."""

    url: str
    session: requests.Session
    existing: dict[str, dict[str, str]] = field(default_factory=dict)
    doomed: dict[str, dict[str, str]] = field(default_factory=dict)
    sent: Counter[str] = field(default_factory=Counter)

    def aim(self, case: Case) -> None:
        """Every other case of an operation names seeded objects in its path."""
        label = case.operation.label
        self.sent[label] += 1
        if self.sent[label] % 2 or not case.path_parameters:
            return
        seeded = self.doomed if case.operation.method.upper() == "DELETE" else self.existing
        names = case.path_parameters.keys()
        for prefix, values in seeded.items():
            if case.operation.path.startswith(prefix) and names <= values.keys():
                case.path_parameters.update({name: values[name] for name in names})
                return


def _bundle() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.addfile(tarfile.TarInfo("flow.py"), io.BytesIO(b""))
    return buffer.getvalue()


def _ok(response: httpx.Response) -> Any:
    assert response.status_code < 300, response.text
    return response.json() if response.content else None


def _seed_deployment(http: httpx.Client, name: str) -> None:
    _ok(http.put("/deployments", json={"deployments": [{
        "flow": "fuzz", "name": name, "entrypoint": "flow.py:main", "path": "/srv/fuzz",
        "parameters": {"day": "today"}, "tags": ["fuzz"],
        "schedules": [{"kind": "cron", "cron": "0 2 * * *"}]}]}))


def _seed_one(http: httpx.Client, name: str) -> dict[str, dict[str, str]]:
    """A deployment, a work queue, a concurrency limit and a notification rule named `name`."""
    _seed_deployment(http, name)
    _ok(http.post("/work-queues", json={"name": name, "filter": {"tags": ["fuzz"]}}))
    _ok(http.put("/concurrency-limits", json={"tag": name, "limit": 2}))
    rule = _ok(http.post("/notifications", json={"states": ["FAILED"],
                                                 "webhook": "http://127.0.0.1:9/hook"}))
    return {"/api/deployments/": {"flow": "fuzz", "name": name},
            "/api/work-queues/": {"name": name},
            "/api/concurrency-limits/": {"tag": name},
            "/api/notifications/": {"notification_id": rule["id"]}}


def _seed_run(http: httpx.Client) -> dict[str, dict[str, str]]:
    """A run claimed by a registered agent, with a log line; a bundle; an API key."""
    agent = _ok(http.post("/agents", json={"name": "fuzz-agent", "host": "h",
                                           "queues": ["nightly"]}))
    run = _ok(http.post("/deployments/fuzz/nightly/runs", json={}))
    claimed = _ok(http.post("/claims", json={"agent_id": agent["id"], "queues": ["nightly"]}))
    assert [c["id"] for c in claimed] == [run["id"]]
    _ok(http.post(f"/flow-runs/{run['id']}/events", json={"logs": [
        {"timestamp": "2026-01-01T00:00:00Z", "level": 20, "logger": "x", "message": "hi"}]}))
    data = _bundle()
    sha = hashlib.sha256(data).hexdigest()
    _ok(http.put(f"/bundles/{sha}", content=data,
                 headers={"content-type": "application/octet-stream"}))
    token = _ok(http.post("/tokens", json={"name": "fuzz", "scope": "read"}))
    return {"/api/flow-runs/": {"run_id": run["id"]}, "/api/agents/": {"agent_id": agent["id"]},
            "/api/bundles/": {"sha256": sha}, "/api/tokens/": {"key_id": token["id"]}}


@pytest.fixture
def api(database: Database, tmp_path: Path) -> Iterator[Api]:
    settings_ = Settings(home=tmp_path / "home", port=free_port(), run_scheduler=False,
                         admin_key=ADMIN_KEY)
    with (serving(database, settings_) as server, requests.Session() as session,
          httpx.Client(base_url=server.url, headers=HEADERS, timeout=10) as http):
        session.headers.update(HEADERS)
        existing = _seed_one(http, "nightly") | _seed_run(http)
        yield Api(server.url, session, existing, _seed_one(http, "doomed"))


@pytest.fixture
def api_schema(api: Api) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{api.url}/openapi.json", headers=HEADERS)


schema = schemathesis.pytest.from_fixture("api_schema")


def short_long_poll(case: Case) -> None:
    """A claim may wait up to 60 s for work; here it waits LONG_POLL_SECONDS. Out-of-range
    values are left alone: the server must still refuse them."""
    wait = case.body.get("wait_seconds") if isinstance(case.body, dict) else None
    if (case.operation.label == "POST /api/claims" and isinstance(wait, int | float)
            and not isinstance(wait, bool) and 0 < wait <= 60):
        case.body["wait_seconds"] = LONG_POLL_SECONDS


def assert_one_line_refusal(response: requests.Response) -> None:
    if response.status_code >= 400:
        detail = response.json().get("detail")
        assert isinstance(detail, str) and detail and "\n" not in detail, response.text


@schema.parametrize()
@settings(max_examples=15, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case: Case, api: Api) -> None:
    api.aim(case)
    short_long_poll(case)
    response = case.call(base_url=api.url.removesuffix("/api"), session=api.session, timeout=30)
    case.validate_response(response, checks=[not_a_server_error])
    assert_one_line_refusal(response)

