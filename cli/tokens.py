"""`ostinato token …`: API keys for the server (an admin's command)."""

from __future__ import annotations

from typing import Annotated

import typer

from ostinato.cli import output
from ostinato.cli.output import JsonFlag, Row

app = output.new_app(
    "Manage API keys. A server with no key serves only clients on its own host; once a key "
    "exists, every client sends one (OSTINATO_API_KEY).")

TOKEN_COLUMNS: list[output.Column] = [
    ("ID", lambda t: t["id"]),
    ("NAME", lambda t: t["name"]),
    ("SCOPE", lambda t: t["scope"]),
    ("QUEUES", lambda t: ", ".join(t["queues"]) or "-"),
    ("STATUS", lambda t: t["status"]),
    ("CREATED", lambda t: output.utc(t["created"])),
    ("EXPIRES", lambda t: output.utc(t["expires"]) if t["expires"] else "never"),
]


@app.command()
def create(
    scope: Annotated[str, typer.Option(
        metavar="admin|agent|read", show_default=False,
        help="admin: everything; agent: register, claim, heartbeat, report and fetch bundles "
             "for its queues only; read: read only.")],
    queue: Annotated[list[str] | None, typer.Option(
        metavar="QUEUE", show_default=False,
        help="A work queue an agent key is for (repeat; required for --scope agent).")] = None,
    expires_in: Annotated[float | None, typer.Option(
        parser=output.parse_duration, metavar="DURATION", show_default=False,
        help="Refuse the key after this long, e.g. 90d or 12h (default: never).")] = None,
    name: Annotated[str | None, typer.Option(
        metavar="NAME", show_default=False,
        help="What the key is for, shown by `token ls` (default: the scope).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Make an API key and print it, once: the server keeps only its hash.

    Example: ostinato token create --scope agent --queue etl --name etl-vm-1
    """
    body = {"name": name or scope, "scope": scope, "queues": queue or [],
            "expires_in": expires_in}
    with output.client() as api:
        token: Row = api.post("/tokens", body)
    if as_json:
        output.print_json(token)
        return
    print(token["key"])
    output.note(f"key {token['id']} ({token['scope']}); shown only now: keep it in "
                "OSTINATO_API_KEY of the clients that use it")


@app.command("ls")
def list_tokens(as_json: JsonFlag = False) -> None:
    """List API keys (never their secrets), with their scope, queues and status."""
    with output.client() as api:
        tokens = api.get("/tokens")
    output.print_listing(tokens, TOKEN_COLUMNS, as_json=as_json, empty="no API keys")


@app.command()
def revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id (token ls).",
                                          show_default=False)],
    as_json: JsonFlag = False,
) -> None:
    """Revoke a key for good: the server refuses it from its next request on."""
    with output.client() as api:
        token: Row = api.post(f"/tokens/{key_id}/revoke")
    if as_json:
        output.print_json(token)
    else:
        print(f"revoked key {token['id']} ({token['name']})")
