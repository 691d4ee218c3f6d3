"""The REST API over real HTTP (uvicorn on 127.0.0.1), on SQLite and on PostgreSQL.

Besides the round trips, one family of tests sends hostile bodies and query strings to every
endpoint: whatever a client sends, the answer is a 4xx with a JSON `detail`, never a 500, and
the store stays readable afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import update

from ostinato.deploy.settings import Settings
from ostinato.queues.database import Database
from ostinato.queues.tables import flow_runs
from ostinato.scheduler.app import create_app

SCHEMA = {
    "type": "object",
    "properties": {"day": {"type": "string"}, "limit": {"type": "integer"}},
    "required": ["day"],
}
SPEC: dict[str, Any] = {
    "flow": "etl", "name": "nightly", "entrypoint": "flows.py:etl", "path": "/srv/flows",
    "parameters": {"day": "today", "limit": 10}, "parameter_schema": SCHEMA, "tags": ["etl"],
    "schedules": [{"kind": "cron", "cron": "0 2 * * *", "timezone": "Europe/Paris"}],
}
NUL = "\u0000"
HUGE = 10**30
RunningServer = Any  # conftest's RunningServer: url, database, settings, client()


def spec(**changes: Any) -> dict[str, Any]:
    return SPEC | changes


def upsert(client: httpx.Client, *specs: dict[str, Any]) -> httpx.Response:
    return client.put("/deployments", json={"deployments": list(specs)})


def ok(response: httpx.Response, status: int = 200) -> Any:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    return response.json() if response.content else None


def detail(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, f"{response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/json")
    text = response.json()["detail"]
    assert isinstance(text, str) and text and "\n" not in text, text
    return text


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(database: Database, settings: Settings) -> tuple[uvicorn.Server, str]:
    """The conftest `server` pattern, with settings of the test's choosing."""
    config = uvicorn.Config(create_app(settings, database), host="127.0.0.1", port=settings.port,
                            log_level="warning")
    uv = uvicorn.Server(config)
    threading.Thread(target=uv.run, daemon=True).start()
    deadline = time.monotonic() + 10
    while not uv.started:
        assert time.monotonic() < deadline, "server did not start within 10 s"
        time.sleep(0.01)
    return uv, f"http://127.0.0.1:{settings.port}/api"


@pytest.fixture
def small_client(database: Database, tmp_path: Path) -> Iterator[httpx.Client]:
    """A server whose bundle cap is 1000 bytes."""
    port = free_port()
    uv, url = start_server(database, Settings(home=tmp_path / "home", port=port,
                                              max_bundle_bytes=1000))
    with httpx.Client(base_url=url, timeout=10) as http:
        yield http
    uv.should_exit = True


# --- health and deployments ----------------------------------------------------------------------


def test_health(client: httpx.Client, server: RunningServer) -> None:
    body = ok(client.get("/health"))
    assert body["status"] == "ok"
    assert body["database"] == ("sqlite" if server.database.is_sqlite else "postgresql")
    assert body["version"]


def test_deployment_upsert_round_trip(client: httpx.Client) -> None:
    first = ok(upsert(client, spec()))
    assert (first["created"], first["updated"], first["unchanged"]) == (["etl/nightly"], [], [])

    again = ok(upsert(client, spec()))
    assert again["unchanged"] == ["etl/nightly"]
    changed = ok(upsert(client, spec(description="documented")))
    assert changed["updated"] == ["etl/nightly"]

    shown = ok(client.get("/deployments/etl/nightly"))
    assert shown["name"] == "etl/nightly" and shown["flow"] == "etl"
    assert shown["entrypoint"] == "flows.py:etl" and shown["description"] == "documented"
    assert shown["parameters"] == {"day": "today", "limit": 10}
    assert shown["tags"] == ["etl"]
    [schedule] = shown["schedules"]
    assert schedule["kind"] == "cron" and schedule["cron"] == "0 2 * * *"
    assert schedule["timezone"] == "Europe/Paris" and schedule["active"] is True
    assert schedule["slug"]
    for field in ("id", "bundle", "paused", "overlap", "catchup", "retries", "timeout"):
        assert field in shown
    assert (shown["paused"], shown["overlap"], shown["catchup"]) == (False, "allow", "latest")


