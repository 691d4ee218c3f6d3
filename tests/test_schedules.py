"""Schedules: validation, JSON form, and the DST arithmetic of cron, interval and rrule.

Expected instants are worked out by hand from the 2024 transitions (UTC instant, local change):
America/New_York     spring 03-10 07:00Z 02:00 EST -> 03:00 EDT
                     fall   11-03 06:00Z 02:00 EDT -> 01:00 EST
Europe/London        spring 03-31 01:00Z 01:00 GMT -> 02:00 BST
                     fall   10-27 01:00Z 02:00 BST -> 01:00 GMT
Australia/Lord_Howe  spring 10-05 15:30Z 02:00 +10:30 -> 02:30 +11
                     fall   04-06 15:00Z 02:00 +11 -> 01:30 +10:30 (a 30-minute shift)
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from ostinato.deploy.cronfields import cron_fields
from ostinato.deploy.errors import InvalidInput
from ostinato.deploy.schedules import (
    Cron,
    Instant,
    Interval,
    RRule,
    Schedule,
    ScheduleBase,
    parse_schedule,
)
from ostinato.deploy.walltime import (
    MAX_FOLD,
    DstFlag,
    Resolver,
    occurrences,
    resolve_fixed,
    resolve_real,
    to_utc,
    wall,
)

NY, LONDON, LORD_HOWE = "America/New_York", "Europe/London", "Australia/Lord_Howe"
ADAPTER: TypeAdapter[Cron | Interval | RRule] = TypeAdapter(Schedule)


def utc(text: str) -> datetime:
    """'2024-03-10 07:00' (or with seconds) as an aware UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def times(instants: list[Instant]) -> list[tuple[datetime, str | None]]:
    return [(i.time, i.dst) for i in instants]


def expect(*pairs: tuple[str, str | None]) -> list[tuple[datetime, str | None]]:
    return [(utc(when), dst) for when, dst in pairs]


# --- cron: entries naming wall-clock times --------------------------------------------------------

