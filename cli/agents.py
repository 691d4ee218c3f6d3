"""`ostinato agent …`: the processes that claim runs from work queues and run them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ostinato.cli import output, services
from ostinato.cli.output import JsonFlag

app = output.new_app("Agents: the processes that take runs from work queues and run them.")
app.command("install-service")(services.install_service)

AGENT_COLUMNS: list[output.Column] = [
    ("NAME", lambda a: a["name"]),
    ("HOST", lambda a: a["host"]),
    ("QUEUES", lambda a: output.listing(a["queues"])),
    ("STATUS", lambda a: a["status"]),
    ("RUNNING", lambda a: str(a["running"])),
    ("LAST HEARTBEAT (UTC)", lambda a: output.utc(a["last_heartbeat"])),
]


@app.command("ls")
def list_agents(as_json: JsonFlag = False) -> None:
    """List registered agents by name: their queues, whether they are online (heartbeat within
    a lease) and how many runs each holds (claimed, running or being cancelled)."""
    with output.client() as api:
        agents = api.get("/agents")
    output.print_listing(agents, AGENT_COLUMNS, as_json=as_json, empty="no agents")


@app.command()
def start(
    queue: Annotated[list[str], typer.Option(
        "-q", "--queue", metavar="QUEUE", help="A work queue to claim from (repeatable).",
        show_default=False)],
    api: Annotated[str | None, typer.Option(
        metavar="URL", help="The server's API (default: OSTINATO_API_URL).",
        show_default=False)] = None,
    ca_bundle: Annotated[Path | None, typer.Option(
        metavar="FILE", show_default=False,
        help="Trust these CA certificates (PEM) for an https:// API, e.g. a private CA "
             "(default: OSTINATO_CA_BUNDLE, else the public CAs of certifi).")] = None,
    name: Annotated[str | None, typer.Option(
        metavar="NAME", help="The agent's name (default: HOST-PID).", show_default=False)] = None,
    limit: Annotated[int, typer.Option(min=1, max=100, metavar="N",
                                       help="At most this many runs at once.")] = 4,
    prefetch: Annotated[float, typer.Option(
        min=0, max=300, metavar="SECONDS",
        help="Claim runs this early; each still starts at its scheduled time.")] = 0.0,
    drain_timeout: Annotated[float, typer.Option(
        min=0, metavar="SECONDS",
        help="On Ctrl-C or SIGTERM, let running runs finish this long, then cancel them.")] = 60.0,
    once: Annotated[bool, typer.Option(
        "--once", help="Claim what is due now, run it to the end, and exit.")] = False,
) -> None:
    """Claim runs from the work queues and run them, until Ctrl-C or SIGTERM.

    Each run executes in its own process group, from its deployment's bundle (fetched by
    sha256 into OSTINATO_HOME/bundles) or from the path the deployment names on this host.
    """
    from ostinato.agent.cache import BundleCache
    from ostinato.agent.loop import Agent, AgentOptions, default_name
    from ostinato.deploy.client import Client

    given = {"api_url": api, "ca_bundle": ca_bundle}
    settings = output.load_settings(**{k: v for k, v in given.items() if v is not None})
    client = Client(settings.api_url, settings.api_key or "", ca_bundle=settings.ca_bundle)
    options = AgentOptions(queues=queue, name=name or default_name(), limit=limit,
                           prefetch=prefetch, cancel_grace=settings.cancel_grace_seconds,
                           drain_timeout=drain_timeout, spool_root=settings.home / "spool")
    agent = Agent(client, options, BundleCache(settings.home / "bundles", client))
    output.on_stop_signals(agent.stop)
    output.log_to_stderr(settings.log_level)
    output.note(f"agent {options.name} claiming from {', '.join(queue)}; Ctrl-C to stop")
    with client:
        agent.run(once=once)
