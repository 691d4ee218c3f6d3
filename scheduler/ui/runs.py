"""The runs pages: `/runs`, runs filtered and paged, newest scheduled first; `/runs/{id}`, one
run with its state history, task runs, subflow runs, logs and graph.

They read the store as `/api/flow-runs` does, through the same `queues` functions, one read
transaction a page. Filters come from a plain GET form and are checked here, so a bad value is
a page saying which field is wrong (422), never a 500 or a JSON body in the browser.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Connection
from starlette.datastructures import QueryParams

from ostinato.deploy.errors import InvalidInput, NotFound
from ostinato.deploy.protocol import LogRecord
from ostinato.deploy.schemas import DeploymentName, FlowRun, StateRecord, Tag, TaskRun
from ostinato.deploy.states import StateType
from ostinato.queues import logs, runs, task_runs
from ostinato.scheduler.api.dependencies import DatabaseDep, SettingsDep, as_utc, late_after
from ostinato.scheduler.ui import graph
from ostinato.scheduler.ui.pages import FRAGMENT_HEADER, render

router = APIRouter(include_in_schema=False)
PAGE = 50
MAX_LIMIT = 500  # under runs.MAX_PAGE: a page reads one run more than it shows
MAX_OFFSET = 1_000_000_000
FIRST_LOG_LINES = 500  # the rest come through the log tail (static/ui.js) at once
MAX_GRAPH_SUBFLOWS = 100  # each costs two queries; a page refreshes every few seconds
SHOWN_INPUT = 60  # characters of a bad value quoted back in its error
_DEPLOYMENT = TypeAdapter(DeploymentName)
_TAG = TypeAdapter(Tag)


@dataclass(frozen=True)
class Filters:
    """The list's filters, checked; the times stay as typed (UTC when they carry no offset)
    so the paging links repeat them as they were."""

    states: tuple[StateType, ...] = ()
    deployment: str = ""
    tag: str = ""
    after: str = ""
    before: str = ""
    limit: int = PAGE
    offset: int = 0

    @classmethod
    def parse(cls, params: QueryParams) -> Filters:
        """InvalidInput, naming the field, for anything the store could not take."""
        text = {name: params.get(name, "").strip() for name in ("after", "before")}
        return cls(
            states=_states(params.getlist("state")),
            deployment=_checked(_DEPLOYMENT, "deployment", params.get("deployment", "").strip(),
                                "a deployment (flow/deployment)"),
            tag=_checked(_TAG, "tag", params.get("tag", "").strip(), "a tag"),
            limit=_count("limit", params.get("limit", ""), PAGE, 1, MAX_LIMIT),
            offset=_count("offset", params.get("offset", ""), 0, 0, MAX_OFFSET), **text)

    def run_filter(self) -> runs.RunFilter:
        """One run more than the page shows: whether it comes back says if there are older."""
        after, before = _moment("after", self.after), _moment("before", self.before)
        if after and before and after >= before:
            raise InvalidInput("after: must be earlier than before")
        return runs.RunFilter(states=self.states, deployment=self.deployment or None,
                              tag=self.tag or None, scheduled_after=after,
                              scheduled_before=before, limit=self.limit + 1, offset=self.offset)

    def link(self, offset: int) -> str:
        """This list at another offset, with the same filters."""
        query = [("state", state.value) for state in self.states]
        query += [(name, value) for name, value in (
            ("deployment", self.deployment), ("tag", self.tag), ("after", self.after),
            ("before", self.before)) if value]
        if self.limit != PAGE:
            query.append(("limit", str(self.limit)))
        return "/runs?" + urlencode([*query, ("offset", str(offset))])


def _states(values: list[str]) -> tuple[StateType, ...]:
    known = {state.value: state for state in StateType}
    unknown = [value for value in values if value and value.upper() not in known]
    if unknown:
        raise InvalidInput(f"state: {unknown[0][:SHOWN_INPUT]!r} is not a state; "
                           f"use {', '.join(known)}")
    return tuple(dict.fromkeys(known[value.upper()] for value in values if value))


def _checked(adapter: TypeAdapter[str], name: str, value: str, expected: str) -> str:
    try:
        return adapter.validate_python(value) if value else ""
    except ValidationError:
        raise InvalidInput(f"{name}: {value[:SHOWN_INPUT]!r} is not {expected}") from None


def _count(name: str, text: str, default: int, low: int, high: int) -> int:
    try:
        value = int(text) if text.strip() else default
    except ValueError:
        raise InvalidInput(f"{name}: {text[:SHOWN_INPUT]!r} is not a whole number") from None
    if not low <= value <= high:
        raise InvalidInput(f"{name}: must be from {low} to {high}")
    return value


def _moment(name: str, text: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"{name}: {text[:SHOWN_INPUT]!r} is not a date and time "
                           "(YYYY-MM-DDTHH:MM, UTC)") from None
    try:
        return as_utc(moment)
    except InvalidInput as exc:
        raise InvalidInput(f"{name}: {exc.message}") from None


def lasted(item: FlowRun | TaskRun, now: datetime) -> float | None:
    """Seconds from its start to its end, or to `now` while it goes on."""
    if item.start_time is None or (item.end_time is None and item.state.is_terminal):
        return None
    return ((item.end_time or now) - item.start_time).total_seconds()


@router.get("/runs", response_class=HTMLResponse)
def list_page(request: Request, database: DatabaseDep, settings: SettingsDep) -> HTMLResponse:
    """Runs newest scheduled first, as the filter form asks; a bad filter is a 422 page."""
    common: dict[str, Any] = {"title": "Runs", "states": list(StateType),
                              "lasted": partial(lasted, now=datetime.now(UTC))}
    try:
        filters = Filters.parse(request.query_params)
        run_filter = filters.run_filter()
    except InvalidInput as exc:
        page = render(request, "runs.html", error=exc.message, runs=[], **common)
        page.status_code = 422
        return page
    with database.read() as conn:
        found = runs.list_runs(conn, run_filter, late_after=late_after(settings))
    newer = filters.link(max(filters.offset - filters.limit, 0)) if filters.offset else None
    older = filters.link(filters.offset + filters.limit) if len(found) > filters.limit else None
    return render(request, "runs.html", error=None, runs=found[:filters.limit], newer=newer,
                  older=older, first=filters.offset + 1, **common)


@dataclass(frozen=True)
class RunView:
    """Everything the detail page shows, read in one transaction."""

    run: FlowRun
    history: list[StateRecord]
    task_runs: list[TaskRun]
    subflows: list[FlowRun]  # direct ones, oldest first
    logs: list[LogRecord]
    graph: graph.Graph
    graph_cut: bool  # some subflow runs were left out of the graph


@router.get("/runs/{run_id}", response_class=HTMLResponse)
def detail_page(run_id: str, request: Request, database: DatabaseDep, settings: SettingsDep
                ) -> HTMLResponse:
    """One run; a 404 page for an id that is not a run's.

    A refresh (the fragment) reads no log lines: the page's tail keeps its own and takes only
    the run's `data-live` from it."""
    now = datetime.now(UTC)
    lines = 0 if request.headers.get(FRAGMENT_HEADER) == "1" else FIRST_LOG_LINES
    try:
        ident = uuid.UUID(run_id)
    except ValueError:
        return _missing(request, run_id)
    try:
        with database.read() as conn:
            view = _read_run(conn, ident, late_after(settings), now, lines)
    except NotFound:
        return _missing(request, run_id)
    return render(request, "run.html", title=view.run.name, view=view, run=view.run,
                  lasted=partial(lasted, now=now), pretty=_pretty,
                  max_subflows=MAX_GRAPH_SUBFLOWS)