FIXED_TIME_CASES = [
    # New York, gap 02:00-03:00 on 03-10
    ("30 2 * * *", NY, "shift", "first", "2024-03-10 00:00",
     [("2024-03-10 07:00", "shifted"), ("2024-03-11 06:30", None)]),
    ("30 2 * * *", NY, "skip", "first", "2024-03-10 00:00",
     [("2024-03-11 06:30", None), ("2024-03-12 06:30", None)]),
    ("0,30 2 * * *", NY, "shift", "first", "2024-03-10 00:00",
     [("2024-03-10 07:00", "shifted"), ("2024-03-11 06:00", None)]),
    # New York, fold 01:00-02:00 on 11-03
    ("30 1 * * *", NY, "shift", "first", "2024-11-03 00:00",
     [("2024-11-03 05:30", "fold"), ("2024-11-04 06:30", None)]),
    ("30 1 * * *", NY, "shift", "second", "2024-11-03 00:00",
     [("2024-11-03 06:30", "fold"), ("2024-11-04 06:30", None)]),
    ("30 1 * * *", NY, "shift", "both", "2024-11-03 00:00",
     [("2024-11-03 05:30", "fold"), ("2024-11-03 06:30", "fold")]),
    ("0 1-3 * * *", NY, "shift", "first", "2024-11-03 00:00",
     [("2024-11-03 05:00", "fold"), ("2024-11-03 07:00", None), ("2024-11-03 08:00", None)]),
    # London, gap 01:00-02:00 on 03-31
    ("30 1 * * *", LONDON, "shift", "first", "2024-03-30 12:00",
     [("2024-03-31 01:00", "shifted"), ("2024-04-01 00:30", None)]),
    ("30 1 * * *", LONDON, "skip", "first", "2024-03-30 12:00",
     [("2024-04-01 00:30", None), ("2024-04-02 00:30", None)]),
    # London, fold 01:00-02:00 on 10-27
    ("30 1 * * *", LONDON, "shift", "first", "2024-10-26 12:00",
     [("2024-10-27 00:30", "fold"), ("2024-10-28 01:30", None)]),
    ("30 1 * * *", LONDON, "shift", "second", "2024-10-26 12:00",
     [("2024-10-27 01:30", "fold"), ("2024-10-28 01:30", None)]),
    ("30 1 * * *", LONDON, "skip", "both", "2024-10-26 12:00",
     [("2024-10-27 00:30", "fold"), ("2024-10-27 01:30", "fold")]),
    # Lord Howe, gap 02:00-02:30 on 10-06 local
    ("15 2 * * *", LORD_HOWE, "shift", "first", "2024-10-05 00:00",
     [("2024-10-05 15:30", "shifted"), ("2024-10-06 15:15", None)]),
    ("15 2 * * *", LORD_HOWE, "skip", "first", "2024-10-05 00:00",
     [("2024-10-06 15:15", None), ("2024-10-07 15:15", None)]),
    ("30 2 * * *", LORD_HOWE, "skip", "first", "2024-10-05 00:00",
     [("2024-10-05 15:30", None), ("2024-10-06 15:30", None)]),
    # Lord Howe, fold 01:30-02:00 on 04-07 local
    ("45 1 * * *", LORD_HOWE, "shift", "first", "2024-04-06 00:00",
     [("2024-04-06 14:45", "fold"), ("2024-04-07 15:15", None)]),
    ("45 1 * * *", LORD_HOWE, "shift", "second", "2024-04-06 00:00",
     [("2024-04-06 15:15", "fold"), ("2024-04-07 15:15", None)]),
    ("45 1 * * *", LORD_HOWE, "shift", "both", "2024-04-06 00:00",
     [("2024-04-06 14:45", "fold"), ("2024-04-06 15:15", "fold")]),
    ("15 1 * * *", LORD_HOWE, "shift", "both", "2024-04-06 00:00",
     [("2024-04-06 14:15", None), ("2024-04-07 14:45", None)]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("expr", "zone", "on_gap", "on_fold", "after", "expected"), FIXED_TIME_CASES
)
def test_fixed_time_entries_follow_the_wall_clock(
    expr: str, zone: str, on_gap: Any, on_fold: Any, after: str, expected: list[Any]
) -> None:
    schedule = Cron(expr, timezone=zone, on_gap=on_gap, on_fold=on_fold)
    assert schedule.fixed_time
    got = schedule.next_instants(utc(after), count=len(expected))
    assert times(got) == expect(*expected)


# --- cron: entries with `*` in minute or hour follow real time -----------------------------------

REAL_TIME_CASES = [
    ("30 * * * *", NY, "2024-11-03 04:45",
     [("2024-11-03 05:30", "fold"), ("2024-11-03 06:30", "fold"), ("2024-11-03 07:30", None),
      ("2024-11-03 08:30", None)]),
    ("30 * * * *", NY, "2024-03-10 06:00",
     [("2024-03-10 06:30", None), ("2024-03-10 07:30", None)]),
    ("*/30 * * * *", LONDON, "2024-10-27 00:00",
     [("2024-10-27 00:30", "fold"), ("2024-10-27 01:00", "fold"), ("2024-10-27 01:30", "fold"),
      ("2024-10-27 02:00", None)]),
    ("* 1 * * *", LONDON, "2024-10-27 00:58:30",
     [("2024-10-27 00:59", "fold"), ("2024-10-27 01:00", "fold")]),
    ("30 * * * *", LONDON, "2024-03-31 00:00",
     [("2024-03-31 00:30", None), ("2024-03-31 01:30", None)]),
    ("*/15 * * * *", LORD_HOWE, "2024-04-06 14:20",
     [("2024-04-06 14:30", "fold"), ("2024-04-06 14:45", "fold"), ("2024-04-06 15:00", "fold"),
      ("2024-04-06 15:15", "fold"), ("2024-04-06 15:30", None), ("2024-04-06 15:45", None)]),
    ("*/15 * * * *", LORD_HOWE, "2024-10-05 15:00",
     [("2024-10-05 15:15", None), ("2024-10-05 15:30", None), ("2024-10-05 15:45", None),
      ("2024-10-05 16:00", None)]),
    # `after` inside the fold, in its second pass: only the second occurrences remain
    ("*/20 1 * * *", NY, "2024-11-03 06:10",
     [("2024-11-03 06:20", "fold"), ("2024-11-03 06:40", "fold"), ("2024-11-04 06:00", None)]),
]  # fmt: skip


@pytest.mark.parametrize(("expr", "zone", "after", "expected"), REAL_TIME_CASES)
def test_wildcard_entries_follow_real_time(
    expr: str, zone: str, after: str, expected: list[Any]
) -> None:
    schedule = Cron(expr, timezone=zone, on_gap="shift", on_fold="first")
    assert not schedule.fixed_time
    assert times(schedule.next_instants(utc(after), count=len(expected))) == expect(*expected)


DAY_COUNT_CASES = [
    ("0 * * * *", NY, "2024-11-03 03:59", "2024-11-04 04:59", 25),
    ("0 * * * *", NY, "2024-03-10 04:59", "2024-03-11 03:59", 23),
    ("0 * * * *", LONDON, "2024-10-26 22:59", "2024-10-27 23:59", 25),
    ("0 * * * *", LONDON, "2024-03-30 23:59", "2024-03-31 22:59", 23),
    ("0 * * * *", LORD_HOWE, "2024-04-06 12:59", "2024-04-07 13:29", 24),
    ("30 * * * *", LORD_HOWE, "2024-04-06 12:59", "2024-04-07 13:29", 25),
    ("0 * * * *", LORD_HOWE, "2024-10-05 13:29", "2024-10-06 12:59", 23),
    ("30 * * * *", LORD_HOWE, "2024-10-05 13:29", "2024-10-06 12:59", 24),
    ("30 1 * * *", NY, "2024-11-03 03:59", "2024-11-04 04:59", 1),
    ("30 1 * * *", LONDON, "2024-10-26 22:59", "2024-10-27 23:59", 1),
]


@pytest.mark.parametrize(("expr", "zone", "after", "until", "runs"), DAY_COUNT_CASES)
def test_runs_on_a_transition_day(expr: str, zone: str, after: str, until: str, runs: int) -> None:
    got = Cron(expr, timezone=zone).next_instants(utc(after), until=utc(until))
    assert len(got) == runs


def test_until_is_inclusive_and_count_caps() -> None:
    hourly = Cron("0 * * * *")
    after = utc("2024-01-01 00:00")
    assert [i.time.hour for i in hourly.next_instants(after, until=utc("2024-01-01 03:00"))] == [
        1,
        2,
        3,
    ]
    assert len(hourly.next_instants(after, count=2, until=utc("2024-01-02 00:00"))) == 2
    assert hourly.next_instants(after, count=0) == []


def test_start_and_end_bounds_are_inclusive_and_naive_means_local() -> None:
    noon = Cron(
        "0 12 * * *",
        timezone=NY,
        start=datetime(2024, 1, 2, 12),
        end=datetime(2024, 1, 4, 12),
    )
    got = noon.next_instants(utc("2024-01-01 00:00"), count=10)
    assert [i.time for i in got] == [utc(f"2024-01-0{d} 17:00") for d in (2, 3, 4)]


def test_after_may_be_in_any_timezone() -> None:
    after = datetime(2024, 11, 3, 1, 10, tzinfo=ZoneInfo(NY), fold=1)  # 06:10Z
    got = Cron("*/20 1 * * *", timezone=NY).next_instants(after, count=1)
    assert got[0].time == utc("2024-11-03 06:20")


def test_instant_local_time_is_in_the_schedule_zone() -> None:
    (got,) = Cron("30 1 * * *", timezone=NY, on_fold="second").next_instants(
        utc("2024-11-03 00:00"), count=1
    )
    assert got.time.tzinfo is UTC
    assert got.local_time.tzinfo == ZoneInfo(NY)
    assert (got.local_time.hour, got.local_time.minute, got.local_time.fold) == (1, 30, 1)
    assert got.local_time.utcoffset() == timedelta(hours=-5)


def test_aliases_are_five_field_entries() -> None:
    after = utc("2024-05-15 10:20")
    assert Cron("@hourly").next_instants(after, count=1)[0].time == utc("2024-05-15 11:00")
    assert Cron("@daily").next_instants(after, count=1)[0].time == utc("2024-05-16 00:00")
    assert Cron("@weekly").next_instants(after, count=1)[0].time == utc("2024-05-19 00:00")
    assert Cron("@monthly").next_instants(after, count=1)[0].time == utc("2024-06-01 00:00")
    assert Cron("@annually").next_instants(after, count=1)[0].time == utc("2025-01-01 00:00")


def test_day_fields_use_or_semantics_and_extensions() -> None:
    after = utc("2024-05-01 00:00")
    # the 13th, or any Friday
    got = Cron("0 0 13 * 5").next_instants(after, count=3)
    assert [i.time.day for i in got] == [3, 10, 13]
    assert Cron("0 0 L * *").next_instants(after, count=1)[0].time == utc("2024-05-31 00:00")
    assert Cron("0 0 * * 1#2").next_instants(after, count=1)[0].time == utc("2024-05-13 00:00")


def test_next_instants_needs_aware_times_and_a_limit() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        Cron("0 * * * *").next_instants(datetime(2024, 1, 1), count=1)
    with pytest.raises(ValueError, match="count, until"):
        Cron("0 * * * *").next_instants(utc("2024-01-01 00:00"))


# --- intervals ------------------------------------------------------------------------------------

INTERVAL_CASES = [
    # daily from the default anchor (00:00 local): midnight stays midnight across the gap
    (Interval(timedelta(days=1), timezone=NY), "2024-03-09 00:00",
     [("2024-03-09 05:00", None), ("2024-03-10 05:00", None), ("2024-03-11 04:00", None)]),
    # daily at 02:30 local: the gap day shifts to the end of the gap
    (Interval(86400, timezone=NY, anchor=datetime(2024, 1, 1, 2, 30)), "2024-03-09 00:00",
     [("2024-03-09 07:30", None), ("2024-03-10 07:00", "shifted"), ("2024-03-11 06:30", None)]),
    # every two days at 01:30 London: the fold day takes the first occurrence
    (Interval("P2D", timezone=LONDON, anchor=datetime(2024, 10, 1, 1, 30)), "2024-10-26 00:00",
     [("2024-10-27 00:30", "fold"), ("2024-10-29 01:30", None)]),
    # hourly is exact elapsed time: the repeated hour runs twice
    (Interval(3600, timezone=NY), "2024-11-03 04:30",
     [("2024-11-03 05:00", "fold"), ("2024-11-03 06:00", "fold"), ("2024-11-03 07:00", None),
      ("2024-11-03 08:00", None)]),
    # five hours from 00:00 EDT is 04:00 EST on the fall-back day, not 05:00
    (Interval(timedelta(hours=5), timezone=NY, anchor=datetime(2024, 11, 3)), "2024-11-03 04:00",
     [("2024-11-03 09:00", None), ("2024-11-03 14:00", None)]),
    # the anchor's phase is kept, before and after it
    (Interval(5400, anchor=utc("2024-01-01 00:10")), "2024-01-01 05:00",
     [("2024-01-01 06:10", None), ("2024-01-01 07:40", None)]),
    (Interval(5400, anchor=utc("2024-01-01 00:10")), "2023-12-31 21:30",
     [("2023-12-31 22:40", None), ("2024-01-01 00:10", None)]),
    # 361_454_400 s from 2020-01-01 to the `after`; that is 6 past a multiple of 7
    (Interval(7), "2031-06-15 12:00:00",
     [("2031-06-15 12:00:01", None), ("2031-06-15 12:00:08", None)]),
    # Lord Howe, 30-minute shift, exact half hours
    (Interval(1800, timezone=LORD_HOWE), "2024-04-06 14:20",
     [("2024-04-06 14:30", "fold"), ("2024-04-06 15:00", "fold"), ("2024-04-06 15:30", None)]),
]  # fmt: skip


@pytest.mark.parametrize(("schedule", "after", "expected"), INTERVAL_CASES)
def test_interval_instants(schedule: Interval, after: str, expected: list[Any]) -> None:
    got = schedule.next_instants(utc(after), count=len(expected))
    assert times(got) == expect(*expected)


def test_daily_interval_keeps_local_wall_time_all_year() -> None:
    daily = Interval(timedelta(days=1), timezone=LONDON, anchor=datetime(2020, 1, 1, 9, 15))
    got = daily.next_instants(utc("2024-01-01 00:00"), until=utc("2025-01-01 00:00"))
    assert len(got) == 366
    assert {(i.local_time.hour, i.local_time.minute) for i in got} == {(9, 15)}
    assert {i.time.hour for i in got} == {8, 9}


def test_short_interval_is_exact_elapsed_time() -> None:
    every_90 = Interval(timedelta(minutes=90), timezone=NY)
    got = every_90.next_instants(utc("2024-03-09 00:00"), until=utc("2024-03-12 00:00"))
    gaps = {b.time - a.time for a, b in zip(got, got[1:], strict=False)}
    assert gaps == {timedelta(minutes=90)}


# --- rrules ---------------------------------------------------------------------------------------

RRULE_CASES = [
    (RRule("FREQ=WEEKLY;BYDAY=MO"), "2024-01-03 00:00",
     [("2024-01-08 00:00", None), ("2024-01-15 00:00", None)]),
    (RRule("FREQ=DAILY;BYHOUR=2;BYMINUTE=30", timezone=NY), "2024-03-09 12:00",
     [("2024-03-10 07:00", "shifted"), ("2024-03-11 06:30", None)]),
    (RRule("FREQ=DAILY;BYHOUR=1;BYMINUTE=30", timezone=NY), "2024-11-03 00:00",
     [("2024-11-03 05:30", "fold"), ("2024-11-04 06:30", None)]),
    (RRule("RRULE:FREQ=DAILY;BYHOUR=1;BYMINUTE=45", timezone=LORD_HOWE), "2024-04-06 00:00",
     [("2024-04-06 14:45", "fold"), ("2024-04-07 15:15", None)]),
    # 2_103_840 minutes from 2020-01-01 to 2024-01-01, 4 past a multiple of 7
    (RRule("FREQ=MINUTELY;INTERVAL=7"), "2024-01-01 00:00",
     [("2024-01-01 00:03", None), ("2024-01-01 00:10", None)]),
    (RRule("DTSTART:20240101T090000\nRRULE:FREQ=MONTHLY;COUNT=3", timezone="Europe/Paris"),
     "2023-01-01 00:00",
     [("2024-01-01 08:00", None), ("2024-02-01 08:00", None), ("2024-03-01 08:00", None)]),
    (RRule("DTSTART:20240101T120000\nRRULE:FREQ=DAILY\nEXDATE:20240102T120000"),
     "2024-01-01 00:00", [("2024-01-01 12:00", None), ("2024-01-03 12:00", None)]),
]  # fmt: skip


@pytest.mark.parametrize(("schedule", "after", "expected"), RRULE_CASES)
def test_rrule_instants(schedule: RRule, after: str, expected: list[Any]) -> None:
    got = schedule.next_instants(utc(after), count=len(expected))
    assert times(got) == expect(*expected)


def test_rrule_count_ends_the_rule() -> None:
    three = RRule("DTSTART:20240101T090000\nRRULE:FREQ=MONTHLY;COUNT=3", timezone="Europe/Paris")
    assert len(three.next_instants(utc("2023-01-01 00:00"), count=10)) == 3
    assert three.next_instants(utc("2024-03-01 08:00"), count=10) == []


def test_rrule_without_dtstart_does_not_depend_on_the_clock() -> None:
    every_third_day = RRule("FREQ=DAILY;INTERVAL=3")  # from 2020-01-01: 1461 days to 2024 = 3*487
    got = every_third_day.next_instants(utc("2023-12-31 12:00"), count=2)
    assert [i.time for i in got] == [utc("2024-01-01 00:00"), utc("2024-01-04 00:00")]


# --- jitter ---------------------------------------------------------------------------------------


def test_jitter_zero_returns_nominal() -> None:
    nominal = utc("2024-01-01 00:00")
    assert Cron("0 * * * *").jittered(nominal, utc("2024-01-01 01:00"), "seed") == nominal


def test_jitter_is_deterministic_and_bounded() -> None:
    schedule = Cron("0 * * * *", jitter=600)
    nominal = utc("2024-01-01 00:00")
    delays = {schedule.jittered(nominal, None, f"seed-{n}") - nominal for n in range(50)}
    assert all(timedelta(0) <= d < timedelta(minutes=10) for d in delays)
    assert len(delays) > 40
    assert schedule.jittered(nominal, None, "a") == schedule.jittered(nominal, None, "a")
    same_instant = nominal.astimezone(ZoneInfo(NY))
    assert schedule.jittered(same_instant, None, "a") == schedule.jittered(nominal, None, "a")


def test_jitter_never_reaches_the_next_fire() -> None:
    schedule = Cron("0 * * * *", jitter=timedelta(hours=1))
    nominal = utc("2024-01-01 00:00")
    nxt = nominal + timedelta(seconds=2)
    results = {schedule.jittered(nominal, nxt, f"s{n}") for n in range(50)}
    assert all(nominal <= r < nxt for r in results)
    assert max(results) == nxt - timedelta(microseconds=1)


# --- validation -----------------------------------------------------------------------------------


def test_constructor_forms_agree() -> None:
    assert Cron("0 2 * * *", timezone="Europe/Paris") == Cron(
        cron="0 2 * * *", timezone="Europe/Paris"
    )
    assert Cron("0 2 * * *") == ADAPTER.validate_python({"kind": "cron", "cron": "0 2 * * *"})
    assert Interval(3600) == Interval(timedelta(hours=1)) == Interval("PT1H")
    assert Interval(timedelta(days=1), timezone=NY).every == timedelta(days=1)
    assert RRule("FREQ=WEEKLY;BYDAY=MO") == RRule(rrule="FREQ=WEEKLY;BYDAY=MO")
    assert Cron("0 2 * * *", jitter=30).jitter == timedelta(seconds=30)


BAD_CRON_CASES = [
    ("0 25 * * *", 'hour field "25"'),
    ("61 * * * *", 'minute field "61"'),
    ("0 0 32 * *", 'day-of-month field "32"'),
    ("0 0 * 13 *", 'month field "13"'),
    ("0 0 * * 8", 'day-of-week field "8"'),
    ("0 0 * * xyz", 'day-of-week field "xyz"'),
    ("*/0 * * * *", 'minute field "*/0"'),
    ("R * * * *", 'minute field "R"'),
    ("* * * * * *", "expected 5 fields"),
    ("0 0 * *", "expected 5 fields"),
    ("@fortnightly", "expected 5 fields"),
    ("0 0 31 2 *", "never fires"),
]


@pytest.mark.parametrize(("expr", "fragment"), BAD_CRON_CASES)
def test_bad_cron_names_the_problem(expr: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_schedule({"kind": "cron", "cron": expr})
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_bad_cron_message_is_exact() -> None:
    with pytest.raises(
        ValidationError, match='invalid cron "0 25 \\* \\* \\*": hour field "25" out of range'
    ):
        Cron("0 25 * * *")


@pytest.mark.parametrize("expr", ["0 0 L * *", "0 0 * * 1#2", "0 9 * * mon-fri", "*/5 1-3 * * *"])
def test_cron_extensions_are_accepted(expr: str) -> None:
    assert Cron(expr).cron == expr


@pytest.mark.parametrize("zone", ["+02:00", "UTC+2", "GMT-3", "-0500"])
def test_offset_timezones_are_refused(zone: str) -> None:
    with pytest.raises(InvalidInput, match='IANA name such as "Europe/Paris"') as caught:
        parse_schedule({"kind": "cron", "cron": "0 2 * * *", "timezone": zone})
    assert "offset" in str(caught.value)


def test_unknown_timezone_is_refused() -> None:
    with pytest.raises(ValidationError, match='unknown timezone "Mars/Olympus_Mons"'):
        Cron("0 2 * * *", timezone="Mars/Olympus_Mons")


@pytest.mark.parametrize("every", [0, -5, "PT0S", timedelta(seconds=-1), 0.5])
def test_an_interval_under_a_second_is_refused(every: Any) -> None:
    with pytest.raises(ValidationError, match="interval must be at least 1 second"):
        Interval(every)


def test_calendar_interval_is_refused() -> None:
    with pytest.raises(ValidationError, match="months or years"):
        Interval("P1M")


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"kind": "rrule", "rrule": "FREQ=FORTNIGHTLY"}, "invalid rrule"),
        ({"kind": "rrule", "rrule": "  "}, "invalid rrule"),
        ({"kind": "cron", "cron": "0 * * * *", "max_runs": 0}, "max_runs"),
        ({"kind": "cron", "cron": "0 * * * *", "jitter": -1}, "jitter must be between 0 and 1 day"),
        ({"kind": "cron", "cron": "0 * * * *", "jitter": 86401}, "jitter must be between 0"),
        ({"kind": "cron", "cron": "0 * * * *", "slug": "Not A Slug"}, "invalid slug"),
        ({"kind": "cron", "cron": "0 * * * *", "on_gap": "later"}, "on_gap"),
        ({"kind": "cron", "cron": "0 * * * *", "colour": "red"}, "colour"),
        ({"kind": "cron"}, "cron: Field required"),
        ({"kind": "weekly"}, '"kind" must be cron, interval or rrule'),
        ({"cron": "0 * * * *"}, '"kind" must be cron, interval or rrule'),
        (
            {"kind": "interval", "every": 60, "start": "2024-02-01", "end": "2024-01-01"},
            "must be after start",
        ),
    ],
)
def test_parse_schedule_refuses_with_one_line(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_schedule(data)
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_parse_schedule_returns_the_right_kind() -> None:
    assert isinstance(parse_schedule({"kind": "interval", "every": 60}), Interval)
    assert isinstance(parse_schedule({"kind": "rrule", "rrule": "FREQ=DAILY"}), RRule)


# --- slugs and JSON -------------------------------------------------------------------------------


def test_slug_is_derived_from_the_definition() -> None:
    cron = Cron("0 2 * * *", timezone=NY)
    defining = cron.model_dump(mode="json", include={"kind", "timezone", "cron", "on_gap",
                                                     "on_fold"})
    canonical = json.dumps(defining, sort_keys=True, separators=(",", ":"))
    assert cron.slug == "cron-" + hashlib.sha256(canonical.encode()).hexdigest()[:8]
    assert Cron("0 2 * * *", timezone=NY).slug == cron.slug
    assert Cron("0 2 * * *", timezone=NY, active=False).slug == cron.slug


@pytest.mark.parametrize("edit", [
    {"parameters": {"x": 1}}, {"jitter": 60}, {"max_runs": 3},
    {"start": datetime(2026, 1, 1)}, {"end": datetime(2030, 1, 1)},
])
def test_editing_what_does_not_decide_the_instants_keeps_the_slug(edit: dict[str, Any]) -> None:
    """The slug is part of a run's identity: changing a bound, the countdown, the jitter or the
    parameters must not make already-run slots new again."""
    assert Cron("0 2 * * *", timezone=NY, **edit).slug == Cron("0 2 * * *", timezone=NY).slug
    assert Interval(60, **edit).slug == Interval(60).slug


@pytest.mark.parametrize(
    "other",
    [
        Cron("0 3 * * *", timezone=NY),
        Cron("0 2 * * *", timezone=LONDON),
        Cron("0 2 * * *", timezone=NY, on_fold="both"),
        Cron("0 2 * * *", timezone=NY, on_gap="skip"),
    ],
)
def test_slug_differs_for_different_definitions(other: Cron) -> None:
    assert other.slug != Cron("0 2 * * *", timezone=NY).slug


def test_explicit_slug_is_kept() -> None:
    assert Interval(60, slug="every-minute").slug == "every-minute"
    assert str(Interval(60).slug).startswith("interval-")
    assert str(RRule("FREQ=DAILY").slug).startswith("rrule-")


ROUND_TRIP = [
    Cron("0 2 * * *", timezone="Europe/Paris", on_gap="skip", on_fold="both"),
    Cron("@daily", slug="nightly", active=False, max_runs=3, parameters={"n": [1, 2]}),
    Cron("*/5 * * * *", start=datetime(2024, 1, 1), end=utc("2025-01-01 00:00"), jitter=12.5),
    Interval(timedelta(days=1, hours=2), timezone=NY, anchor=datetime(2024, 5, 1, 6)),
    Interval(3600, anchor=utc("2024-01-01 00:10")),
    RRule("DTSTART:20240101T090000\nRRULE:FREQ=MONTHLY;COUNT=3", timezone=LORD_HOWE),
]


@pytest.mark.parametrize("schedule", ROUND_TRIP)
def test_json_round_trip(schedule: Cron | Interval | RRule) -> None:
    data = schedule.model_dump(mode="json")
    assert json.loads(json.dumps(data)) == data
    assert ADAPTER.validate_python(data) == schedule
    assert ADAPTER.validate_json(ADAPTER.dump_json(schedule)) == schedule
    assert parse_schedule(data) == schedule


def test_schedules_are_frozen() -> None:
    with pytest.raises(ValidationError):
        Cron("0 2 * * *").cron = "0 3 * * *"  # type: ignore[misc]


# --- properties -----------------------------------------------------------------------------------

cron_exprs = st.tuples(
    st.sampled_from(["0", "30", "5,35", "10-20/5", "*", "*/15", "59"]),
    st.sampled_from(["*", "1", "2", "1-3", "*/2", "0,12", "23"]),
    st.sampled_from(["*", "*", "1", "15", "L"]),
    st.sampled_from(["*", "*", "3", "10,11", "*/3"]),
    st.sampled_from(["*", "*", "0", "1-5", "sun"]),
).map(" ".join)
wildcard_exprs = cron_exprs.filter(lambda e: "*" in "".join(e.split(" ")[:2]))
random_afters = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 12, 31))
ZONES = [
    NY, LONDON, LORD_HOWE, "UTC", "Europe/Paris", "America/Santiago", "Asia/Tehran",
    "Asia/Kathmandu",
]


