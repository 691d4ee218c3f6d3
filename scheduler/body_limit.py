"""Caps on request bodies, enforced before a route parses them.

A JSON body is parsed whole in memory, so without a cap one request could make the server hold
any amount. The middleware refuses a body over its route's cap with 413 and a one-line
`{"detail": …}`: at once when `Content-Length` says so, else as soon as the bytes streamed so far
(a chunked body) pass it, without reading the rest. The route then never runs, so nothing
changes. Bundle uploads are left to their route, which streams them against their own, larger
cap (`max_bundle_bytes`).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ostinato.deploy.limits import MAX_EVENTS_REQUEST_BYTES, MAX_REQUEST_BYTES

CapFor = Callable[[Scope], int | None]
"""A request's body cap in bytes, from its scope; None: the route enforces its own."""


def api_body_cap(scope: Scope) -> int | None:
    """The cap of each route of the API: event batches from agents may carry long log lines;
    a bundle upload is capped by its route."""
    method, path = scope["method"], scope["path"]
    if method == "PUT" and path.startswith("/api/bundles/"):
        return None
    if method == "POST" and path.startswith("/api/flow-runs/") and path.endswith("/events"):
        return MAX_EVENTS_REQUEST_BYTES
    return MAX_REQUEST_BYTES


def too_large(cap: int) -> str:
    return f"request body is over the {cap}-byte cap"


def declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    """The `Content-Length` a request declares, if it declares a readable one."""
    for name, value in headers:
        if name.lower() == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class BodyLimit:
    """ASGI middleware refusing request bodies over their cap (see the module doc)."""

    def __init__(self, app: ASGIApp, cap_for: CapFor = api_body_cap) -> None:
        self.app = app
        self.cap_for = cap_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        cap = self.cap_for(scope) if scope["type"] == "http" else None
        if cap is None:
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope["headers"])
        if declared is not None and declared > cap:
            await JSONResponse({"detail": too_large(cap)}, status_code=413)(scope, receive, send)
            return
        await self.app(scope, _counting(receive, cap), send)


def _counting(receive: Receive, cap: int) -> Receive:
    """`receive`, raising once the body passes `cap`: FastAPI lets an HTTPException raised
    while it reads the body through, and answers it as `{"detail": …}`."""
    received = 0

    async def counted() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > cap:
                raise HTTPException(413, too_large(cap))
        return message

    return counted
