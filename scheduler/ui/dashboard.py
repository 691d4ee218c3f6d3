"""The dashboard at `/` (DESIGN.md §8): runs by state over the last 24 hours, the late runs,
the next runs and the agents online.

The chart is SVG drawn on the server from one grouped, indexed query
(`stats.runs_by_state_and_hour`): no chart library, and it refreshes like any other part. Its
geometry is computed here, in plain numbers the template only prints, so it can be tested
without a browser.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import Connection

from ostinato.deploy.states import StateType
from ostinato.queues import agents, stats
from ostinato.scheduler.api.dependencies import DatabaseDep, SettingsDep, late_after
from ostinato.scheduler.ui import pages
from ostinato.scheduler.ui.fleet import online_window

router = APIRouter(include_in_schema=False)
HOURS = 24
LATE_SHOWN = 5
NEXT_SHOWN = 10
HOUR = timedelta(hours=1)


@dataclass(frozen=True)
class Frame:
    """The chart's drawing area, in SVG user units."""

    width: float = 960
    height: float = 240
    left: float = 44  # room for the count labels
    right: float = 8
    top: float = 10
    bottom: float = 24  # room for the hour labels

    @property
    def base(self) -> float:
        """The y of the x axis, where bars stand."""
        return self.height - self.bottom

    @property
    def slot(self) -> float:
        """The width each hour's bar has, gap included."""
        return (self.width - self.left - self.right) / HOURS


FRAME = Frame()


@dataclass(frozen=True)
class Segment:
    state: StateType
    count: int
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    hour: datetime
    x: float
    width: float
    segments: list[Segment]


@dataclass(frozen=True)
class Chart:
    frame: Frame
    bars: list[Bar]
    ticks: list[tuple[int, float]]  # (count, y) of each horizontal grid line
    totals: dict[StateType, int]


def chart_hours(now: datetime) -> list[datetime]:
    """The 24 clock hours (UTC) that end with the current one, oldest first."""
    current = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return [current - HOUR * back for back in range(HOURS - 1, -1, -1)]


def scale(peak: int) -> tuple[int, int]:
    """A round top for the y axis and its step (1, 2 or 5 times a power of ten), at most
    four steps, so the grid lines carry readable counts."""
    rough = max(peak, 1) / 4
    power = 10 ** math.floor(math.log10(rough)) if rough >= 1 else 1
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= rough)
    return step * math.ceil(max(peak, 1) / step), step


def build_chart(counts: dict[tuple[datetime, StateType], int], hours: list[datetime],
                frame: Frame = FRAME) -> Chart:
    """Stacked bars, one per hour, states stacked bottom-up in their order of `StateType`."""
    by_hour = [[(state, counts.get((hour, state), 0)) for state in StateType] for hour in hours]
    top, step = scale(max(sum(count for _, count in bar) for bar in by_hour))
    per_unit = (frame.base - frame.top) / top
    bars = [_bar(hour, index, cells, per_unit, frame)
            for index, (hour, cells) in enumerate(zip(hours, by_hour, strict=True))]
    ticks = [(value, frame.base - value * per_unit) for value in range(0, top + 1, step)]
    totals = {state: sum(count for (_, s), count in counts.items() if s is state)
              for state in StateType}
    return Chart(frame, bars, ticks, totals)


def _bar(hour: datetime, index: int, cells: list[tuple[StateType, int]], per_unit: float,
         frame: Frame) -> Bar:
    segments, y = [], frame.base
    for state, count in cells:
        if count:
            height = count * per_unit
            y -= height
            segments.append(Segment(state, count, y, height))
    width = frame.slot * 0.7
    return Bar(hour, frame.left + index * frame.slot + (frame.slot - width) / 2, width, segments)


def _read(conn: Connection, now: datetime, late_before: datetime, online_for: timedelta
          ) -> dict[str, Any]:
    hours = chart_hours(now)
    online = [a for a in agents.list_agents(conn, now, online_for) if a.status == "online"]
    return {
        "chart": build_chart(stats.runs_by_state_and_hour(conn, hours[0], now), hours),
        "late_count": stats.late_runs(conn, late_before),
        "late": stats.earliest_waiting(conn, late_before, due_before=late_before,
                                       limit=LATE_SHOWN),
        "upcoming": stats.earliest_waiting(conn, late_before, due_from=late_before,
                                           limit=NEXT_SHOWN),
        "agents": online,
    }


@router.get("/", response_class=HTMLResponse)
def dashboard(request: Request, database: DatabaseDep, settings: SettingsDep) -> HTMLResponse:
    now = datetime.now(UTC)
    with database.read() as conn:
        view = _read(conn, now, now - late_after(settings), online_window(settings))
    return pages.render(request, "dashboard.html", title="Dashboard", **view)
