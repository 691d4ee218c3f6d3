"""Schedules in words, e.g. `at 02:00 every day, Europe/Paris`, for the UI and the CLI.

Pure functions of a schedule, no clock: a reader should not have to decode cron or RFC 5545 to
know when a deployment runs. The words say exactly what the arithmetic of `schedules` does
(intervals and rrules included, whose phase comes from their anchor or DTSTART); whatever they
cannot say briefly and exactly is shown as written, `cron 0 0 15W * *` or `rrule …`, because a
wrong sentence is worse than the raw rule.

Conventions: times are 24-hour wall-clock times in the schedule's timezone, which is appended
(`, Europe/Paris`) unless it is UTC, the default; an inactive schedule ends in `(inactive)`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from datetime import datetime, time, timedelta
from typing import Any

from croniter import croniter
from dateutil.rrule import rrule, rrulestr

from ostinato.deploy.cronfields import expand_cron
from ostinato.deploy.schedules import DEFAULT_ANCHOR, Cron, Interval, RRule

__all__ = ["describe", "describe_cron", "describe_every", "describe_rrule"]

WEEKDAYS = ("Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday")
MONTHS = ("", "January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")
_MONDAY_FIRST = WEEKDAYS[1:] + WEEKDAYS[:1]
MAX_TIMES = 4  # more wall times than this are said as a repetition, or not at all
_UNITS = ((timedelta(weeks=1), "week"), (timedelta(days=1), "day"), (timedelta(hours=1), "hour"),
          (timedelta(minutes=1), "minute"), (timedelta(seconds=1), "second"))


def describe(schedule: Cron | Interval | RRule) -> str:
    """The schedule in words, its timezone appended unless UTC, `(inactive)` when it is off."""
    if isinstance(schedule, Cron):
        text = describe_cron(schedule.cron)
    elif isinstance(schedule, Interval):
        text = _interval_words(schedule)
    else:
        text = describe_rrule(schedule.rrule)
    if schedule.timezone != "UTC":
        text = f"{text}, {schedule.timezone}"
    return text if schedule.active else f"{text} (inactive)"


# --- shared phrases -----------------------------------------------------------------------------


def _listing(words: Sequence[str]) -> str:
    """`a`, `a and b`, `a, b and c`."""
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def _clock(hour: int, minute: int) -> str:
    return f"{hour:02d}:{minute:02d}"


def _clocks(hours: Sequence[int], minutes: Sequence[int]) -> str | None:
    """`at 09:00 and 17:30`, or None when there are too many times to list."""
    if len(hours) * len(minutes) > MAX_TIMES:
        return None
    return "at " + _listing([_clock(h, m) for h in hours for m in minutes])


def _is_run(values: Sequence[int]) -> bool:
    """Three or more consecutive values: said as a span (`Monday to Friday`)."""
    return len(values) >= 3 and list(values) == list(range(values[0], values[0] + len(values)))


def _span(values: Sequence[int], names: Sequence[str]) -> str:
    """`January to March`, or the names listed."""
    if _is_run(values):
        return f"{names[values[0]]} to {names[values[-1]]}"
    return _listing([names[v] for v in values])


def _months(months: Sequence[int]) -> str:
    return _span(sorted(months), MONTHS)


def _weekdays(days: Sequence[int]) -> str:
    """`Monday to Friday`, `on Monday`, `on Saturday and Sunday` (0 is Sunday, said last)."""
    monday_first = sorted((d - 1) % 7 for d in days)
    said = _span(monday_first, _MONDAY_FIRST)
    return said if _is_run(monday_first) else f"on {said}"


def _monthdays(days: Sequence[int]) -> str | None:
    """`day 1`, `days 1 and 15`, `days 1 to 7`, `the last day` (-1); None when mixed."""
    if list(days) == [-1]:
        return "the last day"
    if any(day < 1 for day in days):
        return None
    ordered = sorted(days)
    if len(ordered) == 1:
        return f"day {ordered[0]}"
    text = f"{ordered[0]} to {ordered[-1]}" if _is_run(ordered) else _listing(
        [str(day) for day in ordered])
    return f"days {text}"


def _progression(values: Sequence[int], period: int) -> int | None:
    """The step of `0, s, 2s, …` covering a whole `period` evenly; None for any other set."""
    if len(values) < 2 or values[0] != 0 or period % len(values):
        return None
    step = period // len(values)
    return step if list(values) == list(range(0, period, step)) else None


# --- cron ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)  # a page of deployments says the same few rules again
def describe_cron(text: str) -> str:
    """A cron expression in words: `at 09:30 Monday to Friday`, `every 15 minutes`."""
    return _cron_words(expand_cron(text)) or f"cron {' '.join(text.split())}"


def _numbers(field: list[Any], every: range) -> list[int] | None:
    if field == ["*"]:
        return list(every)
    return None if any(not isinstance(v, int) for v in field) else sorted(field)


def _cron_words(expression: str) -> str | None:
    try:
        parsed = croniter(expression)
    except (ValueError, KeyError, TypeError):
        return None
    if parsed.nth_weekday_of_month or parsed.nearest_weekday:
        return None
    minutes, hours, days, months, weekdays = parsed.expanded
    minute_list, hour_list = _numbers(minutes, range(60)), _numbers(hours, range(24))
    month_list = _numbers(months, range(1, 13))
    if minute_list is None or hour_list is None or month_list is None:
        return None
    clock = _cron_time(minute_list, hour_list)
    calendar = _cron_days(days, weekdays, month_list)
    if clock is None or calendar is None:
        return None
    repeats = not clock.startswith("at ")
    return clock if repeats and calendar == "every day" else f"{clock} {calendar}"


def _repeat(minutes: list[int]) -> str | None:
    """How often within an hour: `every minute`, `every 15 minutes`, `every hour` (one minute)."""
    if len(minutes) == 60:
        return "every minute"
    if len(minutes) == 1:
        return "every hour"
    step = _progression(minutes, 60)
    return f"every {step} minutes" if step else None


def _cron_time(minutes: list[int], hours: list[int]) -> str | None:
    """The times of day: listed when few, else a repetition, over all hours or a span of them."""
    listed = _clocks(hours, minutes)
    repeat = _repeat(minutes)
    if listed or repeat is None:
        return listed
    at_minute = f" at minute {minutes[0]}" if len(minutes) == 1 and minutes[0] else ""
    if len(hours) == 24:
        return repeat + at_minute
    hour_step = _progression(hours, 24)
    if hour_step and len(minutes) == 1:
        return f"every {hour_step} hours{at_minute}"
    if _is_run(hours):
        first, last = _clock(hours[0], minutes[0]), _clock(hours[-1], minutes[-1])
        return f"{repeat} from {first} to {last}"
    return None


def _cron_days(days: list[Any], weekdays: list[Any], months: list[int]) -> str | None:
    """Which days: `every day`, `Monday to Friday`, `on day 1 of every month`, `… in June`.

    Both day fields restricted means either matches (cron's OR): not said, the raw rule is.
    """
    in_months = "" if len(months) == 12 else f" in {_months(months)}"
    if days == ["*"] and weekdays == ["*"]:
        return f"every day{in_months}"
    if days == ["*"]:
        numbers = _numbers(weekdays, range(7))
        return None if numbers is None else _weekdays(numbers) + in_months
    if weekdays != ["*"]:
        return None
    dates = _monthdays([-1 if day == "l" else day for day in days])
    if dates is None:
        return None
    return f"on {dates} of {'every month' if len(months) == 12 else _months(months)}"


# --- intervals ----------------------------------------------------------------------------------


def describe_every(every: timedelta) -> str:
    """`every 2 hours`, `every day`, `every 90 minutes`: in the largest unit that divides it."""
    for size, unit in _UNITS:
        if every % size == timedelta(0):
            count = every // size
            return f"every {unit}" if count == 1 else f"every {count} {unit}s"
    return f"every {every.total_seconds():g} seconds"


def _interval_words(schedule: Interval) -> str:
    """The phase comes from the anchor: a day's or a week's interval says its wall time (and
    weekday) unless it is the default's; any other says the anchor when one was given."""
    text = describe_every(schedule.every)
    anchor, day, week = schedule.anchor_wall, timedelta(days=1), timedelta(weeks=1)
    if schedule.every % week == timedelta(0):
        text += f" on {WEEKDAYS[anchor.isoweekday() % 7]}"
    elif schedule.every != day:
        return text + (f", from {anchor:%Y-%m-%d %H:%M}" if schedule.anchor else "")
    return text if anchor.time() == time(0) else f"{text} at {_clock(anchor.hour, anchor.minute)}"


# --- rrule --------------------------------------------------------------------------------------

_FREQUENCIES = {"YEARLY": "year", "MONTHLY": "month", "WEEKLY": "week", "DAILY": "day",
                "HOURLY": "hour", "MINUTELY": "minute", "SECONDLY": "second"}
_SAID = {"FREQ", "INTERVAL", "COUNT", "UNTIL", "BYDAY", "BYMONTHDAY", "BYMONTH", "BYHOUR",
         "BYMINUTE", "WKST"}
_DAY_CODES = {"SU": 0, "MO": 1, "TU": 2, "WE": 3, "TH": 4, "FR": 5, "SA": 6}
_ORDINALS = {1: "first", 2: "second", 3: "third", 4: "fourth", 5: "fifth", -1: "last"}
_BYDAY_RE = re.compile(r"^([+-]?\d+)?(SU|MO|TU|WE|TH|FR|SA)$")


@functools.lru_cache(maxsize=4096)
def describe_rrule(text: str) -> str:
    """An RFC 5545 rule in words: `every week on Monday and Thursday at 09:00`."""
    return _rrule_words(text) or f"rrule {' '.join(text.split())}"


def _rrule_parts(text: str) -> tuple[dict[str, str], datetime] | None:
    """The rule's fields and DTSTART, from dateutil's canonical text of it; None for a set of
    rules (RDATE, EXDATE, several RRULEs) or parts the words do not cover."""
    try:
        rule = rrulestr(text, dtstart=DEFAULT_ANCHOR, ignoretz=True)
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    if not isinstance(rule, rrule):
        return None
    start_line, rule_line = str(rule).splitlines()
    start = datetime.strptime(start_line.removeprefix("DTSTART:"), "%Y%m%dT%H%M%S")
    fields = dict(part.split("=", 1) for part in rule_line.removeprefix("RRULE:").split(";"))
    return (fields, start) if set(fields) <= _SAID and start.second == 0 else None


def _rrule_words(text: str) -> str | None:
    parts = _rrule_parts(text)
    if parts is None:
        return None
    fields, start = parts
    interval = int(fields.get("INTERVAL", "1"))
    unit = _FREQUENCIES[fields["FREQ"]]
    pieces = [f"every {unit}" if interval == 1 else f"every {interval} {unit}s",
              _rrule_calendar(fields, start), _rrule_time(fields, start)]
    if any(piece is None for piece in pieces):
        return None
    return " ".join(p for p in pieces if p) + _rrule_bounds(fields)


def _ints(fields: dict[str, str], key: str) -> list[int]:
    return [int(value) for value in fields[key].split(",")] if key in fields else []


def _calendar_defaults(fields: dict[str, str], start: datetime) -> dict[str, str]:
    """dateutil's defaults from DTSTART: a weekly rule's weekday, a monthly rule's day, a
    yearly rule's month and day, when the rule does not name them."""
    freq, named = fields["FREQ"], {"BYDAY", "BYMONTHDAY"} & set(fields)
    if freq == "WEEKLY" and not named:
        return {**fields, "BYDAY": list(_DAY_CODES)[start.isoweekday() % 7]}
    if freq == "MONTHLY" and not named:
        return {**fields, "BYMONTHDAY": str(start.day)}
    if freq == "YEARLY" and not named:
        return {"BYMONTH": str(start.month), **fields, "BYMONTHDAY": str(start.day)}
    return fields


def _rrule_calendar(fields: dict[str, str], start: datetime) -> str | None:
    """`on Monday`, `on the first Monday`, `on day 1 of January`, `in June`; "" for none.

    BYDAY with BYMONTHDAY means days that are both (Friday the 13th): not said.
    """
    fields = _calendar_defaults(fields, start)
    months = _ints(fields, "BYMONTH")
    if "BYDAY" in fields and "BYMONTHDAY" in fields:
        return None
    if "BYMONTHDAY" in fields:
        dates = _monthdays(_ints(fields, "BYMONTHDAY"))
        if dates is None:
            return None
        return f"on {dates} of {_months(months)}" if months else f"on {dates}"
    days = _rrule_weekdays(fields["BYDAY"]) if "BYDAY" in fields else ""
    if days is None or not months:
        return days
    return f"{days} in {_months(months)}".strip()


def _rrule_weekdays(value: str) -> str | None:
    """`on Monday and Friday`, `on Monday to Friday`, `on the first Monday and the last Friday`."""
    found = [_BYDAY_RE.match(item) for item in value.split(",")]
    if any(match is None for match in found):
        return None
    days = [(m.group(1), _DAY_CODES[m.group(2)]) for m in found if m]
    if all(ordinal is None for ordinal, _ in days):
        return "on " + _span(sorted((day - 1) % 7 for _, day in days), _MONDAY_FIRST)
    said = [_ORDINALS.get(int(ordinal or 0)) for ordinal, _ in days]
    if any(word is None for word in said):
        return None
    return "on " + _listing([f"the {word} {WEEKDAYS[day]}" for word, (_, day) in zip(
        said, days, strict=True)])


def _rrule_time(fields: dict[str, str], start: datetime) -> str | None:
    """`at 09:00`; for hourly rules `at minute 30`; nothing for finer ones."""
    hours, minutes = _ints(fields, "BYHOUR"), _ints(fields, "BYMINUTE")
    unit = _FREQUENCIES[fields["FREQ"]]
    if unit in ("minute", "second"):
        return None if hours or minutes else ""
    if unit == "hour":
        minutes = sorted(minutes or [start.minute])
        if hours:
            return None
        word = "minute" if len(minutes) == 1 else "minutes"
        return "" if minutes == [0] else f"at {word} {_listing([str(m) for m in minutes])}"
    return _clocks(sorted(hours or [start.hour]), sorted(minutes or [start.minute]))


def _rrule_bounds(fields: dict[str, str]) -> str:
    """`, 5 times`, `, until 2030-01-01 00:00`."""
    text = f", {fields['COUNT']} times" if "COUNT" in fields else ""
    if "UNTIL" in fields:
        until = datetime.strptime(fields["UNTIL"][:15], "%Y%m%dT%H%M%S")
        text += f", until {until:%Y-%m-%d %H:%M}"
    return text
