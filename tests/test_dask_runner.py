"""`DaskTaskRunner` on a real local Dask cluster (worker processes): `.submit()` and `.map()`
run there, their logs come back attributed to their task runs, and a worker's exception
reaches the flow with the worker's traceback."""

from __future__ import annotations

import copy
import logging
import os
from typing import Any

import pytest

from ostinato.deploy import DaskTaskRunner, engine, flow, get_run_logger, task
from ostinato.deploy.records import FlowRunRecord, TaskRunRecord

pytest.importorskip("distributed", reason="the dask extra is not installed: pip install "
                                          "'ostinato[dask]'")
pytestmark = pytest.mark.slow
ROOT = "00000000-0000-4000-8000-000000000002"
CLUSTER = {"n_workers": 2, "threads_per_worker": 1, "processes": True,
           "dashboard_address": None}


class Recorded:
    def __init__(self) -> None:
        self.tasks: dict[str, TaskRunRecord] = {}

    def task_run(self, record: TaskRunRecord) -> None:
        self.tasks[record["id"]] = copy.deepcopy(record)

    def flow_run(self, record: FlowRunRecord) -> None:
        raise AssertionError("no subflows here")


@task
def where(x: int) -> tuple[int, int]:
    get_run_logger().info("square of %d", x)
    return x * x, os.getpid()


@task(retries=1)
def broken() -> None:
    raise ValueError("worker says no")


@flow(task_runner=DaskTaskRunner(cluster_kwargs=CLUSTER))
def on_dask() -> dict[str, Any]:
    squares = [future.result() for future in where.map(range(6))]
    single = where.submit(7).result()
    try:
        broken.submit().result()
    except ValueError as exc:
        error = exc
    return {"squares": squares, "single": single, "notes": error.__notes__}


def test_submit_and_map_run_on_dask_workers_with_their_logs_attributed() -> None:
    lines: list[tuple[str, str | None]] = []

    class Attribution(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append((record.getMessage(), engine.current_ids()[1]))

    handler = Attribution()
    logger = get_run_logger()
    logger.addHandler(handler)
    recorded = Recorded()
    try:
        result = engine.run_root(on_dask, ROOT, recorded, {})
    finally:
        logger.removeHandler(handler)
    assert [square for square, _ in result["squares"]] == [0, 1, 4, 9, 16, 25]
    assert result["single"][0] == 49
    workers = {pid for _, pid in [*result["squares"], result["single"]]}
    assert os.getpid() not in workers  # the work ran in the cluster's worker processes
    worker_traceback = result["notes"][0]
    assert "in broken" in worker_traceback and "ValueError: worker says no" in worker_traceback
    ids = {record["name"]: record["id"] for record in recorded.tasks.values()}
    assert sorted(lines) == sorted([(f"square of {n}", ids[f"where-{n}"]) for n in range(6)]
                                   + [("square of 7", ids["where-6"])])
    failed = recorded.tasks[ids["broken-0"]]
    assert (failed["state"], failed["attempt"]) == ("FAILED", 2)
    assert "worker says no" in (failed["error"] or "")
    assert {r["state"] for r in recorded.tasks.values() if r["name"] != "broken-0"} == \
        {"COMPLETED"}
