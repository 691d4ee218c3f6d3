"""`ostinato deployment …`: register a flow file's deployments, then list, inspect, run, pause,
resume and delete them by `FLOW/NAME`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

import typer

from ostinato.cli import output
from ostinato.cli.output import JsonFlag, Row

if TYPE_CHECKING:
    from ostinato.deploy.registration import FlagDeployment
    from ostinato.deploy.schedules import Cron, Interval, RRule

app = output.new_app("Register, list, run, pause and delete deployments.")


@dataclass(frozen=True)
class Parameter:
    """One `--param KEY=VALUE`."""

    key: str
    value: Any


def _not_a_number(constant: str) -> Any:
    raise ValueError(constant)  # NaN and Infinity are not JSON; keep them as strings


def parse_parameter(text: str) -> Parameter:
    """`KEY=VALUE`: VALUE is JSON when it parses as JSON, else a plain string."""
    key, equals, raw = text.partition("=")
    if not equals or not key.strip():
        raise typer.BadParameter(f"{text!r} is not KEY=VALUE (e.g. limit=5 or day=2030-01-31)")
    try:
        value = json.loads(raw, parse_constant=_not_a_number)
    except ValueError:
        value = raw
    return Parameter(key.strip(), value)


def parameters(given: list[Parameter] | None) -> dict[str, Any]:
    return {p.key: p.value for p in given or []}


def _check_name(value: str) -> str:
    flow, slash, name = value.partition("/")
    if not (flow and slash and name) or "/" in name:
        raise typer.BadParameter(f"{value!r} is not FLOW/NAME (e.g. etl/nightly)")
    return value


def api_path(full_name: str, *action: str) -> str:
    """`/deployments/{flow}/{name}[/action]`, each part URL-quoted."""
    parts = (*full_name.split("/", 1), *action)
    return "/deployments/" + "/".join(quote(part, safe="") for part in parts)


DeploymentName = Annotated[str, typer.Argument(
    metavar="FLOW/NAME", callback=_check_name, help="The deployment, e.g. etl/nightly.",
    show_default=False,
)]
Params = Annotated[list[Parameter] | None, typer.Option(
    "--param", "-p", parser=parse_parameter, metavar="KEY=VALUE", show_default=False,
    help='A flow parameter, repeatable. VALUE is JSON when it parses as JSON (5, true, [1, 2], '
         '"5"), otherwise a plain string.',
)]
Tags = Annotated[list[str] | None, typer.Option(
    "--tag", "-t", metavar="TAG", help="A tag, repeatable.", show_default=False,
)]


# --- create --------------------------------------------------------------------------------------


def _schedule(cron: str | None, interval: float | None, timezone: str | None
              ) -> Cron | Interval | RRule | None:
    if cron is not None and interval is not None:
        raise output.usage_error("--interval", "give --cron or --interval, not both")
    if cron is None and interval is None:
        if timezone is not None:
            raise output.usage_error("--timezone", "applies to --cron or --interval")
        return None
    from ostinato.deploy.schedules import parse_schedule

    data: dict[str, Any] = ({"kind": "cron", "cron": cron} if cron is not None
                            else {"kind": "interval", "every": interval})
    if timezone is not None:
        data["timezone"] = timezone
    return parse_schedule(data)


def _flag_deployment(flow: str | None, name: str | None, options: dict[str, Any]
                     ) -> FlagDeployment | None:
    """The deployment the flags describe, or None when the file's own deployments are meant."""
    if flow is None or name is None:
        if flow is not None or name is not None:
            missing = "--name" if name is None else "--flow"
            raise output.usage_error(missing, "--flow and --name go together")
        if any(options.values()):
            raise output.usage_error("--flow", "schedule, parameter and tag flags need --flow "
                                     "and --name (without them the file's Deployment(...) "
                                     "objects are registered as declared)")
        return None
    from ostinato.deploy.registration import FlagDeployment

    return FlagDeployment(flow, name, {k: v for k, v in options.items() if v})


def _summary(result: Row) -> str:
    parts = []
    for outcome in ("created", "updated", "unchanged"):
        names = result.get(outcome) or []
        parts.append(f"{outcome}: {len(names)}" + (f" ({', '.join(names)})" if names else ""))
    return ", ".join(parts)


