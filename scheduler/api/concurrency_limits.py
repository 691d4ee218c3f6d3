"""`/api/concurrency-limits`: global limits on claimed runs carrying a tag."""

from __future__ import annotations

from fastapi import APIRouter, status

from ostinato.deploy.protocol import ConcurrencyLimit, ConcurrencyLimitSpec
from ostinato.queues import limits
from ostinato.scheduler.api.dependencies import DatabaseDep

router = APIRouter(prefix="/concurrency-limits", tags=["concurrency limits"])


@router.put("", response_model=ConcurrencyLimit)
def set_limit(body: ConcurrencyLimitSpec, database: DatabaseDep) -> ConcurrencyLimit:
    """Create the tag's limit or change it."""
    with database.write() as conn:
        return limits.set_limit(conn, body)


@router.get("", response_model=list[ConcurrencyLimit])
def list_all(database: DatabaseDep) -> list[ConcurrencyLimit]:
    with database.read() as conn:
        return limits.list_limits(conn)


@router.get("/{tag:path}", response_model=ConcurrencyLimit)
def read(tag: str, database: DatabaseDep) -> ConcurrencyLimit:
    with database.read() as conn:
        return limits.get_limit(conn, tag)


@router.delete("/{tag:path}", status_code=status.HTTP_204_NO_CONTENT)
def remove(tag: str, database: DatabaseDep) -> None:
    with database.write() as conn:
        limits.remove_limit(conn, tag)
