"""Bundles in the store: content-addressed, verified on the way in, immutable afterwards."""

from __future__ import annotations

import hashlib

from sqlalchemy import Connection, select

from ostinato.deploy.errors import InvalidInput, NotFound, PayloadTooLarge
from ostinato.deploy.schemas import BundleInfo
from ostinato.queues.database import insert_ignoring_duplicates
from ostinato.queues.tables import bundles, utcnow


def put(conn: Connection, sha256: str, content: bytes, *, max_bytes: int) -> BundleInfo:
    """Store a bundle under its sha256; a bundle already stored is left as it is."""
    if len(content) > max_bytes:
        raise PayloadTooLarge(f"bundle is {len(content)} bytes, over the {max_bytes}-byte cap")
    actual = hashlib.sha256(content).hexdigest()
    if actual != sha256:
        raise InvalidInput(f"bundle content has sha256 {actual}, not {sha256}")
    if not exists(conn, sha256):  # skip sending the content again; concurrent uploads agree
        conn.execute(insert_ignoring_duplicates(conn, bundles, "sha256").values(
            sha256=sha256, size=len(content), content=content, created=utcnow()))
    return info(conn, sha256)


def exists(conn: Connection, sha256: str) -> bool:
    query = select(bundles.c.sha256).where(bundles.c.sha256 == sha256)
    return conn.execute(query).first() is not None


def info(conn: Connection, sha256: str) -> BundleInfo:
    columns = (bundles.c.sha256, bundles.c.size, bundles.c.created)
    row = conn.execute(select(*columns).where(bundles.c.sha256 == sha256)).first()
    if row is None:
        raise NotFound(f"bundle {sha256} not found")
    return BundleInfo.model_validate(row._mapping)


def content(conn: Connection, sha256: str) -> bytes:
    data = conn.execute(select(bundles.c.content).where(bundles.c.sha256 == sha256)).scalar()
    if data is None:
        raise NotFound(f"bundle {sha256} not found")
    return bytes(data)