@app.command()
def create(
    file: Annotated[Path, typer.Argument(
        metavar="FILE",
        help="The flow file (.py). Its folder is uploaded as the bundle (see .ostinatoignore).",
        show_default=False,
    )],
    flow: Annotated[str | None, typer.Option(
        metavar="FLOW", show_default=False,
        help="Instead of the file's Deployment(...) objects, register one deployment of this "
             "flow, described by the flags below.",
    )] = None,
    name: Annotated[str | None, typer.Option(
        metavar="NAME", help="Name of the deployment built from flags (required with --flow).",
        show_default=False,
    )] = None,
    cron: Annotated[str | None, typer.Option(
        metavar="EXPR", show_default=False,
        help='Cron schedule, 5 fields or @daily & co., e.g. "0 2 * * *".',
    )] = None,
    interval: Annotated[float | None, typer.Option(
        parser=output.parse_duration, metavar="DURATION", show_default=False,
        help="Interval schedule: seconds, or 30s, 10m, 2h, 1d (anchored at 2020-01-01 00:00).",
    )] = None,
    timezone: Annotated[str | None, typer.Option(
        metavar="TZ", show_default=False,
        help="IANA timezone of the schedule, e.g. Europe/Paris (default UTC; offsets such as "
             "+02:00 are refused).",
    )] = None,
    param: Params = None,
    tag: Tags = None,
    as_json: JsonFlag = False,
) -> None:
    """Register the deployments a flow file declares, or one described by flags.

    Imports FILE, collects its module-level Deployment(...) objects (or, with --flow and --name,
    builds one), checks their parameters against the flow signatures, uploads the bundle of
    FILE's folder unless the server has it, and creates or updates the deployments — all of
    them or none. Running it again with no change changes nothing. Prints how many deployments
    were created, updated or left unchanged.

    Example: ostinato deployment create flows/etl.py --flow etl --name nightly
    --cron "0 2 * * *" --timezone Europe/Paris --param limit=100 --tag etl
    """
    schedule = _schedule(cron, interval, timezone)
    options = {"schedules": [schedule] if schedule else [], "parameters": parameters(param),
               "tags": tag or []}
    flags = _flag_deployment(flow, name, options)
    from ostinato.deploy.registration import register_file

    with output.client() as api:
        result = register_file(api, file, flags=flags, progress=output.note)
    if as_json:
        output.print_json(result)
    else:
        print(_summary(result))


# --- ls and inspect ------------------------------------------------------------------------------


def _every(duration: str) -> str:
    """An ISO 8601 duration from the API, compact: `PT1H30M` → `1h30m`, `P1D` → `1d`."""
    return duration.replace("P", "").replace("T", "").lower()


def _describe_schedule(schedule: Row) -> str:
    kind = schedule.get("kind")
    text = {"cron": f"cron {schedule.get('cron')}",
            "interval": f"every {_every(str(schedule.get('every')))}",
            "rrule": f"rrule {schedule.get('rrule')}"}.get(str(kind), str(kind))
    if schedule.get("timezone", "UTC") != "UTC":
        text += f" ({schedule['timezone']})"
    return text if schedule.get("active", True) else f"{text} [inactive]"


def _schedules(deployment: Row) -> str:
    return "\n".join(_describe_schedule(s) for s in deployment["schedules"]) or "-"


def _status(deployment: Row) -> str:
    return "paused" if deployment["paused"] else "active"


DEPLOYMENT_COLUMNS: list[output.Column] = [
    ("NAME", lambda d: d["name"]),
    ("SCHEDULES", _schedules),
    ("TAGS", lambda d: output.listing(d["tags"])),
    ("STATUS", _status),
    ("UPDATED (UTC)", lambda d: output.utc(d["updated"])),
]


@app.command("ls")
def list_deployments(
    flow: Annotated[str | None, typer.Option(metavar="FLOW", show_default=False,
                                             help="Only this flow's deployments.")] = None,
    tag: Annotated[str | None, typer.Option(metavar="TAG", show_default=False,
                                            help="Only deployments with this tag.")] = None,
    paused: Annotated[bool | None, typer.Option(
        "--paused/--active", help="Only paused, or only active, deployments.",
        show_default=False,
    )] = None,
    limit: output.Limit = None,
    offset: output.Offset = None,
    as_json: JsonFlag = False,
) -> None:
    """List deployments by name, with their schedules, tags and status."""
    with output.client() as api:
        found = api.get("/deployments", flow=flow, tag=tag, paused=paused, limit=limit,
                        offset=offset)
    output.print_listing(found, DEPLOYMENT_COLUMNS, as_json=as_json, empty="no deployments")


def _fields(d: Row) -> list[tuple[str, str]]:
    source = f"bundle {d['bundle']}" if d.get("bundle") else f"path {d.get('path')}"
    retry_on = output.listing(d.get("retry_on"))
    retries = f"{d['retries']} (delay {d.get('retry_delay', 0)} s, on {retry_on})"
    return [
        ("name", d["name"]), ("id", d["id"]), ("status", _status(d)),
        ("entrypoint", d["entrypoint"]), ("source", source),
        ("parameters", output.compact_json(d["parameters"])), ("tags", output.listing(d["tags"])),
        ("overlap", d["overlap"]), ("catchup", d["catchup"]), ("retries", retries),
        ("timeout", output.maybe(d["timeout"] and f"{d['timeout']} s")),
        ("description", output.maybe(d.get("description"))),
        ("created", output.utc(d.get("created"))), ("updated", output.utc(d.get("updated"))),
    ]


