"""Caps on what a client may send, over real HTTP on SQLite and PostgreSQL: a request just over
a cap is refused with the right status and a one-line `detail`, and changes nothing; one at the
cap is accepted."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ostinato.deploy.limits import (
    MAX_EVENTS_REQUEST_BYTES,
    MAX_PARAMETERS_BYTES,
    MAX_REQUEST_BYTES,
)
from tests.conftest import RunningServer
from tests.test_api import FREE, detail, ok, spec, upsert

CHUNKED = [pytest.param(False, id="content-length"), pytest.param(True, id="chunked")]


@pytest.fixture
def client(server: RunningServer) -> Iterator[httpx.Client]:
    with server.client() as http:
        yield http


def padded(body: Any, size: int) -> bytes:
    """`body` as JSON, padded with trailing spaces (still valid JSON) to `size` bytes."""
    data = json.dumps(body).encode()
    assert len(data) <= size
    return data + b" " * (size - len(data))


def send(client: httpx.Client, method: str, path: str, data: bytes, chunked: bool
         ) -> httpx.Response:
    """Send raw JSON bytes; `chunked` streams them without a Content-Length, so only the bytes
    counted as they arrive can tell the server the body is too large."""
    content = iter([data[:1000], data[1000:]]) if chunked else data
    return client.request(method, path, content=content,
                          headers={"content-type": "application/json"})


@pytest.mark.parametrize("chunked", CHUNKED)
def test_a_json_body_over_the_cap_is_413_and_changes_nothing(
    client: httpx.Client, chunked: bool
) -> None:
    body = {"deployments": [spec()]}

    over = send(client, "PUT", "/deployments", padded(body, MAX_REQUEST_BYTES + 1), chunked)

    assert detail(over, 413) == f"request body is over the {MAX_REQUEST_BYTES}-byte cap"
    assert ok(client.get("/deployments")) == []
    at_cap = send(client, "PUT", "/deployments", padded(body, MAX_REQUEST_BYTES), chunked)
    assert ok(at_cap)["created"] == ["etl/nightly"]


@pytest.mark.parametrize("chunked", CHUNKED)
def test_an_event_batch_over_its_larger_cap_is_413_and_stores_nothing(
    client: httpx.Client, chunked: bool
) -> None:
    ok(upsert(client, spec()))
    run = ok(client.post("/deployments/etl/nightly/runs", json={}), 201)
    line = {"timestamp": "2026-01-01T00:00:00Z", "level": 20, "logger": "x", "message": "hi"}
    path = f"/flow-runs/{run['id']}/events"

    over = send(client, "POST", path, padded({"logs": [line]}, MAX_EVENTS_REQUEST_BYTES + 1),
                chunked)

    assert "over the 16777216-byte cap" in detail(over, 413)
    assert ok(client.get(f"/flow-runs/{run['id']}/logs")) == []
    longer_than_any_other_body = padded({"logs": [line]}, MAX_REQUEST_BYTES + 1)
    assert send(client, "POST", path, longer_than_any_other_body, chunked).status_code == 204


def parameters_of(size: int) -> dict[str, str]:
    """Parameters whose compact JSON is exactly `size` bytes."""
    return {"p": "x" * (size - len('{"p":""}'))}


CAP_MESSAGE = f"over the {MAX_PARAMETERS_BYTES}-byte cap"


@pytest.mark.parametrize("where", ["deployment", "schedule"])
def test_parameters_over_their_cap_are_422_and_register_nothing(
    client: httpx.Client, where: str
) -> None:
    def deployment(parameters: dict[str, str]) -> dict[str, Any]:
        if where == "deployment":
            return spec(**FREE, parameters=parameters, schedules=[])
        return spec(**FREE, parameters={}, schedules=[
            {"kind": "cron", "cron": "0 2 * * *", "parameters": parameters}])

    over = upsert(client, deployment(parameters_of(MAX_PARAMETERS_BYTES + 1)))

    assert CAP_MESSAGE in detail(over, 422)
    assert ok(client.get("/deployments")) == []
    ok(upsert(client, deployment(parameters_of(MAX_PARAMETERS_BYTES))))


def test_an_edit_or_a_run_with_parameters_over_the_cap_is_422_and_changes_nothing(
    client: httpx.Client,
) -> None:
    ok(upsert(client, spec(**FREE, parameters={"day": "today"})))
    too_many = {"parameters": parameters_of(MAX_PARAMETERS_BYTES + 1)}

    assert CAP_MESSAGE in detail(client.patch("/deployments/etl/nightly", json=too_many), 422)
    assert CAP_MESSAGE in detail(client.post("/deployments/etl/nightly/runs", json=too_many),
                                 422)

    assert ok(client.get("/deployments/etl/nightly"))["parameters"] == {"day": "today"}
    assert ok(client.get("/flow-runs")) == []
    at_cap = {"parameters": parameters_of(MAX_PARAMETERS_BYTES)}
    ok(client.post("/deployments/etl/nightly/runs", json=at_cap), 201)
