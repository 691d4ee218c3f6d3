"""The deployments pages (DESIGN.md §8): every deployment with its schedules in words, its next
and last run; and one deployment with its settings, the next instants of each schedule, its
recent runs, Pause/Resume, and a "Run now" form built from the flow's parameter schema.

Read as the API reads: `deployments.list_deployments` and `get`, the next instants from
`instants.upcoming` (what `GET /api/deployments/{flow}/{name}/upcoming` answers), and the runs
from `deployment_runs`, which walks the `(deployment_id, scheduled_time)` index so a page costs
the same with 100 runs or millions. The next run of the list is the earliest waiting run the
store holds (made ahead by the scheduler, or a manual run asked for later): the run that will
happen, not an instant a paused or ended schedule would have had.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Connection

from ostinato.deploy.errors import NotFound
from ostinato.deploy.schedule_words import describe
from ostinato.deploy.schemas import Deployment, FlowRun
from ostinato.queues import deployment_runs, deployments
from ostinato.scheduler import instants
from ostinato.scheduler.api.dependencies import DatabaseDep, SettingsDep, late_after
from ostinato.scheduler.ui import pages
from ostinato.scheduler.ui.run_form import form_fields

router = APIRouter(include_in_schema=False)
PAGE = 200  # deployments per page of the list
RECENT = 20  # runs on a deployment's page
NEXT_INSTANTS = 10  # per schedule


@dataclass(frozen=True)
class Row:
    """A deployment as the list shows it."""

    deployment: Deployment
    schedules: list[str]
    next_run: datetime | None
    last_run: FlowRun | None


@dataclass(frozen=True)
class ScheduleView:
    """A schedule in words with its next instants (none when inactive or ended)."""

    schedule: instants.AnySchedule
    words: str
    upcoming: list[instants.SlotInstant]


def _rows(conn: Connection, found: list[Deployment], now: datetime, late_before: datetime
          ) -> list[Row]:
    ids = [d.id for d in found]
    following = deployment_runs.next_run_times(conn, ids, now)
    last = deployment_runs.last_runs(conn, ids, now, late_before)
    return [Row(d, [describe(s) for s in d.schedules], following.get(d.id), last.get(d.id))
            for d in found]


@router.get("/deployments", response_class=HTMLResponse)
def deployments_page(request: Request, database: DatabaseDep, settings: SettingsDep,
                     offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0) -> HTMLResponse:
    """A page of deployments by name; one more is read to know whether a next page exists."""
    now = datetime.now(UTC)
    with database.read() as conn:
        found = deployments.list_deployments(conn, limit=PAGE + 1, offset=offset)
        rows = _rows(conn, found[:PAGE], now, now - late_after(settings))
    return pages.render(request, "deployments.html", title="Deployments", rows=rows,
                        offset=offset, page=PAGE, more=len(found) > PAGE)


def schedule_views(deployment: Deployment, now: datetime) -> list[ScheduleView]:
    """Each schedule with its next instants, by the arithmetic behind the API's `upcoming`."""
    return [ScheduleView(s, describe(s), instants.upcoming([s], now, NEXT_INSTANTS))
            for s in deployment.schedules]


def _detail(conn: Connection, full_name: str, now: datetime, late_before: datetime
            ) -> dict[str, Any]:
    deployment = deployments.get(conn, full_name)
    return {"deployment": deployment,
            "runs": deployment_runs.recent_runs(conn, deployment.id, now, late_before, RECENT)}


@router.get("/deployments/{flow}/{name}", response_class=HTMLResponse)
def deployment_page(flow: str, name: str, request: Request, database: DatabaseDep,
                    settings: SettingsDep) -> HTMLResponse:
    """One deployment; an unknown name is a 404 page saying so."""
    now = datetime.now(UTC)
    try:
        with database.read() as conn:
            detail = _detail(conn, f"{flow}/{name}", now, now - late_after(settings))
    except NotFound as exc:
        page = pages.render(request, "deployment.html", title="Deployment not found",
                            missing=exc.message)
        page.status_code = 404
        return page
    deployment: Deployment = detail["deployment"]
    return pages.render(
        request, "deployment.html", title=deployment.name, missing=None, now=now, **detail,
        schedules=schedule_views(deployment, now),
        fields=form_fields(deployment.parameter_schema, deployment.parameters))