SCHEDULE_COLUMNS: list[output.Column] = [
    ("SLUG", lambda s: s["slug"]),
    ("SCHEDULE", _describe_schedule),
    ("PARAMETERS", lambda s: output.compact_json(s.get("parameters"))),
]


@app.command()
def inspect(name: DeploymentName, as_json: JsonFlag = False) -> None:
    """Show one deployment: its source, parameters, policies and schedules."""
    with output.client() as api:
        deployment = api.get(api_path(name))
    if as_json:
        output.print_json(deployment)
        return
    output.print_fields(_fields(deployment))
    output.heading("schedules")
    output.print_table(deployment["schedules"], SCHEDULE_COLUMNS, empty="none (manual runs only)")


# --- run, pause, resume, delete ------------------------------------------------------------------


@app.command()
def run(
    name: DeploymentName,
    param: Params = None,
    start_in: Annotated[float | None, typer.Option(
        parser=output.parse_duration, metavar="DURATION", show_default=False,
        help="Schedule it this long from now: seconds, or 30s, 10m, 2h.",
    )] = None,
    at: Annotated[datetime | None, typer.Option(
        parser=output.parse_time, metavar="ISO-TIME", show_default=False,
        help="Schedule it at this time (ISO 8601; UTC unless it has an offset).",
    )] = None,
    tag: Tags = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a manual flow run of a deployment, now or later, and print its id.

    Parameters given here are merged over the deployment's defaults. Manual runs survive
    schedule edits. Example: ostinato deployment run etl/nightly --param limit=5 --start-in 10m
    """
    if start_in is not None and at is not None:
        raise output.usage_error("--at", "give --start-in or --at, not both")
    body: dict[str, Any] = {"parameters": parameters(param), "tags": tag or []}
    if at is not None:
        body["scheduled_time"] = at.isoformat()
    if start_in is not None:
        body["start_in"] = start_in
    with output.client() as api:
        created = api.post(api_path(name, "runs"), body)
    if as_json:
        output.print_json(created)
        return
    print(created["id"])
    output.note(f"{created['name']} scheduled for {output.utc(created['scheduled_time'])} UTC")


@app.command()
def pause(name: DeploymentName) -> None:
    """Pause a deployment: no new runs; its waiting runs are skipped (reason: paused)."""
    output.request("POST", api_path(name, "pause"), done=f"paused {name}")


@app.command()
def resume(name: DeploymentName) -> None:
    """Resume a paused deployment: its schedules produce runs again from now on."""
    output.request("POST", api_path(name, "resume"), done=f"resumed {name}")


@app.command()
def delete(
    name: DeploymentName,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete a deployment; its waiting runs are skipped, finished runs are kept."""
    if not yes:
        typer.confirm(f"Delete deployment {name}?", abort=True, err=True)
    output.request("DELETE", api_path(name), done=f"deleted {name}")


# --- upcoming, backfill --------------------------------------------------------------------------

INSTANT_COLUMNS: list[output.Column] = [
    ("UTC", lambda i: output.utc(i["scheduled_time"])),
    ("LOCAL", lambda i: i["local_time"].replace("T", " ")),
    ("SCHEDULE", lambda i: i["schedule"]),
    ("DST", lambda i: output.maybe(i["dst"])),
]


@app.command()
def upcoming(
    name: DeploymentName,
    count: Annotated[int, typer.Option("-n", min=1, max=1000, help="How many instants.")] = 10,
    after: Annotated[datetime | None, typer.Option(
        parser=output.parse_time, metavar="ISO-TIME", show_default=False,
        help="List instants after this time instead of after now (UTC unless it has an offset).",
    )] = None,
    as_json: JsonFlag = False,
) -> None:
    """Show the next instants of a deployment's active schedules, in UTC and local time.

    DST marks instants moved out of a spring-forward gap (shifted) or falling in a fall-back
    fold (fold).
    """
    with output.client() as api:
        found = api.get(api_path(name, "upcoming"), n=count,
                        after=after.isoformat() if after else None)
    output.print_listing(found, INSTANT_COLUMNS, as_json=as_json, empty="no upcoming instants")


@app.command()
def backfill(
    name: DeploymentName,
    start: Annotated[datetime, typer.Option(
        parser=output.parse_time, metavar="ISO-TIME", help="Start of the window (included).")],
    end: Annotated[datetime, typer.Option(
        parser=output.parse_time, metavar="ISO-TIME", help="End of the window (included).")],
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="List the runs the window would get; create nothing.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Create the runs a past window would have had; slots that already have a run are left.

    The dry run lists exactly the runs the real one creates.
    """
    body = {"start": start.isoformat(), "end": end.isoformat(), "dry_run": dry_run}
    with output.client() as api:
        result = api.post(api_path(name, "backfill"), body)
    if as_json:
        output.print_json(result)
        return
    output.print_table(result["runs"], INSTANT_COLUMNS, empty="no runs to create")
    verb = "would create" if dry_run else "created"
    print(f"{verb} {len(result['runs'])} runs; {result['already_present']} slots already had one")
