"""`ostinato up`: the server and one local agent in one process, the shortest way from a flow file
to runs on schedule on one machine."""

from __future__ import annotations

from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ostinato.cli import output
from ostinato.cli.server import Host, listening_settings

if TYPE_CHECKING:
    from ostinato.agent.loop import Agent
    from ostinato.deploy.client import Client
    from ostinato.deploy.settings import Settings

DEFAULT_QUEUE = "default"
_LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def up(
    flow_files: Annotated[list[Path] | None, typer.Argument(
        metavar="FLOW_FILE", exists=True, dir_okay=False, show_default=False,
        help="Flow files whose Deployment(...) objects to register, as `deployment create` "
             "does.")] = None,
    host: Host = None,
    port: Annotated[int | None, typer.Option(
        min=1, max=65535, metavar="PORT", show_default=False,
        help="Port to listen on (default: OSTINATO_PORT, else 4200).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, metavar="N",
                                       help="The agent runs at most this many runs at once.")] = 4,
    drain_timeout: Annotated[float, typer.Option(
        min=0, metavar="SECONDS",
        help="On Ctrl-C or SIGTERM, let running runs finish this long, then cancel them.")] = 60.0,
) -> None:
    """Run the server (API and scheduler) and an agent claiming from work queue `default`, in
    one process, until Ctrl-C or SIGTERM.

    The database is OSTINATO_DATABASE_URL, or SQLite at $OSTINATO_HOME/ostinato.db. The
    `default` queue is created if missing; its empty filter matches every run. Ctrl-C stops the
    agent first (runs not yet started go back to the queue, running ones may finish within
    --drain-timeout), then the server.

    Example: ostinato up deploy/examples/hello.py
    """
    from ostinato.scheduler.server import ApiServer

    settings = listening_settings(host, port)
    server = ApiServer(settings)
    agent = _local_agent(settings, limit, drain_timeout)

    output.on_stop_signals(agent.stop)
    output.log_to_stderr(settings.log_level)
    server.start()
    try:
        with agent.client:
            _prepare(agent.client, flow_files or [])
            print(f"Ostinato is up: API at {agent.client.api_url} (docs at "
                  f"{agent.client.api_url}/docs), agent claiming from work queue "
                  f"{DEFAULT_QUEUE!r}. Ctrl-C stops.", flush=True)
            agent.run()
    finally:
        server.stop()
        server.join()


def _local_agent(settings: Settings, limit: int, drain_timeout: float) -> Agent:
    from ostinato.agent.cache import BundleCache
    from ostinato.agent.loop import Agent, AgentOptions
    from ostinato.deploy.client import Client

    client = Client(_local_api_url(settings), settings.api_key or "",
                    ca_bundle=settings.ca_bundle)
    options = AgentOptions(queues=[DEFAULT_QUEUE], limit=limit, drain_timeout=drain_timeout,
                           cancel_grace=settings.cancel_grace_seconds,
                           spool_root=settings.home / "spool")
    return Agent(client, options, BundleCache(settings.home / "bundles", client))


def _local_api_url(settings: Settings) -> str:
    """Where a client on this machine reaches the server the settings describe (over HTTPS if
    it has a certificate, which must then name this address)."""
    host = _LOOPBACK.get(settings.host, settings.host)
    scheme = "https" if settings.ssl_certfile else "http"
    address = f"[{host}]" if ":" in host else host
    return f"{scheme}://{address}:{settings.port}/api"


def _prepare(client: Client, flow_files: list[Path]) -> None:
    """Create the `default` queue unless it exists, then register each file's deployments."""
    from ostinato.deploy.errors import Conflict
    from ostinato.deploy.registration import register_file

    with suppress(Conflict):  # it exists: keep its filter and limits as they are
        client.post("/work-queues", {"name": DEFAULT_QUEUE})
    for path in flow_files:
        result = register_file(client, path, progress=output.note)
        names = [*result["created"], *result["updated"], *result["unchanged"]]
        print(f"registered {', '.join(names)} from {path}")
