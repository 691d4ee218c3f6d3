"""The bulk insert stores exactly what SQLAlchemy's own insert would, and ignores duplicates."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import insert, select
from sqlalchemy.exc import DataError

from ostinato.deploy.schemas import DeploymentSpec
from ostinato.queues import bundles, deployments, runs
from ostinato.queues.bulk import insert_runs_ignoring_duplicates
from ostinato.queues.database import Database
from ostinato.queues.tables import flow_runs

PARIS_WINTER = timezone(timedelta(hours=1))


def _deployment(database: Database) -> uuid.UUID:
    data = b"bundle"
    with database.write() as conn:
        bundles.put(conn, hashlib.sha256(data).hexdigest(), data, max_bytes=100)
        result = deployments.apply(conn, [DeploymentSpec(
            flow="etl", name="nightly", entrypoint="f.py:etl",
            bundle=hashlib.sha256(data).hexdigest())])
    return result.deployments[0].id


def _run(deployment_id: uuid.UUID | None, slug: str, minute: int) -> dict[str, Any]:
    nominal = datetime(2026, 3, 29, 1, minute, 30, 123456, tzinfo=PARIS_WINTER)
    return runs.slot_run_values(
        deployment_id, "etl/nightly", slug, nominal,  # type: ignore[arg-type]
        scheduled_time=nominal + timedelta(seconds=7),
        parameters={"day": "mon", "nested": {"a": [1, 2.5, None, True]}, "é": "ü"},
        tags=["etl", "café", 'q"uote'], auto_scheduled=True)


def test_bulk_rows_read_back_like_sqlalchemy_rows(database: Database) -> None:
    deployment_id = _deployment(database)
    bulk_rows = [_run(deployment_id, "bulk", m) for m in range(3)]
    plain_rows = [_run(deployment_id, "plain", m) for m in range(3)]
    with database.write() as conn:
        assert insert_runs_ignoring_duplicates(conn, bulk_rows) == 3
        conn.execute(insert(flow_runs), plain_rows)
    with database.read() as conn:
        stored = {row.id: row._asdict() for row in conn.execute(select(flow_runs))}
    for bulk, plain in zip(bulk_rows, plain_rows, strict=True):
        a, b = stored[bulk["id"]], stored[plain["id"]]
        assert {k: a[k] for k in bulk} == bulk  # every given value comes back as it was given
        assert {k: b[k] for k in plain} == plain
        others = set(a) - set(bulk)
        assert {k: a[k] for k in others} == {k: b[k] for k in others}  # defaults alike


def test_bulk_insert_ignores_existing_identities_and_counts_the_new(database: Database) -> None:
    deployment_id = _deployment(database)
    first = [_run(deployment_id, "s", m) for m in range(4)]
    again = [_run(deployment_id, "s", m) for m in range(2, 6)]  # minutes 2 and 3 exist already
    with database.write() as conn:
        assert insert_runs_ignoring_duplicates(conn, first) == 4
        assert insert_runs_ignoring_duplicates(conn, again) == 2
    with database.read() as conn:
        minutes = sorted(t.astimezone(UTC).minute for (t,) in conn.execute(
            select(flow_runs.c.nominal_time)))
    assert minutes == [0, 1, 2, 3, 4, 5]


def test_bulk_insert_in_one_transaction_twice_counts_each_batch(database: Database) -> None:
    with database.write() as conn:
        assert insert_runs_ignoring_duplicates(conn, [_run(None, "a", m) for m in range(3)]) == 3
        assert insert_runs_ignoring_duplicates(conn, [_run(None, "b", m) for m in range(5)]) == 5
    with database.read() as conn:
        assert len(conn.execute(select(flow_runs.c.id)).all()) == 8


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_value_postgresql_refuses_raises_the_error_the_api_maps_to_422(database: Database
                                                                          ) -> None:
    bad = _run(None, "s", 0) | {"name": "nul\x00in-a-name"}
    with pytest.raises(DataError), database.write() as conn:
        insert_runs_ignoring_duplicates(conn, [bad])
    with database.read() as conn:
        assert conn.execute(select(flow_runs.c.id)).all() == []