@functools.cache
def _transitions(zone: str) -> list[datetime]:
    """Whole UTC hours at or just after each change of the zone's offset in 2021."""
    tz, found = ZoneInfo(zone), []
    moment = datetime(2021, 1, 1, tzinfo=UTC)
    previous = moment.astimezone(tz).utcoffset()
    while moment.year == 2021:
        offset = moment.astimezone(tz).utcoffset()
        found += [moment] if offset != previous else []
        previous, moment = offset, moment + timedelta(hours=1)
    return found or [moment]


@st.composite
def zones_and_afters(draw: st.DrawFn) -> tuple[str, datetime]:
    """A zone and an aware UTC time, half the time within 4 hours before one of its transitions."""
    zone = draw(st.sampled_from(ZONES))
    if draw(st.booleans()):
        return zone, draw(random_afters).replace(tzinfo=UTC)
    base = draw(st.sampled_from(_transitions(zone)))
    return zone, base - timedelta(seconds=draw(st.integers(0, 4 * 3600)))


def _matching_walls(expr: str, first: datetime, last: datetime) -> set[datetime]:
    """Every naive wall time from `first` to `last` that the cron expression names."""
    walls, it = set(), croniter(expr, first - timedelta(minutes=1))
    while (wall := it.get_next(datetime)) <= last:
        walls.add(wall)
    return walls


