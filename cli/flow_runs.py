"""`ostinato flow-run …`: find runs by state, deployment, flow, tag and time; inspect one."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

import typer

from ostinato.cli import output
from ostinato.cli.output import JsonFlag, Row

app = output.new_app("List and inspect flow runs.")


def _time_option(help_text: str) -> Any:
    """A typer option taking an ISO 8601 time (typer.Option itself is typed as returning Any)."""
    return typer.Option(parser=output.parse_time, metavar="ISO-TIME", show_default=False,
                        help=help_text)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _state(run: Row) -> str:
    """The state's display name in capitals (`LATE` is a SCHEDULED run), with its reason."""
    state = str(run["state_name"] or run["state"]).upper()
    return f"{state} ({run['reason']})" if run.get("reason") else state


RUN_COLUMNS: list[output.Column] = [
    ("ID", lambda r: r["id"]),
    ("DEPLOYMENT", lambda r: output.maybe(r["deployment"])),
    ("NAME", lambda r: r["name"]),
    ("STATE", _state),
    ("SCHEDULED (UTC)", lambda r: output.utc(r["scheduled_time"])),
    ("AGENT", lambda r: output.maybe(r["agent"])),
]

STATE_COLUMNS: list[output.Column] = [
    ("TIME (UTC)", lambda s: output.utc(s["timestamp"])),
    ("STATE", lambda s: s["type"] if s["name"].upper() == s["type"] else
     f"{s['type']} ({s['name']})"),
    ("REASON", lambda s: output.maybe(s["reason"])),
    ("BY", lambda s: output.maybe(s["actor"])),
    ("MESSAGE", lambda s: output.maybe(s["message"])),
]


@app.command("ls")
def list_runs(
    state: Annotated[list[str] | None, typer.Option(
        metavar="STATE", show_default=False,
        help="Only runs in this state (SCHEDULED, PENDING, RUNNING, COMPLETED, FAILED, …). "
             "Repeatable.")] = None,
    deployment: Annotated[str | None, typer.Option(
        metavar="FLOW/NAME", help="Only runs of this deployment.", show_default=False)] = None,
    flow: Annotated[str | None, typer.Option(metavar="FLOW", help="Only runs of this flow.",
                                             show_default=False)] = None,
    tag: Annotated[str | None, typer.Option(metavar="TAG", help="Only runs with this tag.",
                                            show_default=False)] = None,
    after: Annotated[datetime | None, _time_option(
        "Only runs scheduled at or after this time (UTC unless it has an offset).")] = None,
    before: Annotated[datetime | None, _time_option("Only runs scheduled before this time.")
                      ] = None,
    limit: output.Limit = None,
    offset: output.Offset = None,
    as_json: JsonFlag = False,
) -> None:
    """List flow runs, latest scheduled time first."""
    with output.client() as api:
        found = api.get("/flow-runs", state=[s.upper() for s in state or []],
                        deployment=deployment, flow=flow, tag=tag,
                        after=_iso(after), before=_iso(before),
                        limit=limit, offset=offset)
    if as_json:
        output.print_json(found)
    else:
        output.print_table(found, RUN_COLUMNS, empty="no flow runs")


def _fields(run: Row) -> list[tuple[str, str]]:
    return [
        ("id", run["id"]), ("name", run["name"]), ("flow", run["flow"]),
        ("deployment", output.maybe(run["deployment"])), ("state", _state(run)),
        ("attempt", str(run["attempt"])), ("scheduled", output.utc(run["scheduled_time"])),
        ("started", output.utc(run["start_time"])), ("ended", output.utc(run["end_time"])),
        ("parameters", output.compact_json(run["parameters"])),
        ("tags", output.listing(run["tags"])), ("work queue", output.maybe(run["work_queue"])),
        ("agent", output.maybe(run["agent"])),
        ("origin", "schedule " + str(run.get("schedule")) if run["auto_scheduled"] else "manual"),
    ]


@app.command()
def inspect(
    run_id: Annotated[str, typer.Argument(metavar="ID", help="The flow run's id.",
                                          show_default=False)],
    as_json: JsonFlag = False,
) -> None:
    """Show one flow run and its state history (times UTC).

    With --json: the run's API object with its history added under "states".
    """
    path = "/flow-runs/" + quote(run_id.strip(), safe="")
    with output.client() as api:
        run = api.get(path)
        states = api.get(path + "/states")
    if as_json:
        output.print_json({**run, "states": states})
        return
    output.print_fields(_fields(run))
    output.heading("state history")
    output.print_table(states, STATE_COLUMNS, empty="no states recorded")
