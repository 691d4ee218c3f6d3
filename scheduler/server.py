"""Running the server process: uvicorn serving the app on the configured host and port."""

from __future__ import annotations

import uvicorn

from ostinato.deploy.settings import Settings
from ostinato.scheduler.app import create_app


def serve(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; uvicorn stops accepting, finishes requests and exits."""
    config = uvicorn.Config(
        create_app(settings), host=settings.host, port=settings.port,
        log_level=settings.log_level, timeout_graceful_shutdown=10, access_log=False,
    )
    uvicorn.Server(config).run()
