"""Retention: finished runs past their age are deleted in bounded batches, with their logs, task
runs and state history; nothing unfinished or recent is touched. On every backend."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Table, func, insert, select

from ostinato.deploy.schedules import Cron
from ostinato.deploy.schemas import DeploymentSpec
from ostinato.deploy.settings import Settings
from ostinato.deploy.states import StateType
from ostinato.queues import deployments, runs
from ostinato.queues.database import Database
from ostinato.queues.retention import Retention, delete_finished_runs, purge_finished_runs
from ostinato.queues.tables import flow_run_states, flow_runs, logs, task_runs
from ostinato.scheduler.loops import SchedulerLoops

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
KEEP = timedelta(days=90)
RETENTION = Retention(KEEP)
OLD = NOW - KEEP - timedelta(days=1)
RECENT = NOW - timedelta(days=1)
S = StateType


def _run(conn: Any, state: StateType, scheduled: datetime, ended: datetime | None = None,
         **values: Any) -> uuid.UUID:
    """A run in `state`, last changed at its end (or its scheduled time), with one history
    entry, one log line and one task run."""
    row = runs.new_run_values(**{
        "name": "r", "flow_name": "f", "deployment_id": None, "deployment_name": None,
        "schedule_slug": None, "nominal_time": scheduled, "scheduled_time": scheduled,
        "parameters": {}, "tags": [], "auto_scheduled": False, "state": state.value,
        "state_name": state.display_name, "end_time": ended, "updated": ended or scheduled,
        **values})
    conn.execute(insert(flow_runs), [row])
    runs.append_history(conn, [(row["id"], 1)], state, name=state.display_name, reason=None,
                        message=None, actor="test")
    conn.execute(insert(logs), [{"flow_run_id": row["id"], "level": 20, "logger": "t",
                                 "message": "m", "timestamp": scheduled}])
    conn.execute(insert(task_runs), [{
        "flow_run_id": row["id"], "name": "t", "task_key": "t", "tags": [], "state": state.value,
        "state_name": state.display_name, "upstream": [], "history": []}])
    return uuid.UUID(str(row["id"]))


def _old_finished(conn: Any, count: int) -> list[uuid.UUID]:
    return [_run(conn, S.COMPLETED, OLD - timedelta(minutes=n), OLD) for n in range(count)]


def _left(database: Database, table: Table = flow_runs) -> int:
    with database.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _ids(database: Database) -> set[uuid.UUID]:
    with database.read() as conn:
        return set(conn.execute(select(flow_runs.c.id)).scalars())


def test_old_finished_runs_go_with_their_history_logs_and_task_runs(database: Database
                                                                     ) -> None:
    with database.write() as conn:
        gone = [_run(conn, state, OLD - timedelta(hours=1), OLD)
                for state in (S.COMPLETED, S.FAILED, S.CRASHED, S.CANCELLED)]
        gone.append(_run(conn, S.SKIPPED, OLD))  # never started: no end time
        kept = {
            _run(conn, S.COMPLETED, RECENT - timedelta(hours=1), RECENT),
            _run(conn, S.COMPLETED, OLD, RECENT),  # scheduled long ago, ended recently
            _run(conn, S.SKIPPED, OLD, updated=RECENT),  # skipped recently
            *(_run(conn, state, OLD) for state in (S.SCHEDULED, S.PENDING, S.CANCELLING)),
            _run(conn, S.RUNNING, OLD, start_time=OLD),
        }
    result = purge_finished_runs(database, RETENTION, NOW)
    assert result.runs_deleted == len(gone) and result.cutoff == NOW - KEEP
    assert _ids(database) == kept
    for table in (logs, task_runs, flow_run_states):
        assert _left(database, table) == len(kept)


def test_one_batch_deletes_at_most_its_limit_oldest_first(database: Database) -> None:
    with database.write() as conn:
        old = _old_finished(conn, 7)
    with database.write() as conn:
        assert delete_finished_runs(conn, NOW - KEEP, 3) == 3
    assert _ids(database) == set(old[:4])  # the last three are the oldest
    result = purge_finished_runs(database, Retention(KEEP, batch_size=3), NOW)
    assert (result.runs_deleted, result.batches, _left(database)) == (4, 2, 0)


def test_a_pass_stops_between_batches_when_told_to(database: Database) -> None:
    with database.write() as conn:
        _old_finished(conn, 5)
    paused: list[float] = []

    def stop(seconds: float) -> bool:
        paused.append(seconds)
        return True

    result = purge_finished_runs(database, Retention(KEEP, batch_size=2), NOW, pause=stop)
    assert (result.runs_deleted, _left(database), len(paused)) == (2, 3, 1)


def test_no_retention_keeps_every_run(database: Database, monkeypatch: pytest.MonkeyPatch
                                      ) -> None:
    with database.write() as conn:
        _old_finished(conn, 3)
    monkeypatch.setenv("OSTINATO_RETENTION_DAYS", "none")
    keep_all = Retention.from_settings(Settings())
    assert keep_all == Retention()
    assert purge_finished_runs(database, keep_all, NOW).runs_deleted == 0
    assert _left(database) == 3


def test_subflow_runs_go_with_their_parent_unless_still_running(database: Database) -> None:
    with database.write() as conn:
        parent = _run(conn, S.COMPLETED, OLD, OLD)
        # Not old by its own scheduled time: found only as its parent's subflow run.
        child = _run(conn, S.COMPLETED, RECENT, OLD, parent_run_id=parent)
        _run(conn, S.COMPLETED, RECENT, OLD, parent_run_id=child)
        running = _run(conn, S.RUNNING, OLD, parent_run_id=parent)
    assert purge_finished_runs(database, RETENTION, NOW).runs_deleted == 3
    with database.read() as conn:
        left = conn.execute(select(flow_runs.c.id, flow_runs.c.parent_run_id)).all()
    assert [tuple(row) for row in left] == [(running, None)]


def test_a_batch_takes_at_most_its_limit_of_subflow_runs_too(database: Database) -> None:
    with database.write() as conn:
        parent = _run(conn, S.COMPLETED, OLD, OLD)
        for _ in range(3):
            _run(conn, S.COMPLETED, RECENT, OLD, parent_run_id=parent)
    with database.write() as conn:
        assert delete_finished_runs(conn, NOW - KEEP, 1) == 2
    assert _left(database) == 2


def test_runs_counted_by_a_max_runs_countdown_are_kept(database: Database) -> None:
    with database.write() as conn:
        found = deployments.apply(conn, [DeploymentSpec(
            flow="f", name=name, entrypoint="f.py:f", path="/srv",
            schedules=[Cron("0 0 * * *", max_runs=max_runs)])
            for name, max_runs in (("counted", 5), ("free", None))]).deployments
        for deployment in found:
            _run(conn, S.COMPLETED, OLD, OLD, deployment_id=deployment.id,
                 deployment_name=deployment.name, schedule_slug=deployment.schedules[0].slug,
                 auto_scheduled=True)
    assert purge_finished_runs(database, RETENTION, NOW).runs_deleted == 1
    with database.read() as conn:
        assert conn.execute(select(flow_runs.c.deployment_name)).scalars().all() == ["f/counted"]


def test_the_loops_purge_and_say_what_they_deleted(database: Database) -> None:
    long_ago = datetime.now(UTC) - timedelta(days=400)
    with database.write() as conn:
        _run(conn, S.COMPLETED, long_ago, long_ago)
    loops = SchedulerLoops(database, retention=Retention(timedelta(days=365)))
    done = loops.run_once()
    assert any(line.startswith("purge: deleted 1 runs finished before") for line in done)
    assert _left(database) == 0