def _check_stream(schedule: ScheduleBase, after: datetime, got: list[Instant]) -> None:
    moments = [i.time for i in got]
    assert all(b > a for a, b in zip(moments, moments[1:], strict=False))
    assert all(m > after and m.tzinfo is UTC for m in moments)
    assert all(i.local_time.astimezone(UTC) == i.time for i in got)
    assert all(str(i.local_time.tzinfo) == schedule.timezone for i in got)


@settings(max_examples=50, deadline=None)
@given(expr=cron_exprs, zone_after=zones_and_afters(), count=st.integers(1, 30))
def test_cron_instants_increase_and_match(
    expr: str, zone_after: tuple[str, datetime], count: int
) -> None:
    zone, after = zone_after
    schedule = Cron(expr, timezone=zone, on_fold="both")
    got = schedule.next_instants(after.astimezone(ZoneInfo(zone)), count=count)
    assert len(got) == count
    _check_stream(schedule, after, got)
    for instant in got:
        wall = instant.local_time.replace(tzinfo=None)
        assert croniter.match(expr, wall) == (instant.dst != "shifted")


@settings(max_examples=50, deadline=None)
@given(expr=wildcard_exprs, zone_after=zones_and_afters())
def test_wildcard_cron_runs_every_matching_minute(
    expr: str, zone_after: tuple[str, datetime]
) -> None:
    zone, after = zone_after
    schedule = Cron(expr, timezone=zone)
    until = after + timedelta(hours=8)
    got = [i.time for i in schedule.next_instants(after, until=until)]
    minutes = [after.replace(second=0, microsecond=0) + timedelta(minutes=n) for n in range(481)]
    walls = {m: m.astimezone(ZoneInfo(zone)).replace(tzinfo=None) for m in minutes}
    matching = _matching_walls(expr, min(walls.values()), max(walls.values()))
    assert got == [m for m in minutes if after < m <= until and walls[m] in matching]