REFUSED = {
    "bad cron field": ({"schedules": [{"kind": "cron", "cron": "61 2 * * *"}]}, "minute"),
    "cron of 4 fields": ({"schedules": [{"kind": "cron", "cron": "0 2 * *"}]}, "5 fields"),
    "offset timezone": (
        {"schedules": [{"kind": "cron", "cron": "0 2 * * *", "timezone": "+02:00"}]}, "offset"),
    "unknown timezone": (
        {"schedules": [{"kind": "cron", "cron": "0 2 * * *", "timezone": "Mars/Base"}]},
        "Mars/Base"),
    "mis-typed parameter": ({"parameters": {"day": "today", "limit": "ten"}}, "'limit'"),
    "unknown parameter": ({"parameters": {"day": "today", "colour": "red"}}, "'colour'"),
    "bundle not uploaded": ({"bundle": "ab" * 32, "path": None}, "not been uploaded"),
    "unknown field": ({"colour": "red"}, "colour"),
    # what an agent could not put in a process's environment, or would not need
    "NUL in an env value": ({"env": {"KEY": f"a{NUL}b"}}, "env.KEY"),
    "= in an env name": ({"env": {"A=B": "x"}}, "env.A=B"),
    "env value over 32 KiB": ({"env": {"KEY": "x" * (32 * 1024 + 1)}}, "at most 32768"),
    "over 200 env entries": ({"env": {f"K{n}": "v" for n in range(201)}}, "at most 200"),
    "entrypoint over 1000": ({"entrypoint": "f" * 1000 + ".py:main"}, "entrypoint"),
    "cron over 1000": ({"schedules": [{"kind": "cron", "cron": "0 " * 501}]}, "at most 1000"),
    "rrule over 10000": ({"schedules": [{"kind": "rrule", "rrule": "X" * 10_001}]}, "10000"),
    "timezone over 100": (
        {"schedules": [{"kind": "cron", "cron": "0 2 * * *", "timezone": "T" * 101}]}, "100"),
    "retry_on repeated": ({"retry_on": ["crash"] * 4}, "at most 3"),
}


@pytest.mark.parametrize("changes, mentions", list(REFUSED.values()), ids=list(REFUSED))
def test_a_refused_upsert_is_a_422_with_one_line_and_registers_nothing(
    client: httpx.Client, changes: dict[str, Any], mentions: str
) -> None:
    response = upsert(client, spec(name="fine"), spec(**changes))

    assert mentions in detail(response, 422)
    assert ok(client.get("/deployments")) == []


def _names(response: httpx.Response) -> list[str]:
    return [item["name"] for item in ok(response)]


def test_deployment_listing_pages_and_filters(client: httpx.Client) -> None:
    specs = [
        spec(flow="etl", name="a", tags=["etl", "eu"]),
        spec(flow="etl", name="b", tags=["etl"], paused=True),
        spec(flow="etl", name="c", tags=[]),
        spec(flow="etl-v2", name="d", tags=["eu"]),
        spec(flow="report", name="e", tags=["eu"], paused=True),
        spec(flow="report", name="f", tags=["reports"]),
        spec(flow="report", name="g", tags=["reports", "etl"]),
    ]
    ok(upsert(client, *specs))
    everything = ["etl/a", "etl/b", "etl/c", "etl-v2/d", "report/e", "report/f", "report/g"]

    pages = [_names(client.get("/deployments", params={"limit": 3, "offset": offset}))
             for offset in (0, 3, 6, 9)]
    assert [len(page) for page in pages] == [3, 3, 1, 0]
    assert sorted(sum(pages, [])) == sorted(everything)
    assert len(set(sum(pages, []))) == 7

    def listed(**params: Any) -> set[str]:
        return set(_names(client.get("/deployments", params=params)))

    assert listed(flow="etl") == {"etl/a", "etl/b", "etl/c"}
    assert listed(flow="report") == {"report/e", "report/f", "report/g"}
    assert listed(tag="eu") == {"etl/a", "etl-v2/d", "report/e"}
    assert listed(tag="etl") == {"etl/a", "etl/b", "report/g"}
    assert listed(paused="true") == {"etl/b", "report/e"}
    assert listed(paused="false") == set(everything) - {"etl/b", "report/e"}
    assert listed(flow="report", paused="false", tag="reports") == {"report/f", "report/g"}
    assert listed(flow="nope") == set()


def test_deployment_actions(client: httpx.Client) -> None:
    ok(upsert(client, spec()))

    assert ok(client.post("/deployments/etl/nightly/pause"))["paused"] is True
    assert "paused" in detail(client.post("/deployments/etl/nightly/runs", json={}), 409)
    assert ok(client.post("/deployments/etl/nightly/resume"))["paused"] is False

    run = ok(client.post("/deployments/etl/nightly/runs",
                         json={"parameters": {"limit": 3}, "tags": ["adhoc"]}), 201)
    assert run["parameters"] == {"day": "today", "limit": 3}
    assert run["tags"] == ["adhoc", "etl"] and run["auto_scheduled"] is False
    assert run["deployment"] == "etl/nightly" and run["state"] == "SCHEDULED"
    assert "'limit'" in detail(
        client.post("/deployments/etl/nightly/runs", json={"parameters": {"limit": "x"}}), 422)

    edited = ok(client.patch("/deployments/etl/nightly", json={"retries": 2, "tags": ["x"]}))
    assert (edited["retries"], edited["tags"]) == (2, ["x"])
    assert ok(client.get(f"/flow-runs/{run['id']}"))["state"] == "SCHEDULED"

    assert client.delete("/deployments/etl/nightly").status_code == 204
    detail(client.get("/deployments/etl/nightly"), 404)
    gone = ok(client.get(f"/flow-runs/{run['id']}"))
    assert (gone["state"], gone["reason"]) == ("SKIPPED", "deployment_deleted")
    states = ok(client.get(f"/flow-runs/{run['id']}/states"))
    assert [s["type"] for s in states] == ["SCHEDULED", "SKIPPED"]


