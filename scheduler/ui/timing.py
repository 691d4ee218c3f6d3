"""`Server-Timing: app;dur=MS` on every page of the web UI: how long the server took, from the
request's arrival to the start of its response (a page is rendered whole before it starts).

Browsers' developer tools show it beside the network time, and tests/benchmarks/ui.py reads it,
so a slow page can be told from a slow network without access to the server. A plain ASGI
middleware, not `@app.middleware("http")`: that one would wrap the API's long polls and
streamed bundles too, and buffer them through a task of its own.
"""

from __future__ import annotations

import time

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

NOT_PAGES = ("/api/", "/static/", "/metrics")


class ServerTiming:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope["path"]).startswith(NOT_PAGES):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                took = (time.perf_counter() - started) * 1000
                MutableHeaders(scope=message).append("Server-Timing", f"app;dur={took:.1f}")
            await send(message)

        await self.app(scope, receive, timed)