@settings(max_examples=50, deadline=None)
@given(
    seconds=st.integers(1, 4 * 86400).filter(lambda n: n % 86400 != 0),
    days=st.integers(0, 3),
    zone_after=zones_and_afters(),
)
def test_interval_instants_increase(
    seconds: int, days: int, zone_after: tuple[str, datetime]
) -> None:
    zone, after = zone_after
    every = timedelta(days=days) if days else timedelta(seconds=seconds)
    schedule = Interval(every, timezone=zone, anchor=datetime(2021, 6, 1, 2, 30))
    got = schedule.next_instants(after, count=20)
    _check_stream(schedule, after, got)
    if days:
        plain = [i for i in got if i.dst is None]
        assert {(i.local_time.hour, i.local_time.minute) for i in plain} <= {(2, 30)}
    else:
        assert {b.time - a.time for a, b in zip(got, got[1:], strict=False)} == {every}


# --- the fast paths against the plain definitions ------------------------------------------------

any_cron_exprs = st.tuples(
    st.sampled_from(["0", "30", "5,35", "10-20/5", "*", "*/15", "59", "*/7"]),
    st.sampled_from(["*", "0", "2", "1-3", "*/2", "0,12", "23"]),
    st.sampled_from(["*", "1", "15", "L", "29", "31", "1,L", "30,31", "*/10"]),
    st.sampled_from(["*", "2", "10,11", "*/3", "feb,mar", "4-9"]),
    st.sampled_from(["*", "0", "1-5", "sun", "6,7", "5", "5-0", "1-7/2"]),
).map(" ".join)
dst_hour_exprs = st.tuples(
    st.sampled_from(["0", "30", "5,35", "0,30,45", "15-45/15", "*/20", "*"]),
    st.sampled_from(["1", "2", "1,2", "0-3", "23", "*", "*/3"]),
).map(lambda fields: " ".join(fields) + " * * *")


