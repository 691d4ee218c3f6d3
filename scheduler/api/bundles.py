"""`/api/bundles/{sha256}`: upload (verified against its hash, capped), probe, download."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response
from starlette.concurrency import run_in_threadpool

from ostinato.deploy.errors import PayloadTooLarge
from ostinato.deploy.schemas import BundleInfo
from ostinato.queues import bundles
from ostinato.scheduler.api.dependencies import DatabaseDep, SettingsDep
from ostinato.scheduler.auth import AgentsAllowed

router = APIRouter(prefix="/bundles", tags=["bundles"])
Sha256Path = Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]


@router.put("/{sha256}", response_model=BundleInfo)
async def upload(sha256: Sha256Path, request: Request, database: DatabaseDep,
                 settings: SettingsDep) -> BundleInfo:
    """Store the raw request body (application/octet-stream) as the bundle with this hash."""
    content = await _read_capped(request, settings.max_bundle_bytes)

    def store() -> BundleInfo:
        with database.write() as conn:
            return bundles.put(conn, sha256, content, max_bytes=settings.max_bundle_bytes)

    return await run_in_threadpool(store)


async def _read_capped(request: Request, cap: int) -> bytes:
    """Read the body, refusing it as soon as it passes the cap rather than after buffering it
    (before reading any of it if its `Content-Length` already does)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge(f"bundle is over the {cap}-byte cap")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise PayloadTooLarge(f"bundle is over the {cap}-byte cap")
        chunks.append(chunk)
    return b"".join(chunks)


@router.get("/{sha256}/info", response_model=BundleInfo, dependencies=[AgentsAllowed])
def info(sha256: Sha256Path, database: DatabaseDep) -> BundleInfo:
    with database.read() as conn:
        return bundles.info(conn, sha256)


@router.get("/{sha256}", response_class=Response, dependencies=[AgentsAllowed])
def download(sha256: Sha256Path, database: DatabaseDep) -> Response:
    with database.read() as conn:
        data = bundles.content(conn, sha256)
    return Response(content=data, media_type="application/octet-stream")