def _missing(request: Request, run_id: str) -> HTMLResponse:
    page = render(request, "run.html", title="Run not found", view=None, run_id=run_id)
    page.status_code = 404
    return page


def _read_run(conn: Connection, run_id: uuid.UUID, late: timedelta, now: datetime,
              lines: int) -> RunView:
    """The run and all around it, with its first `lines` log lines."""
    run = runs.get_run(conn, run_id, late_after=late)
    own = task_runs.list_task_runs(conn, run_id)
    subflows = _subflows(conn, run_id, late)
    tree = _Subtrees(conn, late)
    root = graph.Flow.of(run, own, tree.flows(subflows))
    return RunView(run, runs.state_history(conn, run_id), own, subflows,
                   logs.read_logs(conn, run_id, limit=lines) if lines else [],
                   graph.layout(root, now), tree.cut)


def _subflows(conn: Connection, run_id: uuid.UUID, late: timedelta) -> list[FlowRun]:
    """The run's subflow runs, oldest first (a subflow run is scheduled when it starts)."""
    newest_first = runs.list_runs(conn, runs.RunFilter(parent_run_id=run_id, limit=runs.MAX_PAGE),
                                  late_after=late)
    return newest_first[::-1]


class _Subtrees:
    """Subflow runs for the graph with their task runs and their own subflow runs, depth first,
    at most MAX_GRAPH_SUBFLOWS of them, so a run that calls thousands of flows still renders
    quickly."""

    def __init__(self, conn: Connection, late: timedelta) -> None:
        self.conn = conn
        self.late = late
        self.left = MAX_GRAPH_SUBFLOWS
        self.cut = False

    def flows(self, subflows: list[FlowRun]) -> list[graph.Flow]:
        drawn: list[graph.Flow] = []
        for run in subflows:
            if not self.left:
                self.cut = True
                break
            self.left -= 1
            children = self.flows(_subflows(self.conn, run.id, self.late))
            drawn.append(graph.Flow.of(run, task_runs.list_task_runs(self.conn, run.id),
                                       children))
        return drawn


def _pretty(value: Any) -> str:
    """JSON for people: indented, keys as stored, non-ASCII as is."""
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)
