"""API keys and scopes against a real server: every endpoint's rule, queue limits of agent keys,
expiry, revocation, keyless servers, the admin key setting and failed-authentication limits."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from ostinato.deploy.schemas import Scope, TokenRequest, WorkQueueSpec
from ostinato.deploy.settings import Settings
from ostinato.queues import api_keys, work_queues
from ostinato.queues.database import Database
from ostinato.queues.runs import new_run_values
from ostinato.queues.tables import flow_runs
from tests.conftest import RunningServer, free_port, serving
from tests.test_cli import assert_user_error, cli

REMOTE = "203.0.113.7"  # a documentation address: not this host

# Who besides an admin key may use each endpoint: everyone, `read` keys, `agent` keys, or both.
ACCESS = {
    ("GET", "/api/health"): "public",
    ("PUT", "/api/deployments"): "admin",
    ("GET", "/api/deployments"): "read",
    ("GET", "/api/deployments/{flow}/{name}"): "read",
    ("PATCH", "/api/deployments/{flow}/{name}"): "admin",
    ("POST", "/api/deployments/{flow}/{name}/pause"): "admin",
    ("POST", "/api/deployments/{flow}/{name}/resume"): "admin",
    ("DELETE", "/api/deployments/{flow}/{name}"): "admin",
    ("POST", "/api/deployments/{flow}/{name}/runs"): "admin",
    ("GET", "/api/deployments/{flow}/{name}/upcoming"): "read",
    ("POST", "/api/deployments/{flow}/{name}/backfill"): "admin",
    ("GET", "/api/flow-runs"): "read",
    ("GET", "/api/flow-runs/{run_id}"): "read",
    ("GET", "/api/flow-runs/{run_id}/states"): "read",
    ("POST", "/api/flow-runs/{run_id}/state"): "agent",
    ("POST", "/api/flow-runs/{run_id}/events"): "agent",
    ("GET", "/api/flow-runs/{run_id}/task-runs"): "read",
    ("GET", "/api/flow-runs/{run_id}/logs"): "read",
    ("POST", "/api/flow-runs/{run_id}/cancel"): "admin",
    ("GET", "/api/flow-runs/{run_id}/explain"): "read",
    ("POST", "/api/work-queues"): "admin",
    ("GET", "/api/work-queues"): "read",
    ("GET", "/api/work-queues/{name}/preview"): "read",
    ("GET", "/api/work-queues/{name}"): "read",
    ("PATCH", "/api/work-queues/{name}"): "admin",
    ("POST", "/api/work-queues/{name}/pause"): "admin",
    ("POST", "/api/work-queues/{name}/resume"): "admin",
    ("DELETE", "/api/work-queues/{name}"): "admin",
    ("PUT", "/api/bundles/{sha256}"): "admin",
    ("GET", "/api/bundles/{sha256}/info"): "read+agent",
    ("GET", "/api/bundles/{sha256}"): "read+agent",
    ("POST", "/api/agents"): "agent",
    ("GET", "/api/agents"): "read",
    ("POST", "/api/agents/{agent_id}/heartbeat"): "agent",
    ("POST", "/api/claims"): "agent",
    ("PUT", "/api/concurrency-limits"): "admin",
    ("GET", "/api/concurrency-limits"): "read",
    ("GET", "/api/concurrency-limits/{tag}"): "read",
    ("DELETE", "/api/concurrency-limits/{tag}"): "admin",
    ("POST", "/api/tokens"): "admin",
    ("GET", "/api/tokens"): "admin",
    ("POST", "/api/tokens/{key_id}/revoke"): "admin",
    ("POST", "/api/notifications"): "admin",
    ("GET", "/api/notifications"): "admin",
    ("GET", "/api/notifications/deliveries"): "read",
    ("GET", "/api/notifications/{notification_id}"): "admin",
    ("DELETE", "/api/notifications/{notification_id}"): "admin",
    ("GET", "/metrics"): "read",
}
ALLOWED = {  # the callers each rule lets through
    "public": {"admin", "read", "agent", "nobody"},
    "read": {"admin", "read"},
    "agent": {"admin", "agent"},
    "read+agent": {"admin", "read", "agent"},
    "admin": {"admin"},
}
PATH_VALUES = {"flow": "f", "name": "n", "run_id": str(uuid.uuid4()), "tag": "t",
               "agent_id": str(uuid.uuid4()), "sha256": "0" * 64, "key_id": "0123456789ab",
               "notification_id": str(uuid.uuid4())}


def _key(database: Database, scope: Scope, queues: list[str] | None = None,
         expires_in: float | None = None, made_ago: timedelta = timedelta(0)) -> str:
    request = TokenRequest(name=f"test-{scope}", scope=scope, queues=queues or [],
                           expires_in=expires_in)
    with database.write() as conn:
        return api_keys.create_key(conn, request, datetime.now(UTC) - made_ago).key


@dataclass
class Keys:
    admin: str
    read: str
    agent: str  # for queue alpha only


@pytest.fixture
def keys(server: RunningServer) -> Keys:
    db = server.database
    with db.write() as conn:
        for queue in ("alpha", "beta"):
            work_queues.create(conn, WorkQueueSpec(name=queue))
    return Keys(_key(db, Scope.ADMIN), _key(db, Scope.READ), _key(db, Scope.AGENT, ["alpha"]))


def _client(server: RunningServer, key: str | None, base_url: str = "",
            **headers: str) -> httpx.Client:
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.Client(base_url=base_url or server.url, headers=headers, timeout=10)


def _remote_client(server: RunningServer, key: str | None = None) -> httpx.Client:
    """A client the server takes for another host's: as behind a reverse proxy on its own host,
    whose X-Forwarded-For uvicorn trusts from loopback."""
    return _client(server, key, **{"X-Forwarded-For": REMOTE})


def _api_routes(server: RunningServer) -> set[tuple[str, str]]:
    paths = server.app.openapi()["paths"]
    return {(method.upper(), path) for path, item in paths.items() for method in item}


def test_every_endpoint_has_a_rule(server: RunningServer) -> None:
    assert _api_routes(server) == set(ACCESS)


def test_every_endpoint_lets_through_exactly_the_scopes_of_its_rule(
        server: RunningServer, keys: Keys) -> None:
    root = server.url.removesuffix("/api")
    callers = {who: _client(server, key, base_url=root) for who, key in (
        ("admin", keys.admin), ("read", keys.read), ("agent", keys.agent), ("nobody", None))}
    wrong = []
    for (method, template), rule in ACCESS.items():
        path = template.format(**PATH_VALUES)
        for who, client in callers.items():
            status = client.request(method, path, json={}).status_code
            if (status not in (401, 403)) != (who in ALLOWED[rule]):
                wrong.append(f"{who} {method} {template}: {status}")
    assert wrong == []


def test_an_agent_key_works_only_for_its_queues(server: RunningServer, keys: Keys) -> None:
    admin, agent = _client(server, keys.admin), _client(server, keys.agent)
    other = admin.post("/agents", json={"name": "vm-b", "host": "h", "queues": ["beta"]}).json()
    mine = agent.post("/agents", json={"name": "vm-a", "host": "h", "queues": ["alpha"]})
    assert mine.status_code == 200, mine.text
    agent_id = mine.json()["id"]

    def claim(queues: list[str]) -> httpx.Response:
        return agent.post("/claims", json={"agent_id": agent_id, "queues": queues})

    assert claim(["alpha"]).status_code == 200
    refused = claim(["alpha", "beta"])
    assert refused.status_code == 403
    assert refused.json()["detail"] == "this agent key is not for the work queue(s) beta"
    assert agent.post("/agents", json={"name": "vm-a", "host": "h",
                                       "queues": ["beta"]}).status_code == 403
    assert agent.post("/agents", json={"name": "vm-b", "host": "h",  # taking over vm-b's name
                                       "queues": ["alpha"]}).status_code == 403
    assert agent.post(f"/agents/{agent_id}/heartbeat", json={"runs": []}).status_code == 200
    assert agent.post(f"/agents/{other['id']}/heartbeat", json={"runs": []}).status_code == 403
    assert agent.put("/deployments", json={}).status_code == 403
    assert agent.post("/work-queues", json={"name": "gamma"}).status_code == 403
    assert agent.get("/flow-runs").status_code == 403


def _claimed_run(database: Database, queue: str) -> str:
    now = datetime.now(UTC)
    values = new_run_values(name="r", flow_name="f", nominal_time=now, scheduled_time=now,
                            parameters={}, tags=[], auto_scheduled=False, work_queue=queue,
                            state="PENDING", state_name="Pending")
    with database.write() as conn:
        conn.execute(flow_runs.insert().values(**values))
    return str(values["id"])


def test_an_agent_key_reports_only_on_runs_claimed_through_its_queues(
        server: RunningServer, keys: Keys) -> None:
    agent = _client(server, keys.agent)
    report = {"state": "RUNNING", "fencing_token": 99}
    line = {"timestamp": datetime.now(UTC).isoformat(), "level": 20, "logger": "l",
            "message": "m"}
    theirs, ours = (_claimed_run(server.database, queue) for queue in ("beta", "alpha"))
    assert agent.post(f"/flow-runs/{theirs}/state", json=report).status_code == 403
    assert agent.post(f"/flow-runs/{theirs}/events", json={"logs": [line]}).status_code == 403
    assert agent.post(f"/flow-runs/{ours}/state", json=report).status_code == 409  # stale token
    assert agent.post(f"/flow-runs/{ours}/events", json={"logs": [line]}).status_code == 204


def test_expired_and_revoked_keys_are_refused(server: RunningServer, keys: Keys) -> None:
    hour = timedelta(hours=1)
    unexpired = _key(server.database, Scope.READ, expires_in=2 * 3600, made_ago=hour)
    assert _client(server, unexpired).get("/work-queues").status_code == 200
    gone = _key(server.database, Scope.READ, expires_in=60, made_ago=hour)
    expired = _client(server, gone).get("/work-queues")
    assert expired.status_code == 401
    assert expired.json()["detail"] == "the API key is unknown, expired or revoked"

    admin = _client(server, keys.admin)
    key_id = keys.read.split("_")[1]
    assert admin.post(f"/tokens/{key_id}/revoke").json()["status"] == "revoked"
    assert _client(server, keys.read).get("/work-queues").status_code == 401
    listed = {token["id"]: token for token in admin.get("/tokens").json()}
    assert listed[key_id]["status"] == "revoked"
    assert "key" not in listed[key_id] and all("secret" not in str(t) for t in listed.values())


def test_a_tampered_key_is_refused(server: RunningServer, keys: Keys) -> None:
    tampered = keys.admin[:-1] + ("A" if keys.admin[-1] != "A" else "B")
    assert _client(server, tampered).get("/work-queues").status_code == 401
    assert _client(server, "not-a-key").get("/work-queues").status_code == 401


def test_a_keyless_server_serves_only_its_own_host(server: RunningServer) -> None:
    assert _client(server, None).get("/work-queues").status_code == 200
    remote = _remote_client(server).get("/work-queues")
    assert remote.status_code == 401
    assert "serves only clients on its own host" in remote.json()["detail"]
    assert _remote_client(server).get("/health").status_code == 200
    assert _remote_client(server).get("/openapi.json").status_code == 200


def test_once_a_key_exists_the_servers_own_host_needs_one_too(
        server: RunningServer, keys: Keys) -> None:
    refused = _client(server, None).get("/work-queues")
    assert refused.status_code == 401
    assert refused.json()["detail"].startswith("this server needs an API key")
    assert _remote_client(server, keys.read).get("/work-queues").status_code == 200


@pytest.fixture
def admin_key_server(database: Database, tmp_path: Path) -> Iterator[RunningServer]:
    settings = Settings(home=tmp_path / "home", port=free_port(), run_scheduler=False,
                        admin_key=SecretStr("k" * 40))
    with serving(database, settings) as running:
        yield running


def test_the_admin_key_setting_admits_remote_admins(admin_key_server: RunningServer) -> None:
    remote = admin_key_server
    assert _remote_client(remote, "k" * 40).post("/work-queues",
                                                 json={"name": "q"}).status_code == 201
    assert _remote_client(remote, "k" * 39 + "x").get("/work-queues").status_code == 401
    assert _client(admin_key_server, None).get("/work-queues").status_code == 401


def test_repeated_bad_keys_from_one_address_are_refused_for_a_while(
        server: RunningServer, keys: Keys) -> None:
    client = _remote_client(server, "ost_000000000000_wrong")
    statuses = [client.get("/work-queues").status_code for _ in range(20)]
    assert statuses == [401] * 20
    blocked = _remote_client(server, keys.admin).get("/work-queues")  # even a good key
    assert blocked.status_code == 429
    assert re.fullmatch(r"too many failed authentications from 203\.0\.113\.7; retry in \d+ s",
                        blocked.json()["detail"])
    assert _client(server, keys.admin).get("/work-queues").status_code == 200  # other address


def test_the_server_says_at_start_whom_it_serves(database: Database, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(home=tmp_path, port=free_port(), run_scheduler=False, host="0.0.0.0")
    with caplog.at_level("WARNING", logger="ostinato.scheduler.auth"), serving(database, settings):
        pass
    assert any("refusing every client not on this host" in r.message for r in caplog.records)


def test_token_commands_make_list_and_revoke_keys(server: RunningServer) -> None:
    as_admin = {"OSTINATO_API_KEY": cli(server.url, "token", "create", "--scope",
                                        "admin").stdout.strip()}
    made = cli(server.url, "token", "create", "--scope", "agent", "--queue", "alpha",
               "--expires-in", "30d", "--name", "vm-1", "--json", env=as_admin).json()
    assert made["key"].startswith(f"ost_{made['id']}_") and made["queues"] == ["alpha"]
    listed = cli(server.url, "token", "ls", env=as_admin)
    assert listed.code == 0 and "vm-1" in listed.stdout and made["key"] not in listed.stdout
    revoked = cli(server.url, "token", "revoke", made["id"], env=as_admin)
    assert revoked.stdout == f"revoked key {made['id']} (vm-1)\n"
    assert_user_error(cli(server.url, "token", "ls"), "needs an API key", "OSTINATO_API_KEY")


def test_bad_token_requests_are_one_line_errors_and_make_nothing(server: RunningServer) -> None:
    assert_user_error(cli(server.url, "token", "create", "--scope", "agent"),
                      "an agent key needs the queues it may claim from (--queue)")
    assert_user_error(cli(server.url, "token", "create", "--scope", "read", "--queue", "a"),
                      "a read key is not limited to queues")
    assert_user_error(cli(server.url, "token", "create", "--scope", "root"), "scope")
    with server.database.read() as conn:
        assert api_keys.list_keys(conn, datetime.now(UTC)) == []


def test_the_ui_login_keeps_the_key_in_a_strict_http_only_cookie(
        server: RunningServer, keys: Keys) -> None:
    root = server.url.removesuffix("/api")
    with httpx.Client(base_url=root, follow_redirects=False) as browser:
        wrong = browser.post("/login", data={"key": "ost_0_wrong", "next": "/runs"})
        assert wrong.status_code == 401
        assert "the API key is unknown, expired or revoked" in wrong.text
        assert "ostinato_key" not in browser.cookies
        elsewhere = browser.post("/login", data={"key": keys.read, "next": "//evil.example/"})
        assert elsewhere.headers["location"] == "/"
        logged_in = browser.post("/login", data={"key": keys.read, "next": "/runs?state=FAILED"})
        assert (logged_in.status_code, logged_in.headers["location"]) == (303,
                                                                          "/runs?state=FAILED")
        cookie = logged_in.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/" in cookie
        assert browser.get("/api/work-queues").status_code == 200  # the cookie is the key
        assert browser.post("/api/work-queues", json={"name": "q"}).status_code == 403  # read
        browser.post("/logout")
        assert browser.get("/api/work-queues").status_code == 401
