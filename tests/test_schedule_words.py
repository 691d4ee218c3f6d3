"""Schedules in words: one table per kind, read against what each schedule really fires at.

Each sentence is checked by hand; where the words cannot be both brief and exact, the raw rule
is the expected answer.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ostinato.deploy.schedule_words import describe, describe_cron, describe_every, describe_rrule
from ostinato.deploy.schedules import Cron, Interval, RRule


@pytest.mark.parametrize(("expression", "words"), [
    ("0 2 * * *", "at 02:00 every day"),
    ("*/15 * * * *", "every 15 minutes"),
    ("30 9 * * 1-5", "at 09:30 Monday to Friday"),
    ("0 0 1 * *", "at 00:00 on day 1 of every month"),
    ("* * * * *", "every minute"),
    ("0 * * * *", "every hour"),
    ("30 * * * *", "every hour at minute 30"),
    ("0 */2 * * *", "every 2 hours"),
    ("15 */3 * * *", "every 3 hours at minute 15"),
    ("0 9,17 * * *", "at 09:00 and 17:00 every day"),
    ("0,30 9 * * *", "at 09:00 and 09:30 every day"),
    ("0 */6 * * *", "at 00:00, 06:00, 12:00 and 18:00 every day"),
    ("0 9-17 * * 1-5", "every hour from 09:00 to 17:00 Monday to Friday"),
    ("*/15 9-17 * * *", "every 15 minutes from 09:00 to 17:45"),
    ("5 4 * * sun", "at 04:05 on Sunday"),
    ("0 0 * * 7", "at 00:00 on Sunday"),
    ("0 0 * * 6,0", "at 00:00 on Saturday and Sunday"),
    ("0 0 * * mon,wed,fri", "at 00:00 on Monday, Wednesday and Friday"),
    ("0 0 * * 1-3,5", "at 00:00 on Monday, Tuesday, Wednesday and Friday"),
    ("0 0 L * *", "at 00:00 on the last day of every month"),
    ("0 0 1,15 * *", "at 00:00 on days 1 and 15 of every month"),
    ("0 0 1-7 * *", "at 00:00 on days 1 to 7 of every month"),
    ("0 0 1 1,7 *", "at 00:00 on day 1 of January and July"),
    ("0 0 * 6-8 *", "at 00:00 every day in June to August"),
    ("0 12 * * 1-5 ", "at 12:00 Monday to Friday"),
    ("@hourly", "every hour"),
    ("@daily", "at 00:00 every day"),
    ("@weekly", "at 00:00 on Sunday"),
    ("@monthly", "at 00:00 on day 1 of every month"),
    ("@yearly", "at 00:00 on day 1 of January"),
    # Not said: the raw expression is.
    ("0 0 1 * 1", "cron 0 0 1 * 1"),  # day 1 OR Monday
    ("0 0 * * 5#2", "cron 0 0 * * 5#2"),
    ("0 0 15W * *", "cron 0 0 15W * *"),
    ("0 0 1,L * *", "cron 0 0 1,L * *"),
    ("*/7 * * * *", "cron */7 * * * *"),  # minute 56, then minute 0: not every 7 minutes
    ("0 */5 * * *", "cron 0 */5 * * *"),
    ("*/20 */2 * * *", "cron */20 */2 * * *"),
])
def test_cron_in_words(expression: str, words: str) -> None:
    assert describe_cron(expression) == words
    assert describe(Cron(expression)) == words


@pytest.mark.parametrize(("every", "words"), [
    (timedelta(hours=2), "every 2 hours"),
    (timedelta(hours=1), "every hour"),
    (timedelta(days=1), "every day"),
    (timedelta(days=3), "every 3 days"),
    (timedelta(minutes=90), "every 90 minutes"),
    (timedelta(seconds=30), "every 30 seconds"),
    (timedelta(seconds=1.5), "every 1.5 seconds"),
    (timedelta(weeks=2), "every 2 weeks"),
])
def test_durations_in_words(every: timedelta, words: str) -> None:
    assert describe_every(every) == words


@pytest.mark.parametrize(("interval", "words"), [
    (Interval(timedelta(hours=2)), "every 2 hours"),
    (Interval(timedelta(days=1)), "every day"),
    (Interval(timedelta(days=1), anchor=datetime(2020, 1, 1, 6, 30)), "every day at 06:30"),
    (Interval(timedelta(hours=1), anchor=datetime(2020, 1, 1, 0, 20)),
     "every hour, from 2020-01-01 00:20"),
    (Interval(timedelta(days=3), anchor=datetime(2024, 5, 2, 8)),
     "every 3 days, from 2024-05-02 08:00"),
    (Interval(timedelta(days=3)), "every 3 days"),
    (Interval(timedelta(weeks=1)), "every week on Wednesday"),  # 2020-01-01, the default anchor
    (Interval(timedelta(weeks=1), anchor=datetime(2024, 1, 1, 9, tzinfo=UTC)),
     "every week on Monday at 09:00"),
])
def test_intervals_in_words(interval: Interval, words: str) -> None:
    assert describe(interval) == words


@pytest.mark.parametrize(("rule", "words"), [
    ("FREQ=DAILY", "every day at 00:00"),
    ("FREQ=DAILY;INTERVAL=2;BYHOUR=6", "every 2 days at 06:00"),
    ("RRULE:FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=9",
     "every week on Monday, Wednesday and Friday at 09:00"),
    ("FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR;BYHOUR=9;BYMINUTE=30",
     "every week on Monday to Friday at 09:30"),
    ("FREQ=WEEKLY", "every week on Wednesday at 00:00"),  # DTSTART 2020-01-01, a Wednesday
    ("DTSTART:20240301T093000\nRRULE:FREQ=WEEKLY", "every week on Friday at 09:30"),
    ("FREQ=MONTHLY;BYDAY=1MO,-1FR", "every month on the first Monday and the last Friday at 00:00"),
    ("FREQ=MONTHLY;BYMONTHDAY=1;COUNT=3", "every month on day 1 at 00:00, 3 times"),
    ("FREQ=MONTHLY;BYMONTHDAY=-1", "every month on the last day at 00:00"),
    ("FREQ=YEARLY", "every year on day 1 of January at 00:00"),
    ("FREQ=YEARLY;BYMONTH=3;UNTIL=20300101T000000",
     "every year on day 1 of March at 00:00, until 2030-01-01 00:00"),
    ("FREQ=YEARLY;BYMONTH=6;BYDAY=-1SU", "every year on the last Sunday in June at 00:00"),
    ("FREQ=HOURLY", "every hour"),
    ("FREQ=HOURLY;BYMINUTE=0,30", "every hour at minutes 0 and 30"),
    ("FREQ=MINUTELY;INTERVAL=15", "every 15 minutes"),
    # Not said: the raw rule is, on one line.
    ("FREQ=DAILY;BYSETPOS=1", "rrule FREQ=DAILY;BYSETPOS=1"),
    ("FREQ=MONTHLY;BYDAY=FR;BYMONTHDAY=13", "rrule FREQ=MONTHLY;BYDAY=FR;BYMONTHDAY=13"),
    ("FREQ=DAILY;BYHOUR=9,12,15,18,21", "rrule FREQ=DAILY;BYHOUR=9,12,15,18,21"),
    ("RRULE:FREQ=DAILY\nEXDATE:20240101T000000", "rrule RRULE:FREQ=DAILY EXDATE:20240101T000000"),
    ("FREQ=MINUTELY;BYHOUR=9", "rrule FREQ=MINUTELY;BYHOUR=9"),
])
def test_rrules_in_words(rule: str, words: str) -> None:
    assert describe_rrule(rule) == words
    assert describe(RRule(rule)) == words


@pytest.mark.parametrize(("schedule", "words"), [
    (Cron("0 2 * * *", timezone="Europe/Paris"), "at 02:00 every day, Europe/Paris"),
    (Interval(3600, timezone="Asia/Tokyo"), "every hour, Asia/Tokyo"),
    (RRule("FREQ=DAILY", timezone="America/New_York"), "every day at 00:00, America/New_York"),
    (Cron("0 0 * * 0", active=False), "at 00:00 on Sunday (inactive)"),
    (Cron("0 0 15W * *", timezone="Europe/Paris", active=False),
     "cron 0 0 15W * *, Europe/Paris (inactive)"),
])
def test_timezone_unless_utc_and_inactive_marked(schedule: Cron | Interval | RRule,
                                                 words: str) -> None:
    assert describe(schedule) == words
