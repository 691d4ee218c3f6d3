"""`ostinato work-queue …`: named filters over runs that agents poll, with a priority, a
concurrency limit and a pause."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

from ostinato.cli import output
from ostinato.cli.output import JsonFlag, Row

if TYPE_CHECKING:
    from ostinato.deploy.client import Client

app = output.new_app("Manage work queues, the filters agents take runs from.")

QueueName = Annotated[str, typer.Argument(metavar="NAME", help="The work queue's name.",
                                          show_default=False)]
FilterTags = Annotated[list[str] | None, typer.Option(
    "--tag", metavar="TAG", show_default=False,
    help="Runs must carry this tag (all of them, if repeated).")]
ExcludeTags = Annotated[list[str] | None, typer.Option(
    "--exclude-tag", metavar="TAG", show_default=False,
    help="Runs must carry none of these tags. Repeatable.")]
Deployments = Annotated[list[str] | None, typer.Option(
    "--deployment", metavar="FLOW/NAME", show_default=False,
    help="Runs of any of these deployments. Repeatable.")]
Flows = Annotated[list[str] | None, typer.Option(
    "--flow", metavar="FLOW", help="Runs of any of these flows. Repeatable.", show_default=False)]
Priority = Annotated[int | None, typer.Option(
    metavar="N", help="Lower is served first (default 10).", show_default=False)]
Limit = Annotated[int | None, typer.Option(
    "--limit", min=0, metavar="N", show_default=False,
    help="Concurrency limit: at most this many PENDING or RUNNING runs through the queue.")]

FILTER_FIELDS = ("tags", "exclude_tags", "deployments", "flows")


def _filter(tags: list[str] | None, exclude_tags: list[str] | None,
            deployments: list[str] | None, flows: list[str] | None) -> dict[str, list[str]]:
    """The filter fields that were given (an option left out is not in the result)."""
    given = dict(zip(FILTER_FIELDS, (tags, exclude_tags, deployments, flows), strict=True))
    return {field: values for field, values in given.items() if values is not None}


def api_path(name: str, *action: str) -> str:
    return "/work-queues/" + "/".join(quote(part, safe="") for part in (name, *action))


# --- tables --------------------------------------------------------------------------------------


def _describe_filter(queue: Row) -> str:
    labels = {"tags": "tags", "exclude_tags": "not tags", "deployments": "deployments",
              "flows": "flows"}
    parts = [f"{labels[field]}: {', '.join(values)}"
             for field, values in queue["filter"].items() if values and field in labels]
    return "\n".join(parts) or "everything"


def _status(queue: Row) -> str:
    return "paused" if queue["paused"] else "active"


def _limit(queue: Row) -> str:
    limit = queue["concurrency_limit"]
    return "none" if limit is None else str(limit)


QUEUE_COLUMNS: list[output.Column] = [
    ("NAME", lambda q: q["name"]),
    ("PRIORITY", lambda q: str(q["priority"])),
    ("LIMIT", _limit),
    ("STATUS", _status),
    ("FILTER", _describe_filter),
]


def _show(queue: Row, as_json: bool) -> None:
    if as_json:
        output.print_json(queue)
        return
    output.print_fields([
        ("name", queue["name"]), ("id", queue["id"]), ("status", _status(queue)),
        ("priority", str(queue["priority"])), ("concurrency limit", _limit(queue)),
        ("filter", _describe_filter(queue)), ("description", output.maybe(queue["description"])),
        ("created", output.utc(queue["created"])), ("updated", output.utc(queue["updated"])),
    ])


# --- commands ------------------------------------------------------------------------------------


@app.command()
def create(
    name: QueueName,
    tag: FilterTags = None,
    exclude_tag: ExcludeTags = None,
    deployment: Deployments = None,
    flow: Flows = None,
    priority: Priority = None,
    limit: Limit = None,
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create a work queue: a filter over runs (all given conditions must hold).

    Example: ostinato work-queue create etl-prod --tag etl --exclude-tag slow --limit 4
    """
    body: dict[str, Any] = {"name": name, "filter": _filter(tag, exclude_tag, deployment, flow),
                            "concurrency_limit": limit, "paused": paused}
    if priority is not None:
        body["priority"] = priority
    with output.client() as api:
        _show(api.post("/work-queues", body), as_json)


@app.command("ls")
def list_queues(as_json: JsonFlag = False) -> None:
    """List work queues, highest priority (lowest number) first."""
    with output.client() as api:
        queues = api.get("/work-queues")
    output.print_listing(queues, QUEUE_COLUMNS, as_json=as_json, empty="no work queues")


@app.command()
def preview(
    name: QueueName,
    hours: Annotated[float, typer.Option(min=0.001, metavar="H",
                                         help="How far ahead to look, in hours.")] = 1.0,
    limit: output.Limit = None,
    as_json: JsonFlag = False,
) -> None:
    """List the waiting runs this queue would hand out in the next hours, in hand-out order."""
    from ostinato.cli.flow_runs import RUN_COLUMNS

    with output.client() as api:
        found = api.get(api_path(name, "preview"), hours=hours, limit=limit)
    output.print_listing(found, RUN_COLUMNS, as_json=as_json,
                         empty=f"no runs for {name} in the next {hours} h")


@app.command()
def inspect(name: QueueName, as_json: JsonFlag = False) -> None:
    """Show one work queue: filter, priority, concurrency limit, status."""
    with output.client() as api:
        _show(api.get(api_path(name)), as_json)


def _changes(api: Client, name: str, new_filter: dict[str, list[str]], clear_filter: bool
             ) -> dict[str, Any]:
    if not new_filter and not clear_filter:
        return {}
    current = {} if clear_filter else api.get(api_path(name))["filter"]
    return {"filter": {**current, **new_filter}}


@app.command()
def update(
    name: QueueName,
    tag: FilterTags = None,
    exclude_tag: ExcludeTags = None,
    deployment: Deployments = None,
    flow: Flows = None,
    clear_filter: Annotated[bool, typer.Option(
        "--clear-filter", help="Start from an empty filter (then apply the filter options).")
    ] = False,
    priority: Priority = None,
    limit: Limit = None,
    no_limit: Annotated[bool, typer.Option("--no-limit", help="Remove the concurrency limit.")
                        ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Change a work queue. A filter option replaces that part of the filter; what is not given
    stays as it is.

    Example: ostinato work-queue update etl-prod --flow etl --flow reports --no-limit
    """
    if limit is not None and no_limit:
        raise output.usage_error("--no-limit", "give --limit or --no-limit, not both")
    with output.client() as api:
        body = _changes(api, name, _filter(tag, exclude_tag, deployment, flow), clear_filter)
        if priority is not None:
            body["priority"] = priority
        if limit is not None or no_limit:
            body["concurrency_limit"] = limit
        _show(api.patch(api_path(name), body), as_json)


@app.command()
def pause(name: QueueName) -> None:
    """Pause a work queue: agents get no runs from it until it is resumed."""
    output.request("POST", api_path(name, "pause"), done=f"paused work queue {name}")


@app.command()
def resume(name: QueueName) -> None:
    """Resume a paused work queue."""
    output.request("POST", api_path(name, "resume"), done=f"resumed work queue {name}")


@app.command()
def delete(name: QueueName) -> None:
    """Delete a work queue (runs are not touched; other queues may still hand them out)."""
    output.request("DELETE", api_path(name), done=f"deleted work queue {name}")