# --- flow runs ----------------------------------------------------------------------------------

BASE = datetime(2030, 6, 1, tzinfo=UTC)


def _make_runs(client: httpx.Client, server: RunningServer) -> list[dict[str, Any]]:
    """Twelve manual runs an hour apart from BASE; the first four finished, tags alternating."""
    ok(upsert(client, spec(), spec(flow="report", name="hourly", parameters={"day": "x"},
                                   tags=["reports"])))
    made = []
    for n in range(12):
        deployment = "etl/nightly" if n < 8 else "report/hourly"
        made.append(ok(client.post(f"/deployments/{deployment}/runs", json={
            "scheduled_time": (BASE + timedelta(hours=n)).isoformat(),
            "tags": ["even"] if n % 2 == 0 else ["odd"],
        }), 201))
    with server.database.write() as conn:
        done = [uuid.UUID(run["id"]) for run in made[:4]]
        conn.execute(update(flow_runs).where(flow_runs.c.id.in_(done))
                     .values(state="COMPLETED", state_name="Completed"))
    return made


def test_flow_run_listing_pages_and_filters(client: httpx.Client, server: RunningServer) -> None:
    made = _make_runs(client, server)
    index = {run["id"]: n for n, run in enumerate(made)}

    def listed(**params: Any) -> list[int]:
        return [index[run["id"]] for run in ok(client.get("/flow-runs", params=params))]

    pages = [listed(limit=5, offset=offset) for offset in (0, 5, 10, 15)]
    assert [len(page) for page in pages] == [5, 5, 2, 0]
    assert sum(pages, []) == list(range(11, -1, -1)), "not newest first, or overlapping pages"

    assert set(listed(state="COMPLETED")) == {0, 1, 2, 3}
    assert set(listed(state=["COMPLETED", "SCHEDULED"])) == set(range(12))
    assert set(listed(state="RUNNING")) == set()
    assert set(listed(deployment="report/hourly")) == {8, 9, 10, 11}
    assert set(listed(flow="etl")) == set(range(8))
    assert set(listed(tag="odd")) == {1, 3, 5, 7, 9, 11}
    assert set(listed(tag="etl", state="SCHEDULED")) == {4, 5, 6, 7}

    after, before = BASE + timedelta(hours=3), BASE + timedelta(hours=6)
    window = {3, 4, 5}
    assert set(listed(after=after.isoformat(), before=before.isoformat())) == window
    paris = after.astimezone(timezone(timedelta(hours=2)))
    assert set(listed(after=paris.isoformat(), before=before.isoformat())) == window
    assert set(listed(after="2030-06-01T03:00:00Z", before="2030-06-01T06:00:00Z")) == window


def test_a_naive_after_is_taken_as_utc(client: httpx.Client, server: RunningServer) -> None:
    _make_runs(client, server)
    naive = client.get("/flow-runs", params={"after": "2030-06-01T09:00:00"})
    aware = client.get("/flow-runs", params={"after": "2030-06-01T09:00:00+00:00"})
    naive_before = client.get("/flow-runs", params={"before": "2030-06-01T01:00:00"})

    assert [run["id"] for run in ok(naive)] == [run["id"] for run in ok(aware)]
    assert len(ok(naive)) == 3
    assert len(ok(naive_before)) == 1


def test_a_run_reads_back_with_its_history(client: httpx.Client) -> None:
    ok(upsert(client, spec()))
    past = (datetime.now(UTC) - timedelta(minutes=5)).isoformat()
    run = ok(client.post("/deployments/etl/nightly/runs", json={"scheduled_time": past}), 201)

    shown = ok(client.get(f"/flow-runs/{run['id']}"))
    assert (shown["state"], shown["state_name"]) == ("SCHEDULED", "Late")
    states = ok(client.get(f"/flow-runs/{run['id']}/states"))
    assert [s["type"] for s in states] == ["SCHEDULED"]


# --- not found and bad requests -----------------------------------------------------------------


@pytest.mark.parametrize("method, path", [
    ("GET", "/deployments/etl/missing"),
    ("PATCH", "/deployments/etl/missing"),
    ("POST", "/deployments/etl/missing/pause"),
    ("POST", "/deployments/etl/missing/resume"),
    ("POST", "/deployments/etl/missing/runs"),
    ("DELETE", "/deployments/etl/missing"),
    ("GET", f"/flow-runs/{uuid.UUID(int=7)}"),
    ("GET", f"/flow-runs/{uuid.UUID(int=7)}/states"),
    ("GET", "/work-queues/missing"),
    ("PATCH", "/work-queues/missing"),
    ("POST", "/work-queues/missing/pause"),
    ("DELETE", "/work-queues/missing"),
    ("GET", f"/bundles/{'0' * 64}"),
    ("GET", f"/bundles/{'0' * 64}/info"),
])
def test_unknown_objects_are_404_json(client: httpx.Client, method: str, path: str) -> None:
    body = {} if method in ("PATCH", "POST") else None
    detail(client.request(method, path, json=body), 404)


