"""The work queues and agents pages (DESIGN.md §5, §6, §8): what each queue lets through, how
much waits in it, who polls it; and every agent with the runs it holds.

Everything is read with the functions the API and `/metrics` use (queue depths, the preview,
the filter semantics, the agents list), so the pages show what the claim would do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Connection

from ostinato.deploy.errors import NotFound
from ostinato.deploy.protocol import Agent
from ostinato.deploy.schemas import Deployment, FlowRun, WorkQueue, WorkQueueFilter
from ostinato.deploy.settings import Settings
from ostinato.deploy.states import CLAIMED_STATES
from ostinato.queues import agents, deployments, filters, limits, runs, stats, work_queues
from ostinato.scheduler.api.dependencies import DatabaseDep, SettingsDep, late_after
from ostinato.scheduler.ui import pages

router = APIRouter(include_in_schema=False)
PREVIEW_HOURS = 24
PREVIEW_SHOWN = 20
NAMES_SHOWN = 5  # a filter naming more lists these and says how many more


def online_window(settings: Settings) -> timedelta:
    """An agent is online while its last heartbeat is younger than a lease (as the API says)."""
    return timedelta(seconds=settings.lease_seconds)


def describe_filter(queue_filter: WorkQueueFilter) -> str:
    """The filter in words, e.g. `runs tagged etl, not tagged slow, of deployment a/b`: read
    faster than its JSON, and says that an empty filter takes every run."""
    f = queue_filter
    clauses = [
        f"tagged {_listed(f.tags, 'and')}" if f.tags else "",
        f"not tagged {_listed(f.exclude_tags, 'or')}" if f.exclude_tags else "",
        _of("deployment", f.deployments),
        _of("flow", f.flows),
    ]
    phrase = ", ".join(clause for clause in clauses if clause)
    return f"runs {phrase}" if phrase else "all runs"


def _of(noun: str, names: Sequence[str]) -> str:
    """`of flow etl`, `of flows etl or load`: any one of the names will do."""
    if not names:
        return ""
    return f"of {noun}{'s' if len(names) > 1 else ''} {_listed(names, 'or')}"


def _listed(words: Sequence[str], conjunction: str) -> str:
    """`a`, `a and b`, `a, b and c`; past `NAMES_SHOWN`, `a, b, … and 7 more`."""
    if len(words) > NAMES_SHOWN:
        return f"{', '.join(words[:NAMES_SHOWN])} {conjunction} {len(words) - NAMES_SHOWN} more"
    if len(words) == 1:
        return words[0]
    return f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


@dataclass(frozen=True)
class QueueView:
    """A queue as the pages show it: its words, its depth, the slots its runs hold, and the
    online agents that poll it."""

    queue: WorkQueue
    words: str
    depth: int
    held: int
    agents: list[Agent]


def _queue_views(conn: Connection, queues: list[WorkQueue], now: datetime,
                 online: list[Agent]) -> list[QueueView]:
    depths = stats.queue_depths(conn, now)
    held = limits.active_by_queue(conn, [queue.name for queue in queues])
    return [QueueView(queue, describe_filter(queue.filter), depths.get(queue.name, 0),
                      held[queue.name], [a for a in online if queue.name in a.queues])
            for queue in queues]


def _online(conn: Connection, now: datetime, settings: Settings) -> list[Agent]:
    return [agent for agent in agents.list_agents(conn, now, online_window(settings))
            if agent.status == "online"]


def matching_deployments(conn: Connection, queue_filter: WorkQueueFilter) -> list[Deployment]:
    """The deployments (the first `runs.MAX_PAGE` by name) whose runs the filter lets through,
    judged by the deployment's tags: a manual run given extra tags may differ."""
    return [d for d in deployments.list_deployments(conn, limit=runs.MAX_PAGE)
            if filters.matches(queue_filter, tags=d.tags, deployment=d.name, flow=d.flow)]


@router.get("/work-queues", response_class=HTMLResponse)
def queues_page(request: Request, database: DatabaseDep, settings: SettingsDep) -> HTMLResponse:
    now = datetime.now(UTC)
    with database.read() as conn:
        views = _queue_views(conn, work_queues.list_queues(conn), now,
                             _online(conn, now, settings))
    return pages.render(request, "work_queues.html", title="Work queues", queues=views)


def _queue_detail(conn: Connection, name: str, now: datetime, settings: Settings
                  ) -> dict[str, Any]:
    queue = work_queues.get(conn, name)
    upcoming = work_queues.preview(conn, name, now + timedelta(hours=PREVIEW_HOURS),
                                   PREVIEW_SHOWN, late_after(settings))
    return {"view": _queue_views(conn, [queue], now, _online(conn, now, settings))[0],
            "matching": matching_deployments(conn, queue.filter), "upcoming": upcoming,
            "preview_hours": PREVIEW_HOURS}


@router.get("/work-queues/{name}", response_class=HTMLResponse)
def queue_page(name: str, request: Request, database: DatabaseDep, settings: SettingsDep
               ) -> HTMLResponse:
    """One queue, with Pause or Resume; an unknown name is a 404 page saying so."""
    try:
        with database.read() as conn:
            detail = _queue_detail(conn, name, datetime.now(UTC), settings)
    except NotFound as exc:
        page = pages.render(request, "work_queue.html", title="Work queue not found",
                            missing=exc.message)
        page.status_code = 404
        return page
    return pages.render(request, "work_queue.html", title=f"Work queue {name}", missing=None,
                        **detail)


def held_runs(conn: Connection, settings: Settings) -> dict[str, list[FlowRun]]:
    """The claimed runs (PENDING, RUNNING, CANCELLING) by agent name, from the `state` index:
    as many as agents hold, not more than a page."""
    query = runs.RunFilter(states=sorted(CLAIMED_STATES), limit=runs.MAX_PAGE)
    found: dict[str, list[FlowRun]] = {}
    for run in runs.list_runs(conn, query, late_after=late_after(settings)):
        if run.agent:
            found.setdefault(run.agent, []).append(run)
    return found


@router.get("/agents", response_class=HTMLResponse)
def agents_page(request: Request, database: DatabaseDep, settings: SettingsDep) -> HTMLResponse:
    with database.read() as conn:
        fleet = agents.list_agents(conn, datetime.now(UTC), online_window(settings))
        holding = held_runs(conn, settings)
    return pages.render(request, "agents.html", title="Agents", agents=fleet, holding=holding)
