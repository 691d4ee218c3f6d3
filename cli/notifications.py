"""`ostinato notification …`: webhooks that receive a JSON document when runs end in chosen
states or stay late, and the record of what was sent."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ostinato.cli import output
from ostinato.cli.output import JsonFlag, Row

app = output.new_app(
    "Manage notifications: a JSON POST to a webhook when runs of a deployment or tag (or any "
    "run) end in chosen states or stay late; retried with back-off until the receiver takes it.")

NotificationId = Annotated[str, typer.Argument(
    metavar="ID", help="The notification's id (notification ls).", show_default=False)]


def _compact(seconds: float) -> str:
    """`600` → `10m`, `5400` → `1h30m`, `0.5` → `0.5s`: the form --late-after takes."""
    if seconds < 60 or seconds % 1:
        return f"{seconds:g}s"
    parts, rest = [], int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


def _watches(rule: Row) -> str:
    late = [f"late {_compact(rule['late_after'])}"] if rule["late_after"] is not None else []
    return ", ".join([*rule["states"], *late])


def _runs_of(rule: Row) -> str:
    if rule["deployment"]:
        return str(rule["deployment"])
    return f"tag {rule['tag']}" if rule["tag"] else "every deployment"


RULE_COLUMNS: list[output.Column] = [
    ("ID", lambda r: r["id"]),
    ("WHEN", _watches),
    ("RUNS OF", _runs_of),
    ("WEBHOOK", lambda r: r["webhook"]),
    ("DELIVERED", lambda r: str(r["deliveries"]["delivered"])),
    ("PENDING", lambda r: str(r["deliveries"]["pending"])),
    ("FAILED", lambda r: str(r["deliveries"]["failed"])),
]

DELIVERY_COLUMNS: list[output.Column] = [
    ("RUN", lambda d: d["flow_run_id"]),
    ("EVENT", lambda d: "late" if d["event"] == "late" else d["state"]),
    ("STATUS", lambda d: d["status"]),
    ("ATTEMPTS", lambda d: str(d["attempts"])),
    ("LAST ERROR", lambda d: output.maybe(d["last_error"])),
    ("NEXT ATTEMPT", lambda d: output.utc(d["next_attempt_at"])),
    ("DELIVERED AT", lambda d: output.utc(d["delivered_at"])),
    ("NOTIFICATION", lambda d: d["notification_id"]),
]


def _show(rule: Row, as_json: bool) -> None:
    if as_json:
        output.print_json(rule)
        return
    output.print_fields([
        ("id", rule["id"]), ("when", _watches(rule)), ("runs of", _runs_of(rule)),
        ("webhook", rule["webhook"]), ("created", output.utc(rule["created"])),
    ])


@app.command()
def create(
    webhook: Annotated[str, typer.Option(
        metavar="URL", show_default=False, help="Where to POST the documents (http or https).")],
    state: Annotated[list[str] | None, typer.Option(
        metavar="STATE", show_default=False,
        help="Post when a run ends in this state: COMPLETED, FAILED, CRASHED or CANCELLED. "
             "Repeatable.")] = None,
    late_after: Annotated[float | None, typer.Option(
        parser=output.parse_duration, metavar="DURATION", show_default=False,
        help="Post when a run has shown as Late this long without starting, e.g. 10m.")] = None,
    deployment: Annotated[str | None, typer.Option(
        metavar="FLOW/NAME", show_default=False, help="Only runs of this deployment.")] = None,
    tag: Annotated[str | None, typer.Option(
        metavar="TAG", show_default=False, help="Only runs carrying this tag.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Post a JSON document to a webhook about each run that ends in one of the states, or that
    stays late: once per run (the document's id is the same on every retry).

    Example: ostinato notification create --state FAILED --state CRASHED --late-after 10m
    --deployment etl/nightly --webhook https://hooks.example.com/ostinato
    """
    body: dict[str, Any] = {"states": state or [], "late_after": late_after,
                            "deployment": deployment, "tag": tag, "webhook": webhook}
    with output.client() as api:
        _show(api.post("/notifications", body), as_json)


@app.command("ls")
def list_notifications(
    deliveries: Annotated[bool, typer.Option(
        "--deliveries", help="List the deliveries (newest first) instead of the rules.")
    ] = False,
    notification: Annotated[str | None, typer.Option(
        metavar="ID", show_default=False, help="With --deliveries: of this rule only.")] = None,
    status: Annotated[str | None, typer.Option(
        metavar="pending|delivered|failed", show_default=False,
        help="With --deliveries: only those with this status.")] = None,
    limit: output.Limit = None,
    as_json: JsonFlag = False,
) -> None:
    """List notification rules with their deliveries counted by status; with --deliveries,
    list the deliveries: status, attempts, last error, next attempt."""
    with output.client() as api:
        if not deliveries:
            rules = api.get("/notifications")
            output.print_listing(rules, RULE_COLUMNS, as_json=as_json, empty="no notifications")
            return
        found = api.get("/notifications/deliveries", notification=notification, status=status,
                        limit=limit)
    output.print_listing(found, DELIVERY_COLUMNS, as_json=as_json, empty="no deliveries")


@app.command()
def delete(notification_id: NotificationId) -> None:
    """Delete a notification rule and its deliveries (documents not yet sent are dropped)."""
    output.request("DELETE", f"/notifications/{notification_id}",
                   done=f"deleted notification {notification_id}")
