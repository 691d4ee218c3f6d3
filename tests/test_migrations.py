"""Migrations: `upgrade()` builds exactly the tables' schema, idempotently, on every backend.

The reference is `ostinato.queues.tables.Base.metadata`: Alembic's own comparison (the one
`alembic revision --autogenerate` uses) must find nothing to add, drop or alter after `upgrade()`.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, insert, inspect, select, text

from ostinato.deploy.settings import Settings
from ostinato.queues.database import Database, connect
from ostinato.queues.migrate import upgrade
from ostinato.queues.tables import Base, flows, utcnow
from ostinato.scheduler.app import create_app


@pytest.fixture
def empty(database_url: str) -> Iterator[Database]:
    """An empty database (no tables at all) of each backend."""
    db = connect(database_url)
    yield db
    db.dispose()


def differences(database: Database, metadata: MetaData = Base.metadata) -> list[Any]:
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))


def snapshot(database: Database) -> dict[str, Any]:
    """Every table with its columns, indexes, unique constraints and foreign keys."""
    inspector = inspect(database.engine)
    return {
        table: (
            [(c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)],
            sorted((i["name"] or "", str(i["column_names"])) for i in inspector.get_indexes(table)),
            sorted(str(u["column_names"]) for u in inspector.get_unique_constraints(table)),
            sorted(str(f["referred_table"]) for f in inspector.get_foreign_keys(table)),
        )
        for table in sorted(inspector.get_table_names())
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(database_url: str) -> Iterator[httpx.Client]:
    """The app as `ostinato server start` builds it (no database handed in), on real HTTP."""
    port = free_port()
    app = create_app(Settings(database_url=database_url, port=port))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "the server stopped during start-up"
        assert time.monotonic() < deadline, "server did not start within 15 s"
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=10) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def versions(database: Database) -> list[str]:
    with database.engine.connect() as conn:
        return [row[0] for row in conn.execute(text("SELECT version_num FROM alembic_version"))]


def test_the_database_starts_empty(empty: Database) -> None:
    assert inspect(empty.engine).get_table_names() == []
    assert differences(empty), "compare_metadata should see every table missing"


def test_upgrade_creates_exactly_the_tables_schema(empty: Database) -> None:
    upgrade(empty)

    assert differences(empty) == []
    tables = set(inspect(empty.engine).get_table_names())
    assert tables == set(Base.metadata.tables) | {"alembic_version"}
    assert len(versions(empty)) == 1


def test_the_comparison_would_notice_a_table_the_migrations_lack(empty: Database) -> None:
    upgrade(empty)
    extended = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(extended)
    Table("not_migrated", extended, Column("id", Integer, primary_key=True))

    found = differences(empty, extended)

    assert [d[0] for d in found] == ["add_table"]
    assert found[0][1].name == "not_migrated"


def test_upgrade_twice_is_a_no_op_and_keeps_data(empty: Database) -> None:
    upgrade(empty)
    before, version = snapshot(empty), versions(empty)
    with empty.write() as conn:
        conn.execute(insert(flows).values(id=uuid.uuid4(), name="etl", created=utcnow()))

    upgrade(empty)

    assert snapshot(empty) == before
    assert versions(empty) == version
    assert differences(empty) == []
    with empty.read() as conn:
        assert conn.execute(select(flows.c.name)).scalars().all() == ["etl"]


def test_the_server_upgrades_a_fresh_database_at_start_up(database_url: str) -> None:
    with serving(database_url) as client:
        response = client.get("/health")
        assert response.status_code == 200, response.text
        backend = "sqlite" if database_url.startswith("sqlite") else "postgresql"
        assert response.json()["status"] == "ok"
        assert response.json()["database"] == backend
        # The app works on its tables, not just on `SELECT 1`.
        assert client.get("/deployments").json() == []

    probe = connect(database_url)
    try:
        assert "alembic_version" in inspect(probe.engine).get_table_names()
        assert len(versions(probe)) == 1
        assert differences(probe) == []
    finally:
        probe.dispose()


def test_the_server_starts_on_an_already_upgraded_database(database_url: str) -> None:
    first = connect(database_url)
    upgrade(first)
    before = snapshot(first)
    first.dispose()

    with serving(database_url) as client:
        assert client.get("/health").status_code == 200

    again = connect(database_url)
    try:
        assert snapshot(again) == before
    finally:
        again.dispose()