def _fires(expr: str) -> bool:
    try:
        Cron(expr)
    except ValidationError:
        return False
    return True


@settings(max_examples=200, deadline=None)
@given(
    expr=any_cron_exprs,
    start=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)),
)
def test_cron_walk_matches_croniter(expr: str, start: datetime) -> None:
    assume(_fires(expr))
    fields = cron_fields(expr)
    assert fields is not None
    ours = list(itertools.islice(fields.walls_after(start), 25))
    theirs = croniter(expr, start)
    assert ours == [theirs.get_next(datetime) for _ in range(25)]


def test_cron_walk_leaves_nth_weekday_and_nearest_weekday_to_croniter() -> None:
    assert cron_fields("0 0 * * 1#2") is None
    assert cron_fields("0 0 15W * *") is None
    assert cron_fields("0 0 L * 5") is not None


def _in_reference_order(
    walls: Iterable[datetime], resolve: Resolver, after: datetime, count: int | None
) -> list[Instant]:
    """The plain definition: every wall time's instants after `after`, ordered by time, then
    unflagged first, then wall order; of equal instants only the first."""
    found = sorted(
        (item.time, item.dst is not None, seq, item)
        for seq, wall_time in enumerate(walls)
        for item in resolve(wall_time)
        if item.time > after
    )
    firsts = [found[0]] if found else []
    firsts += [this for previous, this in itertools.pairwise(found) if this[0] != previous[0]]
    return [item for *_, item in firsts][:count]