@pytest.mark.parametrize("path, params", [
    ("/flow-runs/not-a-uuid", {}),
    ("/flow-runs/not-a-uuid/states", {}),
    ("/flow-runs", {"limit": 0}),
    ("/flow-runs", {"limit": 1001}),
    ("/flow-runs", {"limit": HUGE}),
    ("/flow-runs", {"offset": -1}),
    ("/flow-runs", {"state": "LATE"}),
    ("/flow-runs", {"after": "yesterday"}),
    ("/flow-runs", {"parent": "nope"}),
    ("/deployments", {"limit": 0}),
    ("/deployments", {"limit": HUGE}),
    ("/deployments", {"offset": HUGE}),
    ("/deployments", {"paused": "maybe"}),
    ("/bundles/NOT-A-HASH", {}),
    (f"/bundles/{'A' * 64}", {}),
])
def test_malformed_requests_are_422(client: httpx.Client, path: str, params: Any) -> None:
    detail(client.get(path, params=params), 422)


def _held_run(client: httpx.Client) -> tuple[dict[str, Any], dict[str, Any]]:
    """A run claimed by a registered agent, and the agent."""
    ok(upsert(client, spec()))
    ok(client.post("/work-queues", json={"name": "default"}), 201)
    agent = ok(client.post("/agents", json={"name": "a", "host": "h", "queues": ["default"]}))
    ok(client.post("/deployments/etl/nightly/runs", json={}), 201)
    [run] = ok(client.post("/claims", json={"agent_id": agent["id"], "queues": ["default"]}))
    return run, agent


def test_numbers_past_what_the_store_holds_are_422_not_500(client: httpx.Client) -> None:
    """Found by the fuzzer: SQLite raised OverflowError binding these (a 500)."""
    run, agent = _held_run(client)
    beyond = 2**63

    refused = [
        client.post(f"/flow-runs/{run['id']}/state",
                    json={"state": "FAILED", "fencing_token": beyond}),
        client.post(f"/flow-runs/{run['id']}/state", json={
            "state": "RUNNING", "fencing_token": run["fencing_token"], "peak_rss_bytes": beyond}),
        client.post(f"/agents/{agent['id']}/heartbeat",
                    json={"runs": [{"id": run["id"], "fencing_token": beyond}]}),
        client.get(f"/flow-runs/{run['id']}/logs", params={"after": beyond}),
    ]

    assert ["less than or equal to" in detail(response, 422) for response in refused] == [True] * 4
    assert ok(client.get(f"/flow-runs/{run['id']}"))["state"] == "PENDING"


