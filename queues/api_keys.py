"""API keys: made, listed, revoked, and checked on every request.

A key reads `ost_<id>_<secret>`. The id is public and is the row's primary key, so checking a
key is one primary-key read; the secret is 256 random bits, stored only as its SHA-256 and
compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Row, exists, or_, select, update

from ostinato.deploy.errors import NotFound
from ostinato.deploy.schemas import CreatedToken, Scope, Token, TokenRequest, TokenStatus
from ostinato.queues.tables import api_keys

PREFIX = "ost_"


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(conn: Connection, request: TokenRequest, now: datetime) -> CreatedToken:
    """Make a key; its secret is in the answer and nowhere else."""
    key_id, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    expires = now + timedelta(seconds=request.expires_in) if request.expires_in else None
    conn.execute(api_keys.insert().values(
        id=key_id, name=request.name, secret_sha256=_digest(secret), scope=request.scope,
        queues=sorted(set(request.queues)), expires=expires, revoked=None, created=now,
    ))
    row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).one()
    return CreatedToken(**_token(row, now).model_dump(), key=f"{PREFIX}{key_id}_{secret}")


def list_keys(conn: Connection, now: datetime) -> list[Token]:
    rows = conn.execute(select(api_keys).order_by(api_keys.c.created)).all()
    return [_token(row, now) for row in rows]


def revoke_key(conn: Connection, key_id: str, now: datetime) -> Token:
    """Revoke a key for good (revoking it again keeps the first time)."""
    conn.execute(update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked.is_(None))
                 .values(revoked=now))
    row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).one_or_none()
    if row is None:
        raise NotFound(f"no API key {key_id!r}")
    return _token(row, now)


def verify_key(conn: Connection, key: str, now: datetime) -> Row[Any] | None:
    """The key's row if the key is genuine, unexpired and unrevoked; otherwise None."""
    key_id, _, secret = key.removeprefix(PREFIX).partition("_")
    if not key.startswith(PREFIX) or not secret:
        return None
    row = conn.execute(select(api_keys).where(api_keys.c.id == key_id)).one_or_none()
    if row is None or not hmac.compare_digest(row.secret_sha256, _digest(secret)):
        return None
    return row if _status(row, now) == "active" else None


def any_active_key(conn: Connection, now: datetime) -> bool:
    """Whether the server has a key that can be used: if not, it serves loopback clients only."""
    usable = exists().where(api_keys.c.revoked.is_(None),
                            or_(api_keys.c.expires.is_(None), api_keys.c.expires > now))
    return bool(conn.execute(select(usable)).scalar())


def _status(row: Row[Any], now: datetime) -> TokenStatus:
    if row.revoked is not None:
        return "revoked"
    if row.expires is not None and row.expires <= now:
        return "expired"
    return "active"


def _token(row: Row[Any], now: datetime) -> Token:
    return Token(id=row.id, name=row.name, scope=Scope(row.scope), queues=row.queues,
                 created=row.created, expires=row.expires, revoked=row.revoked,
                 status=_status(row, now))
