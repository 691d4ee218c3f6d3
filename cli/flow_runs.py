"""`ostinato flow-run …`: find runs by state, deployment, flow, tag, time and parent; inspect
one with its task runs and subflow runs, read or follow its logs, cancel one, or explain why one
is waiting."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import quote

import typer

from ostinato.cli import output
from ostinato.cli.output import JsonFlag, Row
from ostinato.deploy.client import Client
from ostinato.deploy.states import StateType

app = output.new_app("List, inspect, cancel and explain flow runs.")


def _check_id(value: str | None) -> str | None:
    """A flow run id is a UUID; anything else is a usage error, found before any request
    (None: an option left out)."""
    if value is None:
        return None
    try:
        return str(uuid.UUID(value.strip()))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a flow run id (a UUID, as `flow-run ls` "
                                 "shows)") from None


RunId = Annotated[str, typer.Argument(metavar="ID", callback=_check_id, help="The flow run's id.",
                                      show_default=False)]


def api_path(run_id: str, *action: str) -> str:
    return "/flow-runs/" + "/".join(quote(part, safe="") for part in (run_id, *action))


def _time_option(help_text: str) -> Any:
    """A typer option taking an ISO 8601 time (typer.Option itself is typed as returning Any)."""
    return typer.Option(parser=output.parse_time, metavar="ISO-TIME", show_default=False,
                        help=help_text)


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def _state_label(state: str, name: str) -> str:
    """`FAILED`, or with a name of its own `FAILED (TimedOut)`."""
    return state if name.upper() == state else f"{state} ({name})"


def _duration(start: str | None, end: str | None) -> str:
    """How long from `start` to `end`, as `4.2 s`, `3m05s` or `2h07m`; `-` if either is
    missing."""
    if not start or not end:
        return "-"
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


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
    ("STATE", lambda s: _state_label(s["type"], s["name"])),
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
    parent: Annotated[str | None, typer.Option(
        metavar="ID", callback=_check_id, show_default=False,
        help="Only the subflow runs of this flow run.")] = None,
    limit: output.Limit = None,
    offset: output.Offset = None,
    as_json: JsonFlag = False,
) -> None:
    """List flow runs, latest scheduled time first."""
    with output.client() as api:
        found = api.get("/flow-runs", state=[s.upper() for s in state or []],
                        deployment=deployment, flow=flow, tag=tag,
                        after=_iso(after), before=_iso(before), parent=parent,
                        limit=limit, offset=offset)
    output.print_listing(found, RUN_COLUMNS, as_json=as_json, empty="no flow runs")


def _fields(run: Row) -> list[tuple[str, str]]:
    return [
        ("id", run["id"]), ("name", run["name"]), ("flow", run["flow"]),
        ("deployment", output.maybe(run["deployment"])), ("state", _state(run)),
        ("attempt", str(run["attempt"])), ("scheduled", output.utc(run["scheduled_time"])),
        ("started", output.utc(run["start_time"])), ("ended", output.utc(run["end_time"])),
        ("parameters", output.compact_json(run["parameters"])),
        ("tags", output.listing(run["tags"])), ("work queue", output.maybe(run["work_queue"])),
        ("agent", output.maybe(run["agent"])), ("origin", _origin(run)),
        ("result", json.dumps(run["result"]) if run["end_time"] else "-"),
        ("process", _process(run)),
    ]


def _origin(run: Row) -> str:
    if run.get("parent_run_id"):
        return f"subflow run of {run['parent_run_id']}"
    return "schedule " + str(run.get("schedule")) if run["auto_scheduled"] else "manual"


def _process(run: Row) -> str:
    """How the run's process ended and what it used, as its agent measured it."""
    if run.get("exit_signal"):
        ending = f"killed by signal {run['exit_signal']}"
    elif run.get("exit_code") is not None:
        ending = f"exit code {run['exit_code']}"
    else:
        return "-"
    usage = ""
    if run.get("cpu_seconds") is not None and run.get("peak_rss_bytes") is not None:
        usage = f", {run['cpu_seconds']:.2f} s CPU, peak {run['peak_rss_bytes'] / 2**20:.0f} MiB"
    return ending + usage


def _task_run_columns(task_runs: list[Row]) -> list[output.Column]:
    """The task-run table; upstream task runs are named (by id if not among `task_runs`)."""
    names = {task_run["id"]: task_run["name"] for task_run in task_runs}
    return [
        ("NAME", lambda t: t["name"]),
        ("STATE", lambda t: _state_label(t["state"], t["state_name"])),
        ("ATTEMPT", lambda t: str(t["attempt"])),
        ("START (UTC)", lambda t: output.utc(t["start_time"])),
        ("DURATION", lambda t: _duration(t["start_time"], t["end_time"])),
        ("UPSTREAM", lambda t: output.listing([names.get(u, u) for u in t["upstream"]])),
    ]


