"""`ostinato concurrency-limit …`: global limits on how many claimed runs may carry a tag."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer

from ostinato.cli import output
from ostinato.cli.output import JsonFlag, Row

app = output.new_app("Manage global concurrency limits by tag: at most N claimed or running "
                     "runs carrying the tag, across every queue and agent.")

LimitTag = Annotated[str, typer.Argument(metavar="TAG", help="The tag the limit applies to.",
                                         show_default=False)]


def api_path(tag: str) -> str:
    return "/concurrency-limits/" + quote(tag, safe="")


LIMIT_COLUMNS: list[output.Column] = [
    ("TAG", lambda c: c["tag"]),
    ("LIMIT", lambda c: str(c["limit"])),
    ("ACTIVE", lambda c: str(c["active"])),
]


def _show(limit: Row, as_json: bool) -> None:
    if as_json:
        output.print_json(limit)
        return
    output.print_fields([
        ("tag", limit["tag"]), ("limit", str(limit["limit"])), ("active", str(limit["active"])),
        ("created", output.utc(limit["created"])),
    ])


@app.command()
def create(
    tag: LimitTag,
    limit: Annotated[int, typer.Argument(
        metavar="N", min=0, show_default=False,
        help="At most this many PENDING, RUNNING or CANCELLING runs with the tag (0 holds "
             "them all).")],
    as_json: JsonFlag = False,
) -> None:
    """Limit the runs carrying TAG to N at a time; if the tag has a limit, change it.

    Runs already claimed are not stopped: a lowered limit holds back new claims until the
    active count is under it. Example: ostinato concurrency-limit create database 4
    """
    with output.client() as api:
        _show(api.put("/concurrency-limits", {"tag": tag, "limit": limit}), as_json)


@app.command("ls")
def list_limits(as_json: JsonFlag = False) -> None:
    """List concurrency limits by tag, with how many runs carrying the tag are active now."""
    with output.client() as api:
        limits = api.get("/concurrency-limits")
    output.print_listing(limits, LIMIT_COLUMNS, as_json=as_json, empty="no concurrency limits")


@app.command()
def delete(tag: LimitTag) -> None:
    """Remove a tag's concurrency limit: runs carrying it are no longer held back by it."""
    output.request("DELETE", api_path(tag), done=f"deleted concurrency limit on tag {tag}")
