"""What a deployment's schedules produce over a window, merged across schedules.

`upcoming` answers `deployment upcoming` (the next N instants); `between` answers `deployment
backfill` (every instant of a past window). Both are pure: the time is an argument.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from ostinato.deploy.errors import InvalidInput
from ostinato.deploy.schedules import Cron, Instant, Interval, RRule

AnySchedule = Cron | Interval | RRule
MAX_BACKFILL = 10_000
_JUST_BEFORE = timedelta(microseconds=1)  # next_instants is strictly after; windows include start


@dataclass(frozen=True)
class SlotInstant:
    """An instant of one schedule: what a run's identity and display need."""

    schedule: AnySchedule
    instant: Instant

    @property
    def slug(self) -> str:
        return self.schedule.slug

    def to_json(self) -> dict[str, str | None]:
        return {"scheduled_time": self.instant.time.isoformat().replace("+00:00", "Z"),
                "local_time": self.instant.local_time.isoformat(),
                "schedule": self.slug, "dst": self.instant.dst}


def upcoming(schedules: Sequence[AnySchedule], after: datetime, count: int) -> list[SlotInstant]:
    """The next `count` instants after `after` over the active schedules, earliest first."""
    streams = (_each(s, s.next_instants(after, count=count)) for s in _active(schedules))
    merged = heapq.merge(*streams, key=lambda slot: slot.instant.time)
    return list(merged)[:count]


def between(schedules: Sequence[AnySchedule], start: datetime, end: datetime
            ) -> list[SlotInstant]:
    """Every instant in [start, end] over the active schedules; refuses huge windows."""
    if end < start:
        raise InvalidInput("the backfill window ends before it starts")
    slots = [slot for s in _active(schedules)
             for slot in _each(s, _window(s, start, end))]
    return sorted(slots, key=lambda slot: (slot.instant.time, slot.slug))


def _window(schedule: AnySchedule, start: datetime, end: datetime) -> list[Instant]:
    found = schedule.next_instants(start - _JUST_BEFORE, count=MAX_BACKFILL + 1, until=end)
    if len(found) > MAX_BACKFILL:
        raise InvalidInput(f"the window holds more than {MAX_BACKFILL} runs of schedule "
                           f"{schedule.slug}; backfill a shorter window at a time")
    return found


def _each(schedule: AnySchedule, instants: list[Instant]) -> Iterator[SlotInstant]:
    return (SlotInstant(schedule, instant) for instant in instants)


def _active(schedules: Sequence[AnySchedule]) -> list[AnySchedule]:
    return [s for s in schedules if s.active]
