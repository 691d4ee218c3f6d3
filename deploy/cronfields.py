"""Cron expressions: validation with croniter, and a fast walk over the wall times they name.

croniter parses and validates, and its expanded fields drive `CronFields.walls_after`, which walks
days, then times of day, in plain loops: croniter's own `get_next` costs ~130 µs per wall time, too
slow for a scheduler that materialises every minute of thousands of deployments. The semantics are
croniter's (day-of-month and day-of-week are ORed when both are restricted; `L` is the last day of
the month); expressions using `#` or `W` are rare and left to croniter's own iteration.
"""

from __future__ import annotations

import calendar
import functools
import re
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import MAXYEAR, datetime, timedelta
from typing import Any

from croniter import CroniterBadDateError, croniter

CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_RANDOM_RE = re.compile(r"\b[HR]\b", re.IGNORECASE)
_PROBE_START = datetime(2020, 1, 1)  # any date: croniter looks 50 years ahead for a match
_MINUTE = timedelta(minutes=1)


def expand_cron(text: str) -> str:
    """The 5-field form of a cron expression (aliases expanded, whitespace collapsed)."""
    normal = " ".join(text.split())
    return _CRON_ALIASES.get(normal.lower(), normal)


def _field_problem(index: int, value: str) -> str | None:
    if _RANDOM_RE.search(value):
        return "uses H/R (hashed or random values are not deterministic)"
    probe = ["*"] * 5
    probe[index] = value
    try:
        croniter(" ".join(probe))
    except (ValueError, KeyError, TypeError) as exc:
        reason = str(exc).rsplit("is not acceptable", 1)[-1].strip(" ,")
        return reason or "is not valid"
    return None


@functools.lru_cache(maxsize=4096)
def check_cron(text: str) -> str:
    """`text` with whitespace collapsed; a ValueError naming the bad field if it is not valid."""
    normal = " ".join(text.split())
    fields = expand_cron(normal).split(" ")
    if len(fields) != 5:
        raise ValueError(
            f'invalid cron "{normal}": expected 5 fields (minute hour day-of-month month '
            f"day-of-week) or an alias such as @daily, got {len(fields)}"
        )
    for index, value in enumerate(fields):
        problem = _field_problem(index, value)
        if problem:
            field = CRON_FIELDS[index]
            raise ValueError(f'invalid cron "{normal}": {field} field "{value}" {problem}')
    try:
        croniter(" ".join(fields), _PROBE_START).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f'invalid cron "{normal}": it never fires') from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f'invalid cron "{normal}": {exc}') from None
    return normal


@dataclass(frozen=True)
class CronFields:
    """The expanded fields of an expression; None for a day field means `*`."""

    times: tuple[timedelta, ...]  # the matching times of day, increasing
    months: tuple[int, ...]  # increasing
    days: frozenset[int] | None
    last_day: bool  # `L` in day-of-month
    weekdays: frozenset[int] | None  # 0 is Sunday

    def walls_after(self, start: datetime) -> Iterator[datetime]:
        """The matching naive wall times strictly after `start`, in order, up to year 9999."""
        try:
            first = start.replace(second=0, microsecond=0) + _MINUTE
        except OverflowError:  # `start` is in the last minute of year 9999, as croniter finds
            return
        first_day = datetime(first.year, first.month, first.day)
        skip = bisect_left(self.times, first - first_day)
        for day in self._days_from(first_day):
            for time in self.times[skip:] if day == first_day else self.times:
                yield day + time

    def _days_from(self, first: datetime) -> Iterator[datetime]:
        """The matching days from `first` on, as naive midnights."""
        for year in range(first.year, MAXYEAR + 1):
            for month in self.months:
                if (year, month) >= (first.year, first.month):
                    low = first.day if (year, month) == (first.year, first.month) else 1
                    days = self._month_days(year, month)
                    yield from (datetime(year, month, day) for day in days if day >= low)

    def _month_days(self, year: int, month: int) -> Iterable[int]:
        length = calendar.monthrange(year, month)[1]
        if self.days is None and self.weekdays is None:
            return range(1, length + 1)
        first = calendar.weekday(year, month, 1) + 1  # Monday is 0 for calendar, 1 for cron
        return [d for d in range(1, length + 1) if self._matches(d, length, (first + d - 1) % 7)]

    def _matches(self, day: int, length: int, weekday: int) -> bool:
        """croniter's rule: the day fields are ANDed, or ORed when both are restricted."""
        by_date = self.days is None or day in self.days or (self.last_day and day == length)
        by_weekday = self.weekdays is None or weekday in self.weekdays
        if self.days is not None and self.weekdays is not None:
            return by_date or by_weekday
        return by_date and by_weekday


def _numbers(field: list[Any]) -> list[int]:
    return [v for v in field if v != "l"]


def _values(field: list[Any], every: range) -> list[int]:
    return list(every) if field == ["*"] else _numbers(field)


@functools.lru_cache(maxsize=1024)
def cron_fields(expression: str) -> CronFields | None:
    """The fields of a valid 5-field expression; None if it uses `#` or `W` (croniter walks it)."""
    parsed = croniter(expression)
    if parsed.nth_weekday_of_month or parsed.nearest_weekday:
        return None
    minutes, hours, days, months, weekdays = parsed.expanded
    times = [
        timedelta(hours=h, minutes=m)
        for h in _values(hours, range(24))
        for m in _values(minutes, range(60))
    ]
    return CronFields(
        times=tuple(sorted(times)),
        months=tuple(sorted(_values(months, range(1, 13)))),
        days=None if days == ["*"] else frozenset(_numbers(days)),
        last_day="l" in days,
        weekdays=None if weekdays == ["*"] else frozenset(_numbers(weekdays)),
    )


def cron_walls(expression: str, start: datetime) -> Iterator[datetime]:
    """The naive wall times matching a valid 5-field `expression`, strictly after `start`."""
    fields = cron_fields(expression)
    return _croniter_walls(expression, start) if fields is None else fields.walls_after(start)


def _croniter_walls(expression: str, start: datetime) -> Iterator[datetime]:
    walls = croniter(expression, start)
    while True:
        try:
            yield walls.get_next(datetime)
        except (CroniterBadDateError, OverflowError, ValueError):
            return
