"""Work-queue filters: the SQL compilation agrees with the Python reference on every case."""

from __future__ import annotations

import itertools
from typing import Any

from sqlalchemy import select

from ostinato.deploy.schemas import WorkQueueFilter
from ostinato.queues import runs
from ostinato.queues.database import Database
from ostinato.queues.filters import matches, sql_filter
from ostinato.queues.tables import flow_runs, utcnow

# Runs: (flow, deployment, tags). Tags include characters that broke naive text matching.
RUNS = [
    ("etl", "etl/nightly", ["etl", "nightly"]),
    ("etl", "etl/hourly", ["etl"]),
    ("etl", "etl/adhoc", []),
    ("report", "report/weekly", ["report", "gpu"]),
    ("report", "report/daily", ["report", "a_c", "café"]),
    ("ml", "ml/train", ["gpu", "big", 'q"uote']),
    ("ml", None, ["gpu"]),  # the run of a deleted deployment
]

FILTERS = [
    WorkQueueFilter(),
    WorkQueueFilter(tags=["etl"]),
    WorkQueueFilter(tags=["etl", "nightly"]),
    WorkQueueFilter(tags=["gpu"], exclude_tags=["big"]),
    WorkQueueFilter(exclude_tags=["gpu"]),
    WorkQueueFilter(tags=["abc"]),  # must not match "a_c" as a LIKE pattern would
    WorkQueueFilter(tags=["a_c"]),
    WorkQueueFilter(tags=["café"]),
    WorkQueueFilter(tags=['q"uote']),
    WorkQueueFilter(deployments=["etl/nightly", "report/weekly"]),
    WorkQueueFilter(flows=["ml"]),
    WorkQueueFilter(flows=["etl", "report"], exclude_tags=["nightly"]),
    WorkQueueFilter(tags=["report"], deployments=["report/daily"], flows=["report"]),
    WorkQueueFilter(deployments=["nope/nope"]),
]


def _insert_runs(database: Database) -> None:
    now = utcnow()
    with database.write() as conn:
        runs.insert_runs(conn, [
            runs.new_run_values(name=f"r{i}", flow_name=flow, deployment_id=None,
                                deployment_name=deployment, schedule_slug=None, nominal_time=now,
                                scheduled_time=now, parameters={}, tags=tags,
                                auto_scheduled=False)
            for i, (flow, deployment, tags) in enumerate(RUNS)
        ])


def _sql_names(database: Database, queue_filter: WorkQueueFilter) -> set[Any]:
    with database.read() as conn:
        query = select(flow_runs.c.name).where(sql_filter(queue_filter, database.dialect))
        return {name for (name,) in conn.execute(query)}


def test_sql_and_python_agree_on_every_filter(database: Database) -> None:
    _insert_runs(database)
    for queue_filter in FILTERS:
        expected = {f"r{i}" for i, (flow, deployment, tags) in enumerate(RUNS)
                    if matches(queue_filter, tags=tags, deployment=deployment, flow=flow)}
        assert _sql_names(database, queue_filter) == expected, queue_filter


def test_the_reference_semantics() -> None:
    run = {"tags": ["etl", "nightly"], "deployment": "etl/nightly", "flow": "etl"}
    assert matches(WorkQueueFilter(), **run)
    assert matches(WorkQueueFilter(tags=["etl", "nightly"]), **run)
    assert not matches(WorkQueueFilter(tags=["etl", "gpu"]), **run)
    assert not matches(WorkQueueFilter(exclude_tags=["nightly"]), **run)
    assert matches(WorkQueueFilter(deployments=["x/y", "etl/nightly"]), **run)
    assert not matches(WorkQueueFilter(flows=["report"]), **run)


def test_every_combination_of_fields_agrees(database: Database) -> None:
    _insert_runs(database)
    values = {"tags": [[], ["gpu"]], "exclude_tags": [[], ["big"]],
              "deployments": [[], ["ml/train", "etl/hourly"]], "flows": [[], ["ml"]]}
    for combination in itertools.product(*values.values()):
        queue_filter = WorkQueueFilter(**dict(zip(values, combination, strict=True)))
        expected = {f"r{i}" for i, (flow, deployment, tags) in enumerate(RUNS)
                    if matches(queue_filter, tags=tags, deployment=deployment, flow=flow)}
        assert _sql_names(database, queue_filter) == expected, queue_filter
