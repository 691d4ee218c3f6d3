"""`ostinato agent …`: the processes that claim runs from work queues and run them."""

from __future__ import annotations

from ostinato.cli import output
from ostinato.cli.output import JsonFlag

app = output.new_app("Agents: the processes that take runs from work queues and run them.")

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
