"""`/api/tokens`: API keys, for admins only (a key is shown once, when it is made)."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, status

from ostinato.deploy.schemas import CreatedToken, Token, TokenRequest
from ostinato.queues import api_keys
from ostinato.scheduler.api.dependencies import DatabaseDep
from ostinato.scheduler.auth import AdminOnly

router = APIRouter(prefix="/tokens", tags=["tokens"])


@router.post("", response_model=CreatedToken, status_code=status.HTTP_201_CREATED)
def create(body: TokenRequest, database: DatabaseDep) -> CreatedToken:
    with database.write() as conn:
        return api_keys.create_key(conn, body, datetime.now(UTC))


@router.get("", response_model=list[Token], dependencies=[AdminOnly])
def list_all(database: DatabaseDep) -> list[Token]:
    with database.read() as conn:
        return api_keys.list_keys(conn, datetime.now(UTC))


@router.post("/{key_id}/revoke", response_model=Token)
def revoke(key_id: str, database: DatabaseDep) -> Token:
    """Revoke a key for good: every server refuses it from its next request on."""
    with database.write() as conn:
        return api_keys.revoke_key(conn, key_id, datetime.now(UTC))