def _reference_cron(schedule: Cron, after: datetime, until: datetime, count: int | None
                    ) -> list[Instant]:
    """What `next_instants` returned before the fast path: croniter's wall times from a fold's
    length before `after`, each resolved on its own."""
    zone = schedule.zone
    walls, found = croniter(schedule.expression, wall(after, zone) - MAX_FOLD), []
    while (wall_time := walls.get_next(datetime)) <= wall(until, zone) + MAX_FOLD:
        found.append(wall_time)
    if schedule.fixed_time:
        resolve: Resolver = functools.partial(
            resolve_fixed, zone=zone, on_gap=schedule.on_gap, on_fold=schedule.on_fold
        )
    else:
        resolve = functools.partial(resolve_real, zone=zone)
    in_window = _in_reference_order(found, resolve, after, None)
    return [i for i in in_window if i.time <= until][:count]


def _exactly(instants: list[Instant]) -> list[tuple[Any, ...]]:
    """Instants with what `==` overlooks: the fold and offset of the local time."""
    return [(i.time, i.local_time, i.local_time.fold, i.local_time.utcoffset(), i.dst)
            for i in instants]


@settings(max_examples=300, deadline=None)
@given(
    expr=st.one_of(dst_hour_exprs, cron_exprs, any_cron_exprs),
    zone_after=zones_and_afters(),
    hours=st.integers(0, 30),
    count=st.none() | st.integers(0, 100),
    on_gap=st.sampled_from(["shift", "skip"]),
    on_fold=st.sampled_from(["first", "second", "both"]),
)
def test_cron_fast_path_matches_the_reference(
    expr: str, zone_after: tuple[str, datetime], hours: int, count: int | None, on_gap: Any,
    on_fold: Any,
) -> None:
    assume(_fires(expr))
    zone, after = zone_after
    schedule = Cron(expr, timezone=zone, on_gap=on_gap, on_fold=on_fold)
    until = after + timedelta(hours=hours, minutes=15)
    got = schedule.next_instants(after, count=count, until=until)
    assert _exactly(got) == _exactly(_reference_cron(schedule, after, until, count))


