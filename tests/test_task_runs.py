"""Task runs and subflow runs over real HTTP (SQLite and PostgreSQL): the snapshots an agent
sends for the run it holds (`POST /api/flow-runs/{id}/events`) are what the API and
`ostinato flow-run ls|inspect` show; a batch that names anything outside the run's family is
refused whole; and a run that fails, crashes or is cancelled ends the subflow runs and task runs
it leaves behind.

Each test makes its runs on one server through one HTTP client: a server on PostgreSQL costs
about a second to stop, and a new client tens of milliseconds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from ostinato.queues import tables
from tests.conftest import RunningServer
from tests.test_cli import cli, seed
from tests.test_cli_claims import register_agent, table_rows
from tests.test_run_logs import log_line, running_run

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
ENDED_FIRST = "its flow run ended first"
STORED = (tables.flow_runs, tables.flow_run_states, tables.task_runs, tables.logs)


def _at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat()


def _history(states: list[str], start: float) -> list[dict[str, Any]]:
    return [{"type": state, "name": state.capitalize(), "timestamp": _at(start + n),
             "attempt": 1, "message": None} for n, state in enumerate(states)]


def _states_up_to(state: str) -> list[str]:
    """The states a task run went through to reach `state`."""
    return {"PENDING": ["PENDING"], "RUNNING": ["PENDING", "RUNNING"]}.get(
        state, ["PENDING", "RUNNING", state])


def task_run(flow_run_id: str, name: str, state: str = "COMPLETED", *, start: float = 0,
             upstream: tuple[str, ...] = (), **fields: Any) -> dict[str, Any]:
    """A task-run snapshot (ostinato.deploy.records.TaskRunRecord) started `start` seconds after
    T0, which ran a second if it has ended."""
    states = _states_up_to(state)
    return {"id": str(uuid.uuid4()), "flow_run_id": flow_run_id, "name": name,
            "task_key": f"etl.{name.rsplit('-', 1)[0]}", "tags": [], "upstream": list(upstream),
            "state": state, "state_name": state.capitalize(), "attempt": 1,
            "start_time": None if state == "PENDING" else _at(start),
            "end_time": _at(start + 1) if len(states) == 3 else None, "error": None,
            "result": None, "history": _history(states, start), **fields}


def subflow(parent_run_id: str, name: str, state: str = "RUNNING", *, start: float = 0,
            **fields: Any) -> dict[str, Any]:
    """A subflow-run snapshot (ostinato.deploy.records.FlowRunRecord)."""
    states = ["RUNNING"] if state == "RUNNING" else ["RUNNING", state]
    return {"id": str(uuid.uuid4()), "parent_run_id": parent_run_id, "flow": name.split("-")[0],
            "name": name, "parameters": {"n": 1}, "state": state,
            "state_name": state.capitalize(), "start_time": _at(start),
            "end_time": None if state == "RUNNING" else _at(start + 1), "message": None,
            "result": None, "history": _history(states, start), **fields}


@dataclass
class Api:
    """The server, one client to it, and an agent that claims runs from the seeded queue."""

    server: RunningServer
    http: httpx.Client
    agent: str

    def running_run(self) -> tuple[str, int]:
        return running_run(self.http, self.agent)

    def sent(self, run_id: str, **batch: list[dict[str, Any]]) -> None:
        response = self.http.post(f"/flow-runs/{run_id}/events", json=batch)
        assert response.status_code == 204, response.text

    def get(self, path: str, **params: Any) -> Any:
        return self.http.get(path, params=params).raise_for_status().json()

    def task_runs(self, *run_ids: str) -> dict[str, Any]:
        """The task runs of these flow runs, by name."""
        return {t["name"]: t for run_id in run_ids
                for t in self.get(f"/flow-runs/{run_id}/task-runs")}

    def stored(self) -> dict[str, list[str]]:
        with self.server.database.read() as conn:
            return {table.name: sorted(repr(tuple(row)) for row in conn.execute(select(table)))
                    for table in STORED}


@pytest.fixture
def api(server: RunningServer) -> Iterator[Api]:
    seed(server.url)
    agent = register_agent(server.url, "worker", ["existing"])
    with server.client() as http:
        yield Api(server, http, agent)


def test_the_last_snapshot_wins_and_a_diamonds_edges_are_stored_exactly(api: Api) -> None:
    run_id, _ = api.running_run()
    top = task_run(run_id, "fetch-1", "PENDING", tags=["io"])
    api.sent(run_id, task_runs=[top])
    assert api.task_runs(run_id)["fetch-1"]["state"] == "PENDING"
    running = task_run(run_id, "fetch-1", "RUNNING", id=top["id"], tags=["io"])
    left = task_run(run_id, "left-1", start=2, upstream=(top["id"],))
    right = task_run(run_id, "right-1", start=3, upstream=(top["id"],))
    bottom = task_run(run_id, "join-1", start=5, upstream=(right["id"], left["id"]))
    waiting = task_run(run_id, "later-1", "PENDING", upstream=(bottom["id"],))
    done = task_run(run_id, "fetch-1", id=top["id"], tags=["io"], result=[1, {"a": None}])
    for _ in range(2):  # a batch sent again (its answer was lost) changes nothing
        api.sent(run_id, task_runs=[running, waiting, bottom, right, left, done])

    found = api.get(f"/flow-runs/{run_id}/task-runs")
    assert [t["name"] for t in found] == ["fetch-1", "left-1", "right-1", "join-1", "later-1"]
    assert [t["upstream"] for t in found] == [
        [], [top["id"]], [top["id"]], [right["id"], left["id"]], [bottom["id"]]]
    first = found[0]
    assert (first["id"], first["state"], first["state_name"], first["result"], first["tags"],
            first["task_key"]) == (top["id"], "COMPLETED", "Completed", [1, {"a": None}],
                                   ["io"], "etl.fetch")
    assert [s["type"] for s in first["history"]] == ["PENDING", "RUNNING", "COMPLETED"]
    assert datetime.fromisoformat(first["end_time"]) == T0 + timedelta(seconds=1)
    page = api.get(f"/flow-runs/{run_id}/task-runs", limit=2, offset=1)
    assert [t["name"] for t in page] == ["left-1", "right-1"]


def test_subflow_runs_nest_with_their_history_logs_and_task_runs(api: Api) -> None:
    run_id, _ = api.running_run()
    child = subflow(run_id, "child-1")
    grandchild = subflow(child["id"], "grandchild-1", start=0.5)
    outer = task_run(run_id, "fetch-1")
    api.sent(run_id, flow_runs=[child, grandchild], task_runs=[outer], logs=[
        {**log_line("outer"), "task_run_id": outer["id"]}, log_line("flow")])
    inner = task_run(grandchild["id"], "deep-1")  # its flow run is found in the store
    api.sent(run_id, task_runs=[inner], logs=[
        {**log_line("inner"), "task_run_id": inner["id"], "flow_run_id": grandchild["id"]}])
    ended = [subflow(child["id"], "grandchild-1", "COMPLETED", id=grandchild["id"], start=0.5,
                     result={"rows": 3}),
             subflow(run_id, "child-1", "COMPLETED", id=child["id"])]
    for _ in range(2):
        api.sent(run_id, flow_runs=ended)

    shown = api.get(f"/flow-runs/{grandchild['id']}")
    assert (shown["parent_run_id"], shown["deployment"], shown["flow"], shown["state"],
            shown["reason"], shown["result"]) == (
        child["id"], None, "grandchild", "COMPLETED", "success", {"rows": 3})
    states = api.get(f"/flow-runs/{child['id']}/states")
    assert [(s["type"], s["reason"], s["actor"]) for s in states] == [
        ("RUNNING", None, "flow run"), ("COMPLETED", "success", "flow run")]
    assert [r["id"] for r in api.get("/flow-runs", parent=child["id"])] == [grandchild["id"]]
    assert api.task_runs(grandchild["id"])["deep-1"]["state"] == "COMPLETED"
    lines = api.get(f"/flow-runs/{run_id}/logs")
    assert [(line["message"], line["task_run_id"]) for line in lines] == [
        ("outer", outer["id"]), ("flow", None)]
    [line] = api.get(f"/flow-runs/{grandchild['id']}/logs")
    assert (line["message"], line["task_run_id"]) == ("inner", inner["id"])
    listed = cli(api.server.url, "flow-run", "ls", "--parent", run_id)
    assert listed.code == 0, listed.stderr
    assert table_rows(listed.stdout)[child["id"]][2:4] == ["child-1", "COMPLETED"]


def test_a_batch_naming_anything_outside_the_runs_family_is_refused_whole(api: Api) -> None:
    run_id, _ = api.running_run()
    other, _ = api.running_run()
    known = task_run(run_id, "fetch-1")
    api.sent(run_id, flow_runs=[subflow(run_id, "child-1")], task_runs=[known])
    api.sent(other, task_runs=[task_run(other, "other-1")])
    before = api.stored()
    stranger = str(uuid.uuid4())
    cases: list[tuple[str, dict[str, Any], str]] = [
        (run_id, {}, "at least one"),
        (run_id, {"flow_runs": [subflow(stranger, "lost-1")]}, f"names flow run {stranger}"),
        (run_id, {"flow_runs": [subflow(other, "x-1")]}, "neither flow run"),
        (run_id, {"flow_runs": [subflow(run_id, "x-1", id=other)]}, "is not a subflow run"),
        (run_id, {"task_runs": [task_run(other, "x-1")]}, "neither flow run"),
        (other, {"task_runs": [{**known, "flow_run_id": other}]}, "another flow run"),
        (run_id, {"flow_runs": [subflow(run_id, "fine-1")],
                  "logs": [{**log_line("x"), "flow_run_id": other}]}, "log line 0"),
        (run_id, {"task_runs": [{**task_run(run_id, "x-1"), "extra": 1}]}, "extra"),
        (run_id, {"task_runs": [task_run(run_id, "x" * 256)]}, "255"),
        (run_id, {"task_runs": [task_run(run_id, "x-1", upstream=(stranger,) * 10_001)]},
         "10000"),
        (run_id, {"task_runs": [task_run(run_id, "x-1", start_time="2026-01-01T00:00:00")]},
         "timezone"),
        (run_id, {"logs": [log_line("x")] * 1001}, "1000"),
        (stranger, {"logs": [log_line("x")]}, "not found"),
    ]
    for target, body, fragment in cases:
        response = api.http.post(f"/flow-runs/{target}/events", json=body)
        detail = response.json()["detail"]
        assert response.status_code == (404 if target == stranger else 422), detail
        assert fragment in detail and "\n" not in detail, (fragment, detail)
    assert api.http.get(f"/flow-runs/{stranger}/task-runs").status_code == 404
    old_route = api.http.post(f"/flow-runs/{run_id}/logs", json={"logs": [log_line("x")]})
    assert old_route.status_code == 405  # replaced by /events
    assert api.stored() == before


def _family_still_going(api: Api, run_id: str) -> dict[str, dict[str, Any]]:
    """Subflow runs and task runs of the run, some still going, some finished: by name."""
    child, finished = subflow(run_id, "child-1"), subflow(run_id, "finished-1", "COMPLETED")
    nested = subflow(child["id"], "nested-1")
    tasks = [task_run(run_id, "fetch-1", "RUNNING"), task_run(run_id, "wait-1", "PENDING"),
             task_run(child["id"], "deep-1", "RUNNING"),
             task_run(nested["id"], "deeper-1", "RUNNING"), task_run(run_id, "done-1")]
    api.sent(run_id, flow_runs=[child, finished, nested], task_runs=tasks)
    return {record["name"]: record for record in (child, finished, nested, *tasks)}


def test_a_run_that_ends_badly_ends_the_subflow_runs_and_task_runs_still_going(
        api: Api) -> None:
    """A run reported CRASHED or FAILED, and a subflow run its engine reports FAILED."""
    for ending, children in (("CRASHED", "CRASHED"), ("FAILED", "CANCELLED")):
        run_id, token = api.running_run()
        family = _family_still_going(api, run_id)
        api.http.post(f"/flow-runs/{run_id}/state", json={
            "state": ending, "fencing_token": token}).raise_for_status()

        for name in ("child-1", "nested-1"):
            states = api.get(f"/flow-runs/{family[name]['id']}/states")
            assert (states[-1]["type"], states[-1]["message"]) == (children, ENDED_FIRST)
            assert api.get(f"/flow-runs/{family[name]['id']}")["end_time"] is not None
        assert api.get(f"/flow-runs/{family['finished-1']['id']}")["state"] == "COMPLETED"
        tasks = api.task_runs(run_id, family["child-1"]["id"], family["nested-1"]["id"])
        for name in ("fetch-1", "wait-1", "deep-1", "deeper-1"):
            assert (tasks[name]["state"], tasks[name]["history"][-1]["message"]) == (
                children, ENDED_FIRST), (ending, name)
            assert tasks[name]["end_time"] is not None
        assert tasks["done-1"]["state"] == "COMPLETED" and len(tasks["done-1"]["history"]) == 3

    run_id, _ = api.running_run()  # a subflow run its engine reports FAILED
    family = _family_still_going(api, run_id)
    api.sent(run_id, flow_runs=[{**subflow(run_id, "child-1", "FAILED"),
                                 "id": family["child-1"]["id"]}])
    assert api.get(f"/flow-runs/{family['child-1']['id']}")["reason"] == "exception"
    tasks = api.task_runs(run_id, family["child-1"]["id"], family["nested-1"]["id"])
    assert [tasks[name]["state"] for name in ("fetch-1", "deep-1", "deeper-1")] == [
        "RUNNING", "CANCELLED", "CANCELLED"]
    assert api.get(f"/flow-runs/{run_id}")["state"] == "RUNNING"


def test_inspect_shows_task_runs_with_their_upstream_and_subflow_runs(api: Api) -> None:
    run_id, _ = api.running_run()
    top = task_run(run_id, "fetch-1")
    left = task_run(run_id, "left-1", start=2, upstream=(top["id"],))
    right = task_run(run_id, "right-1", "FAILED", start=3, upstream=(top["id"],),
                     error="Traceback …\nValueError: no rows")
    bottom = task_run(run_id, "join-1", "PENDING", upstream=(left["id"], right["id"]))
    child = subflow(run_id, "child-1", "COMPLETED", start=4)
    api.sent(run_id, flow_runs=[child], task_runs=[top, left, right, bottom])

    shown = cli(api.server.url, "flow-run", "inspect", run_id)
    assert shown.code == 0, shown.stderr
    tasks = table_rows(shown.stdout.split("task runs")[1].split("subflow runs")[0].strip("\n"))
    assert tasks["join-1"][1:] == ["PENDING", "1", "-", "-", "left-1,", "right-1"]
    assert tasks["right-1"][1:] == ["FAILED", "1", *_at(3)[:19].split("T"), "1.0", "s",
                                    "fetch-1"]
    subflows = table_rows(shown.stdout.split("subflow runs")[1].strip("\n"))
    assert subflows[child["id"]][1:4] == ["child-1", "child", "COMPLETED"]

    as_json = cli(api.server.url, "flow-run", "inspect", run_id, "--json").json()
    assert [t["name"] for t in as_json["task_runs"]] == ["fetch-1", "left-1", "right-1",
                                                         "join-1"]
    assert [r["id"] for r in as_json["subflow_runs"]] == [child["id"]]
    assert as_json["task_runs"][2]["error"].endswith("ValueError: no rows")
