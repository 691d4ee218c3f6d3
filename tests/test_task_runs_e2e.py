"""A flow with tasks and subflows, run by a real agent in a real child process against a real
server: what the server stores is every task run with its upstream edges, attempts and result,
every log line attributed to the task run or subflow run that wrote it, and the subflow runs as
children of the run."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ostinato.agent.loop import Agent
from tests.agents import ended, start_run
from tests.conftest import RunningServer
from tests.test_agent_loop import serving_agent

FLOWS = textwrap.dedent("""
    import logging
    from pathlib import Path
    from ostinato.deploy import flow, get_run_logger, task

    @task
    def a() -> list[int]:
        return [100, 200]

    @task
    def b(numbers: list[int]) -> int:
        for n in range(5):
            get_run_logger().info("b says %d", n)
        return sum(numbers)

    @task
    def c(numbers: list[int]) -> int:
        for n in range(5):
            logging.getLogger("etl.c").warning("c says %d", n)
        print("c prints")
        return len(numbers) * 1000

    @task
    def d(x: int, y: int) -> int:
        return x + y

    @task(retries=1, retry_delay=0.1)
    def flaky() -> str:
        marker = Path("flaky-attempted")
        if not marker.exists():
            marker.write_text("1")
            raise ConnectionError("first attempt fails")
        return "second attempt works"

    @flow
    def inner(n: int) -> int:
        get_run_logger().info("inner got %d", n)
        return d(n, 1)

    @flow
    def outer(n: int) -> int:
        return inner(n) * 2

    @flow(name="graph")
    def graph() -> dict:
        numbers = a()
        total = d(b.submit(numbers), c.submit(numbers))
        return {"total": total, "flaky": flaky(), "nested": outer(total)}
""")


@pytest.fixture
def agent(server: RunningServer, tmp_path: Path) -> Iterator[Agent]:
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "flows.py").write_text(FLOWS)
    spec = {"flow": "graph", "name": "d", "entrypoint": "flows.py:graph", "path": str(folder)}
    with server.client() as client:
        client.put("/deployments", json={"deployments": [spec]}).raise_for_status()
        client.post("/work-queues", json={"name": "default"}).raise_for_status()
    with serving_agent(server, tmp_path) as running:
        yield running


def _get(server: RunningServer, path: str, **params: Any) -> Any:
    with server.client() as client:
        return client.get(path, params=params).raise_for_status().json()


def test_a_flow_run_records_its_task_runs_logs_and_subflows(server: RunningServer,
                                                            agent: Agent) -> None:
    run_id = start_run(server, "graph/d")
    run = ended(server, run_id)
    assert run["state"] == "COMPLETED", run["message"]
    assert run["result"] == {"total": 2300, "flaky": "second attempt works", "nested": 4602}

    tasks = {t["name"]: t for t in _get(server, f"/flow-runs/{run_id}/task-runs")}
    assert sorted(tasks) == ["a-0", "b-0", "c-0", "d-0", "flaky-0"]
    names = {t["id"]: name for name, t in tasks.items()}
    edges = {(names[up], name) for name, t in tasks.items() for up in t["upstream"]}
    assert edges == {("a-0", "b-0"), ("a-0", "c-0"), ("b-0", "d-0"), ("c-0", "d-0")}
    assert {t["state"] for t in tasks.values()} == {"COMPLETED"}
    assert (tasks["flaky-0"]["attempt"], tasks["d-0"]["result"]) == (2, 2300)
    assert [h["name"] for h in tasks["flaky-0"]["history"]] == [
        "Running", "AwaitingRetry", "Running", "Completed"]

    lines = _get(server, f"/flow-runs/{run_id}/logs")
    by_task = {(line["message"], names.get(line["task_run_id"])) for line in lines}
    assert {(f"b says {n}", "b-0") for n in range(5)} <= by_task
    assert {(f"c says {n}", "c-0") for n in range(5)} | {("c prints", "c-0")} <= by_task

    (outer,) = _get(server, "/flow-runs", parent=run_id)
    (inner,) = _get(server, "/flow-runs", parent=outer["id"])
    assert (outer["flow"], outer["state"], outer["result"]) == ("outer", "COMPLETED", 4602)
    assert (inner["parameters"], inner["result"]) == ({"n": 2300}, 2301)
    assert [t["name"] for t in _get(server, f"/flow-runs/{inner['id']}/task-runs")] == ["d-0"]
    assert [line["message"] for line in _get(server, f"/flow-runs/{inner['id']}/logs")] == [
        "inner got 2300"]