def _reference_interval(schedule: Interval, after: datetime, count: int) -> list[Instant]:
    zone = schedule.zone
    if schedule.whole_days:
        origin = schedule.anchor_wall
        first = (wall(after, zone) - origin) // schedule.every - 1
        walls = [origin + k * schedule.every for k in range(first, first + count + 5)]
        resolve = functools.partial(resolve_fixed, zone=zone, on_gap="shift", on_fold="first")
        return _in_reference_order(walls, resolve, after, count)
    origin = resolve_fixed(schedule.anchor_wall, zone, "shift", "first")[0].time
    first = (after - origin) // schedule.every + 1
    moments = [origin + k * schedule.every for k in range(first, first + count)]
    return [Instant(m, m.astimezone(zone), _fold_flag(m, zone)) for m in moments]


def _fold_flag(moment: datetime, zone: ZoneInfo) -> DstFlag | None:
    return "fold" if len(occurrences(wall(moment, zone), zone)) > 1 else None


@settings(max_examples=100, deadline=None)
@given(
    seconds=st.integers(1, 2 * 86400),
    days=st.integers(0, 3),
    zone_after=zones_and_afters(),
    count=st.integers(0, 40),
    anchor=st.sampled_from([(2021, 3, 28, 2, 30), (2021, 10, 31, 2, 30), (2021, 4, 4, 1, 45)]),
)
def test_interval_fast_path_matches_the_reference(
    seconds: int, days: int, zone_after: tuple[str, datetime], count: int, anchor: tuple[int, ...]
) -> None:
    zone, after = zone_after
    every = timedelta(days=days) if days else timedelta(seconds=seconds)
    schedule = Interval(every, timezone=zone, anchor=datetime(*anchor))
    got = schedule.next_instants(after, count=count)
    assert _exactly(got) == _exactly(_reference_interval(schedule, after, count))


@settings(max_examples=100, deadline=None)
@given(zone_after=zones_and_afters(), minutes=st.integers(-300, 300))
def test_naive_times_read_as_wall_times_match_the_reference(
    zone_after: tuple[str, datetime], minutes: int
) -> None:
    zone, after = zone_after
    naive = wall(after, ZoneInfo(zone)) + timedelta(minutes=minutes)
    expected = resolve_fixed(naive, ZoneInfo(zone), "shift", "first")[0].time
    assert to_utc(naive, ZoneInfo(zone)) == expected


@pytest.mark.parametrize("field", ["start", "end"])
@pytest.mark.parametrize("moment", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_bounds_far_outside_any_schedule_are_refused_with_one_line(field: str, moment: str
                                                                   ) -> None:
    with pytest.raises(InvalidInput, match="outside the years 1900-9000"):
        parse_schedule({"kind": "cron", "cron": "0 2 * * *", field: moment})


def test_an_anchor_outside_the_supported_years_is_refused() -> None:
    with pytest.raises(InvalidInput, match="outside the years"):
        parse_schedule({"kind": "interval", "every": 60, "anchor": "1000-01-01T00:00:00"})