SUBFLOW_COLUMNS: list[output.Column] = [
    ("ID", lambda r: r["id"]),
    ("NAME", lambda r: r["name"]),
    ("FLOW", lambda r: r["flow"]),
    ("STATE", _state),
    ("START (UTC)", lambda r: output.utc(r["start_time"])),
    ("DURATION", lambda r: _duration(r["start_time"], r["end_time"])),
]
PAGE = 1000


def _every_page(api: Client, path: str, **query: Any) -> list[Row]:
    """All of a listing, a page at a time."""
    found: list[Row] = []
    while True:
        page: list[Row] = api.get(path, **query, limit=PAGE, offset=len(found))
        found += page
        if len(page) < PAGE:
            return found


@app.command()
def inspect(run_id: RunId, as_json: JsonFlag = False) -> None:
    """Show one flow run, its state history, its task runs (by start time, with the task runs
    each was called with) and its subflow runs (times UTC).

    With --json: the run's API object with its history added under "states", its task runs
    under "task_runs" and its subflow runs under "subflow_runs".
    """
    path = api_path(run_id)
    with output.client() as api:
        run = api.get(path)
        states = api.get(path + "/states")
        task_runs = _every_page(api, path + "/task-runs")
        subflows = _every_page(api, "/flow-runs", parent=run_id)[::-1]  # oldest first
    if as_json:
        output.print_json({**run, "states": states, "task_runs": task_runs,
                           "subflow_runs": subflows})
        return
    output.print_fields(_fields(run))
    output.heading("state history")
    output.print_table(states, STATE_COLUMNS, empty="no states recorded")
    output.heading("task runs")
    output.print_table(task_runs, _task_run_columns(task_runs), empty="no task runs")
    output.heading("subflow runs")
    output.print_table(subflows, SUBFLOW_COLUMNS, empty="no subflow runs")


LOG_PAGE = 1000
FOLLOW_POLL_SECONDS = 1.0


@app.command()
def logs(
    run_id: RunId,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep printing new lines until the run ends.")] = False,
    as_json: Annotated[bool, typer.Option(
        "--json", help="One JSON object per line, as the API returns them.")] = False,
) -> None:
    """Print a flow run's log lines in order (times UTC): print() output, logging records and
    the traceback of a failure."""
    with output.client() as api:
        for line in _log_lines(api, run_id, follow=follow):
            if as_json:
                print(json.dumps(line), flush=follow)
            else:
                print(_log_text(line), flush=follow)


def _log_lines(api: Client, run_id: str, *, follow: bool) -> Iterator[Row]:
    """Every line of the run, page by page; when following, until the run has ended. The end
    is checked before the last read, and agents send a run's logs before its final state, so
    no line is missed."""
    after = 0
    while True:
        ended = follow and StateType(api.get(api_path(run_id))["state"]).is_terminal
        page: list[Row] = api.get(api_path(run_id, "logs"), after=after, limit=LOG_PAGE)
        yield from page
        if page:
            after = page[-1]["id"]
        if len(page) == LOG_PAGE:
            continue
        if not follow or ended:
            return
        time.sleep(FOLLOW_POLL_SECONDS)


def _log_text(line: Row) -> str:
    level = logging.getLevelName(line["level"])
    return f"{output.utc(line['timestamp'])} {level:<8} {line['logger']}: {line['message']}"


@app.command()
def cancel(run_id: RunId, as_json: JsonFlag = False) -> None:
    """Cancel a flow run: a waiting one is CANCELLED at once; a claimed or running one becomes
    CANCELLING until its agent has stopped it (SIGTERM, then SIGKILL after the grace period).

    Cancelling a run that has ended is an error.
    """
    with output.client() as api:
        run = api.post(api_path(run_id, "cancel"))
    if as_json:
        output.print_json(run)
    elif run["state"] == "CANCELLING":
        print(f"cancelling {run['name']} ({run['id']}): its agent will stop it")
    else:
        print(f"cancelled {run['name']} ({run['id']})")


def _hold(hold: Row) -> str:
    holders = hold.get("holders") or []
    return str(hold["message"]) + (f"; held by {', '.join(holders)}" if holders else "")


@app.command()
def explain(run_id: RunId, as_json: JsonFlag = False) -> None:
    """Say why a flow run is not starting: every reason at once (not due, deployment paused,
    no matching or open queue, no agent polling, queue or tag limit full, overlap policy),
    with the runs that hold a full limit.
    """
    with output.client() as api:
        found = api.get(api_path(run_id, "explain"))
    if as_json:
        output.print_json(found)
        return
    run = found["run"]
    print(f"{run['name']} ({run['id']}): {_state(run)}")
    if found["claimable"]:
        print("claimable now: it waits only for an agent to claim it")
    for hold in found["holds"]:
        print("- " + _hold(hold))