def _unbounded_numbers(schema: dict[str, Any], where: str, components: dict[str, Any],
                       seen: frozenset[str] = frozenset()) -> Iterator[str]:
    """Where `schema` lets a client send a number with no maximum."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        if name not in seen:
            yield from _unbounded_numbers(components[name], where, components, seen | {name})
        return
    bounded = "maximum" in schema or "exclusiveMaximum" in schema
    if schema.get("type") in ("integer", "number") and not bounded:
        yield where
    children = [(f"{where}.{name}", sub) for name, sub in schema.get("properties", {}).items()]
    children += [(where, sub) for key in ("anyOf", "oneOf", "allOf") for sub in schema.get(key, [])]
    children += [(f"{where}[]", schema[key]) for key in ("items", "additionalProperties")
                 if isinstance(schema.get(key), dict)]
    for place, sub in children:
        yield from _unbounded_numbers(sub, place, components, seen)


def test_every_number_a_client_sends_is_bounded(tmp_path: Path) -> None:
    """A number past what a column holds fails in the database driver, as a 500; pydantic
    refuses it first, with a 422, only if the schema bounds it."""
    document = create_app(Settings(home=tmp_path)).openapi()
    components = document["components"]["schemas"]
    unbounded = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            where = f"{method.upper()} {path}"
            for parameter in operation.get("parameters", []):
                unbounded += _unbounded_numbers(parameter["schema"], f"{where} {parameter['name']}",
                                                components)
            for content in operation.get("requestBody", {}).get("content", {}).values():
                unbounded += _unbounded_numbers(content.get("schema", {}), f"{where} body",
                                                components)
    assert unbounded == []


# --- bundles -------------------------------------------------------------------------------------


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def test_a_bundle_upload_round_trips_byte_for_byte(client: httpx.Client) -> None:
    content = os.urandom(70_000) + b"\x00" * 10
    info = ok(client.put(f"/bundles/{sha(content)}", content=content))
    assert (info["sha256"], info["size"]) == (sha(content), len(content))

    download = client.get(f"/bundles/{sha(content)}")
    assert download.status_code == 200 and download.content == content
    assert ok(client.get(f"/bundles/{sha(content)}/info"))["size"] == len(content)
    assert ok(client.put(f"/bundles/{sha(content)}", content=content)) == info


def test_a_bundle_that_does_not_match_its_hash_is_422_and_not_stored(
    client: httpx.Client,
) -> None:
    claimed = sha(b"what the client says")
    assert "sha256" in detail(client.put(f"/bundles/{claimed}", content=b"something else"), 422)
    detail(client.get(f"/bundles/{claimed}/info"), 404)
    detail(client.get(f"/bundles/{sha(b'something else')}/info"), 404)


def test_a_bundle_over_the_cap_is_413_and_not_stored(small_client: httpx.Client) -> None:
    for size in (1001, 50_000):
        content = os.urandom(size)
        assert "cap" in detail(small_client.put(f"/bundles/{sha(content)}", content=content), 413)
        streamed = small_client.put(f"/bundles/{sha(content)}", content=iter([content]))  # chunked
        assert "cap" in detail(streamed, 413)
        detail(small_client.get(f"/bundles/{sha(content)}/info"), 404)

    at_cap = os.urandom(1000)
    assert ok(small_client.put(f"/bundles/{sha(at_cap)}", content=at_cap))["size"] == 1000


def test_a_deployment_may_use_an_uploaded_bundle(client: httpx.Client) -> None:
    content = b"packed source"
    ok(client.put(f"/bundles/{sha(content)}", content=content))
    created = ok(upsert(client, spec(bundle=sha(content), path=None)))
    assert created["deployments"][0]["bundle"] == sha(content)


# --- work queues ---------------------------------------------------------------------------------


def test_work_queue_round_trip(client: httpx.Client) -> None:
    body = {"name": "gpu", "filter": {"tags": ["gpu"], "deployments": ["etl/nightly"]},
            "priority": 5, "concurrency_limit": 2, "description": "GPU boxes"}
    created = ok(client.post("/work-queues", json=body), 201)
    assert created["filter"] == {"tags": ["gpu"], "exclude_tags": [],
                                 "deployments": ["etl/nightly"], "flows": []}
    assert (created["priority"], created["concurrency_limit"], created["paused"]) == (5, 2, False)

    assert "exists" in detail(client.post("/work-queues", json={"name": "gpu"}), 409)
    ok(client.post("/work-queues", json={"name": "default"}), 201)
    assert [q["name"] for q in ok(client.get("/work-queues"))] == ["gpu", "default"]

    edited = ok(client.patch("/work-queues/gpu", json={"priority": 20,
                                                      "concurrency_limit": None}))
    assert (edited["priority"], edited["concurrency_limit"]) == (20, None)
    assert edited["description"] == "GPU boxes"
    assert ok(client.post("/work-queues/gpu/pause"))["paused"] is True
    assert ok(client.get("/work-queues/gpu"))["paused"] is True
    assert ok(client.post("/work-queues/gpu/resume"))["paused"] is False
    assert [q["name"] for q in ok(client.get("/work-queues"))] == ["default", "gpu"]

    assert client.delete("/work-queues/gpu").status_code == 204
    detail(client.get("/work-queues/gpu"), 404)
    assert [q["name"] for q in ok(client.get("/work-queues"))] == ["default"]


# --- no request content produces a 500 ----------------------------------------------------------


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def raw_nested(depth: int) -> bytes:
    return ('{"parameters":' + '{"a":' * depth + "1" + "}" * depth + "}").encode()


Body = bytes | dict[str, Any] | list[Any] | None
GARBAGE: list[Body] = [b"", b"not json", b"{", b"[]", b"null", b"123", b'"text"', [], None]


def _deployments(*items: Any) -> dict[str, Any]:
    return {"deployments": list(items)}


def _schedule(**fields: Any) -> dict[str, Any]:
    return _deployments(spec(schedules=[{"kind": "cron", "cron": "0 2 * * *"} | fields]))


FREE = {"parameter_schema": {}}  # a flow whose signature the server does not know

UPSERTS: list[Body] = [
    *GARBAGE,
    {"deployments": "x"}, {"deployments": []}, {"deployments": [{}]}, {"deployments": [None]},
    {"deployments": [spec()] * 1001}, _deployments(spec()) | {"extra": 1},
    _deployments(spec(retries=HUGE)), _deployments(spec(retries=-HUGE)),
    _deployments(spec(timeout=HUGE)), _deployments(spec(misfire_grace=HUGE)),
    _deployments(spec(retry_delay=-1)), _deployments(spec(overlap="sometimes")),
    _deployments(spec(flow=NUL)), _deployments(spec(name=f"a{NUL}")),
    _deployments(spec(entrypoint=f"{NUL}x.py:etl")), _deployments(spec(path=f"/srv/{NUL}")),
    _deployments(spec(description=NUL)), _deployments(spec(tags=[f"a{NUL}"])),
    _deployments(spec(env={"KEY": NUL})), _deployments(spec(env={NUL: "v"})),
    _deployments(spec(env={"KEY": HUGE})),
    _deployments(spec(parameters={"day": NUL})), _deployments(spec(parameters={NUL: 1})),
    _deployments(spec(parameters={"day": "x", "limit": HUGE})),
    _deployments(spec(**FREE, parameters={NUL: NUL})),
    _deployments(spec(**FREE, parameters={"n": HUGE, "m": -HUGE, "f": 1e308})),
    _deployments(spec(**FREE, parameters=nested(50))),
    _deployments(spec(**FREE, parameters=nested(300))),
    # parameter schemas of the wrong shape (each otherwise accepts day and limit)
    _deployments(spec(parameter_schema={"properties": [1]}, parameters={})),
    _deployments(spec(parameter_schema={"properties": None})),
    _deployments(spec(parameter_schema={"properties": {"day": "string", "limit": {}}})),
    _deployments(spec(parameter_schema={"properties": {"day": {}, "limit": {}}, "required": 5})),
    _deployments(spec(parameter_schema={"properties": {"day": {}, "limit": {}},
                                        "required": [["day"]]})),
    _deployments(spec(parameter_schema={"properties": {"day": {"type": ["string", ["x"]]},
                                                       "limit": {}}})),
    _deployments(spec(parameter_schema={"properties": {"day": {"anyOf": [1]}, "limit": {}}})),
    _deployments(spec(parameter_schema={"properties": {"day": {"type": 5}, "limit": {}}})),
    _deployments(spec(parameter_schema="schema")),
    _schedule(cron=NUL), _schedule(cron="0 2 * * * * *"), _schedule(cron="0 0 31 2 *"),
    _schedule(timezone=NUL), _schedule(timezone="+02:00"), _schedule(timezone="Europe"),
    _schedule(timezone="../../etc/passwd"), _schedule(timezone="/etc/localtime"),
    _schedule(slug=NUL), _schedule(max_runs=HUGE), _schedule(jitter=HUGE), _schedule(jitter=-1),
    _schedule(start="9999-12-31T23:59:59-01:00"), _schedule(end="0001-01-01T00:00:00+01:00"),
    _schedule(parameters={"day": NUL}), _schedule(parameters={"limit": HUGE}),
    _schedule(on_gap="explode"), _schedule(unknown=1),
    _deployments(spec(schedules=[{"kind": "interval", "every": HUGE}])),
    _deployments(spec(schedules=[{"kind": "interval", "every": -1}])),
    _deployments(spec(schedules=[{"kind": "interval", "every": "P1M"}])),
    _deployments(spec(schedules=[{"kind": "interval", "every": 1e-9}])),
    _deployments(spec(schedules=[{"kind": "interval", "every": 60,
                                  "anchor": "0001-01-01T00:00:00+01:00"}])),
    _deployments(spec(schedules=[{"kind": "rrule", "rrule": NUL}])),
    _deployments(spec(schedules=[{"kind": "rrule", "rrule": "FREQ=SECONDLY;COUNT=" + "9" * 40}])),
    _deployments(spec(schedules=[{"kind": "nope"}])),
    _deployments(spec(schedules=["cron"])), _deployments(spec(schedules=[None])),
    _deployments(spec(schedules=[{"kind": "cron", "cron": "0 2 * * *"}] * 2)),
    _deployments(spec(schedules=[{"kind": "cron", "cron": f"{n} 2 * * *"} for n in range(51)])),
    json.dumps(_deployments(spec(**FREE, parameters={"x": float("nan")}))).encode(),
    json.dumps(_deployments(spec(timeout=float("inf")))).encode(),
    json.dumps(_deployments(spec(misfire_grace=float("nan")))).encode(),
    b'{"deployments": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}",
]

EDITS: list[Body] = [
    *GARBAGE,
    {"parameters": None}, {"tags": None}, {"schedules": None}, {"overlap": None},
    {"retries": HUGE}, {"timeout": HUGE}, {"misfire_grace": -1}, {"unknown": 1},
    {"parameters": {"day": NUL}}, {"parameters": {"limit": HUGE}}, {"parameters": nested(300)},
    {"parameters": {"day": "x", "limit": "ten"}}, {"description": NUL}, {"tags": [NUL]},
    {"schedules": [{"kind": "cron", "cron": "61 * * * *"}]},
    {"schedules": [{"kind": "cron", "cron": "0 2 * * *", "timezone": NUL}]},
    {"parameter_schema": {"required": 5}},
    b'{"misfire_grace": NaN}', b'{"timeout": Infinity}',
]

MANUAL_RUNS: list[tuple[str, Body]] = [
    *(("etl/nightly", body) for body in GARBAGE),
    ("etl/nightly", {"parameters": "x"}), ("etl/nightly", {"parameters": {"day": NUL}}),
    ("etl/nightly", {"parameters": {NUL: 1}}),
    ("etl/nightly", {"parameters": {"day": "x", "limit": HUGE}}),
    ("etl/nightly", {"tags": [NUL]}), ("etl/nightly", {"tags": "x"}),
    ("etl/nightly", {"start_in": HUGE}), ("etl/nightly", {"start_in": -1}),
    ("etl/nightly", {"scheduled_time": "0001-01-01T00:00:00+01:00"}),
    ("etl/nightly", {"scheduled_time": "9999-12-31T23:59:59-01:00"}),
    ("etl/nightly", {"scheduled_time": "2030-01-01T00:00:00"}),
    ("etl/nightly", {"scheduled_time": "soon"}), ("etl/nightly", {"scheduled_time": HUGE}),
    ("etl/nightly", {"scheduled_time": "2030-01-01T00:00:00Z", "start_in": 5}),
    ("etl/nightly", {"unknown": 1}),
    ("etl/free", {"parameters": {"x": NUL}}), ("etl/free", {"parameters": {NUL: "x"}}),
    ("etl/free", {"parameters": {"n": HUGE, "m": -HUGE}}),
    ("etl/free", {"parameters": nested(100)}),
    ("etl/free", {"parameters": nested(300)}),
    ("etl/free", raw_nested(5_000)),
    ("etl/free", raw_nested(200_000)),
    ("etl/free", json.dumps({"parameters": {"x": float("nan")}}).encode()),
    ("etl/free", b'{"start_in": NaN}'),
]

QUEUES: list[Body] = [
    *GARBAGE, {}, {"name": NUL}, {"name": "q" * 200}, {"name": HUGE},
    {"name": "q1", "description": NUL}, {"name": "q2", "priority": HUGE},
    {"name": "q3", "priority": -HUGE}, {"name": "q4", "concurrency_limit": HUGE},
    {"name": "q5", "concurrency_limit": -1}, {"name": "q6", "filter": {"tags": [NUL]}},
    {"name": "q7", "filter": {"deployments": [f"a{NUL}/b"]}},
    {"name": "q8", "filter": {"flows": [NUL]}}, {"name": "q9", "filter": "x"},
    {"name": "q10", "filter": {"unknown": 1}}, {"name": "q11", "paused": "maybe"},
    {"name": "q12", "filter": {"exclude_tags": [f"x{NUL}"]}},
    b'{"name": "q13", "priority": NaN}',
]

QUEUE_EDITS: list[Body] = [
    *GARBAGE, {"filter": None}, {"priority": None}, {"paused": None}, {"description": None},
    {"priority": HUGE}, {"concurrency_limit": HUGE}, {"description": NUL},
    {"filter": {"tags": [NUL]}}, {"filter": {"deployments": [f"{NUL}/x"]}}, {"name": "renamed"},
]

QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("/deployments", {"flow": NUL}), ("/deployments", {"tag": NUL}),
    ("/deployments", {"limit": HUGE, "offset": HUGE}),
    ("/flow-runs", {"deployment": NUL}), ("/flow-runs", {"flow": NUL}),
    ("/flow-runs", {"tag": NUL}), ("/flow-runs", {"state": NUL}),
    ("/flow-runs", {"tag": "%"}), ("/flow-runs", {"tag": "_"}),
    ("/flow-runs", {"after": "0001-01-01T00:00:00+01:00"}),
    ("/flow-runs", {"before": "9999-12-31T23:59:59-01:00"}),
    ("/flow-runs", {"after": "9999-12-31T23:59:59.999999"}),
    ("/flow-runs", {"after": NUL}), ("/flow-runs", {"limit": HUGE, "offset": HUGE}),
    ("/deployments/etl%00/nightly", {}), ("/work-queues/%00", {}),
    ("/bundles/%00", {}), ("/flow-runs/%00", {}), ("/deployments/%00/%00/runs", {}),
]


def send(client: httpx.Client, method: str, path: str, body: Body) -> httpx.Response:
    if isinstance(body, bytes):
        return client.request(method, path, content=body,
                              headers={"content-type": "application/json"})
    if body is None:
        return client.request(method, path)
    return client.request(method, path, json=body)


def _describe(body: Body) -> str:
    """The body, showing only what differs from SPEC in deployment specs."""
    if isinstance(body, dict) and isinstance(body.get("deployments"), list):
        items = [{k: v for k, v in item.items() if SPEC.get(k) != v}
                 if isinstance(item, dict) else item for item in body["deployments"]]
        body = body | {"deployments": items}
    text = repr(body)
    return text if len(text) < 160 else text[:157] + "..."


def _send_once_more_if_dropped(client: httpx.Client, method: str, path: str,
                               body: Body) -> httpx.Response:
    """Send; if a kept-alive connection was closed under us (as servers do after a 500), retry
    once on a fresh connection, so each request is judged on its own response."""
    try:
        return send(client, method, path, body)
    except httpx.TransportError:
        return send(client, method, path, body)


def assert_no_500(client: httpx.Client, requests: list[tuple[str, str, Body]]) -> None:
    failures = []
    for method, path, body in requests:
        try:
            response = _send_once_more_if_dropped(client, method, path, body)
        except httpx.HTTPError as exc:  # a dropped connection is as bad as a 500
            failures.append(f"{method} {path} {_describe(body)} -> {type(exc).__name__}")
            continue
        if response.status_code >= 500:
            failures.append(f"{method} {path} {_describe(body)} -> {response.status_code}")
        elif response.status_code >= 400:
            assert isinstance(response.json().get("detail"), str | list), response.text
    for path in ("/health", "/deployments", "/flow-runs", "/work-queues"):
        status = _send_once_more_if_dropped(client, "GET", path, None).status_code
        if status != 200:
            failures.append(f"afterwards, GET {path} -> {status}: the store is poisoned")
    assert not failures, f"{len(failures)} requests got a 5xx:\n" + "\n".join(failures)


@pytest.fixture
def seeded(client: httpx.Client) -> httpx.Client:
    ok(upsert(client, spec(), spec(name="free", **FREE)))
    ok(client.post("/work-queues", json={"name": "default"}), 201)
    return client


def test_no_deployment_upsert_produces_a_500(seeded: httpx.Client) -> None:
    assert_no_500(seeded, [("PUT", "/deployments", body) for body in UPSERTS])


def test_no_deployment_edit_produces_a_500(seeded: httpx.Client) -> None:
    assert_no_500(seeded, [("PATCH", "/deployments/etl/nightly", body) for body in EDITS])


def test_no_manual_run_request_produces_a_500(seeded: httpx.Client) -> None:
    assert_no_500(seeded, [("POST", f"/deployments/{name}/runs", body)
                           for name, body in MANUAL_RUNS])


def test_no_work_queue_request_produces_a_500(seeded: httpx.Client) -> None:
    requests: list[tuple[str, str, Body]] = [("POST", "/work-queues", body) for body in QUEUES]
    requests += [("PATCH", "/work-queues/default", body) for body in QUEUE_EDITS]
    requests += [("POST", f"/work-queues/default/{action}", body)
                 for action in ("pause", "resume") for body in GARBAGE]
    assert_no_500(seeded, requests)


def test_no_bundle_upload_or_action_body_produces_a_500(seeded: httpx.Client) -> None:
    content = b"\x00" * 100
    requests: list[tuple[str, str, Body]] = [
        ("PUT", f"/bundles/{sha(content)}", content),
        ("PUT", f"/bundles/{sha(b'x')}", b"\x00\xff" * 50),
        ("PUT", f"/bundles/{sha(b'x')}", b""),
        ("PUT", f"/bundles/{'A' * 64}", b"x"),
        ("PUT", f"/bundles/{'%00' * 64}", b"x"),
    ]
    requests += [("POST", f"/deployments/etl/nightly/{action}", body)
                 for action in ("pause", "resume") for body in GARBAGE]
    requests += [("DELETE", "/deployments/etl/free", body) for body in GARBAGE[:3]]
    assert_no_500(seeded, requests)


def test_no_query_string_or_path_produces_a_500(seeded: httpx.Client) -> None:
    assert_no_500(seeded, [("GET", path + ("?" + str(httpx.QueryParams(params))
                                           if params else ""), None)
                           for path, params in QUERIES])


# --- concurrent writers --------------------------------------------------------------------------


def _concurrently(server: RunningServer, calls: list[tuple[str, str, Any]]) -> list[int]:
    """Send the calls at once, one thread and one connection each; their statuses in order."""
    barrier = threading.Barrier(len(calls))
    statuses: list[int] = [0] * len(calls)

    def call(index: int, method: str, path: str, body: Any) -> None:
        with server.client() as http:
            http.get("/health")  # connect before the barrier
            barrier.wait(timeout=10)
            statuses[index] = http.request(method, path, json=body).status_code

    threads = [threading.Thread(target=call, args=(n, *c)) for n, c in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return statuses


def test_concurrent_upserts_of_deployments_of_one_new_flow_all_succeed(
    server: RunningServer, client: httpx.Client
) -> None:
    calls = [("PUT", "/deployments", {"deployments": [spec(name=f"d{n}")]}) for n in range(8)]

    statuses = _concurrently(server, calls)

    assert statuses == [200] * 8
    assert len(ok(client.get("/deployments"))) == 8


def test_concurrent_creates_of_one_work_queue_make_one(
    server: RunningServer, client: httpx.Client
) -> None:
    statuses = _concurrently(server, [("POST", "/work-queues", {"name": "q"})] * 8)

    assert sorted(statuses) == [201] + [409] * 7
    assert [q["name"] for q in ok(client.get("/work-queues"))] == ["q"]


def test_concurrent_manual_runs_are_all_created(
    server: RunningServer, client: httpx.Client
) -> None:
    ok(upsert(client, spec()))

    statuses = _concurrently(server, [("POST", "/deployments/etl/nightly/runs", {})] * 8)

    assert statuses == [201] * 8
    assert len(ok(client.get("/flow-runs"))) == 8
