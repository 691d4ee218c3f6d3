"""Schedules: when a deployment runs (`Cron`, `Interval`, `RRule`), as pure arithmetic.

Every schedule carries an IANA timezone (default UTC). The arithmetic never reads the clock:
`next_instants(after, count=..., until=...)` takes the moment to start from and returns `Instant`s
(UTC time, local time, and a `dst` flag).

The DST rule for cron is the one of Vixie/ISC cron(8), made explicit and configurable:

* An entry whose minute and hour fields contain no `*` (a step such as `*/5` counts as `*`; a list
  or range such as `0,30` or `1-5` does not) names wall-clock times. A wall time that falls in a
  spring-forward gap runs once, at the first instant after the gap (`on_gap="shift"`, flagged
  `dst="shifted"`), or not at all (`on_gap="skip"`). A wall time that occurs twice in a fall-back
  fold runs once, at its first occurrence (`on_fold="first"`), or at its second (`"second"`), or at
  both (`"both"`); these are flagged `dst="fold"`.
* An entry with `*` in its minute or hour field follows real time: nothing runs in a gap, and in a
  fold every matching instant runs (an hourly job runs 25 times on a fall-back day and 23 times on
  a spring-forward day); instants whose wall time occurs twice are flagged `dst="fold"`.

croniter's own timezone handling is not used: it is iterated over naive wall-clock times, and each
wall time is resolved here with zoneinfo. Intervals that are whole days, and RRules, name wall
times too and follow the fixed-time rule with the defaults (shift, first); shorter intervals are
exact elapsed time from their anchor.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadDateError, croniter
from dateutil.rrule import rrule, rruleset, rrulestr
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from ostinato.deploy.errors import InvalidInput

DEFAULT_ANCHOR = datetime(2020, 1, 1)
"""Midnight 2020-01-01, read in the schedule's timezone: the default phase of intervals/rrules."""

_MAX_FOLD = timedelta(hours=3)
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_OFFSET_RE = re.compile(r"^\s*(?:UTC|GMT|Z)?\s*[+-]\s*\d", re.IGNORECASE)
_RANDOM_RE = re.compile(r"\b[HR]\b", re.IGNORECASE)
_CALENDAR_DURATION_RE = re.compile(r"^P[^T]*[YM]", re.IGNORECASE)
_RRULE_PERIODS = {
    "SECONDLY": timedelta(seconds=1),
    "MINUTELY": timedelta(minutes=1),
    "HOURLY": timedelta(hours=1),
    "DAILY": timedelta(days=1),
    "WEEKLY": timedelta(weeks=1),
}
_CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")
_CRON_ALIASES = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

DstFlag = Literal["shifted", "fold"]


@dataclass(frozen=True)
class Instant:
    """One nominal fire time: `time` in UTC, `local_time` in the schedule's zone, DST flag."""

    time: datetime
    local_time: datetime
    dst: DstFlag | None = None


# --- validation helpers -------------------------------------------------------------------------


def _check_timezone(name: str) -> str:
    hint = 'use an IANA name such as "Europe/Paris"'
    if _OFFSET_RE.match(name):
        raise ValueError(f'timezone "{name}" is a UTC offset; {hint}')
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f'unknown timezone "{name}"; {hint}') from None
    return name


def _expand_cron(text: str) -> str:
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


def _check_cron(text: str) -> str:
    normal = " ".join(text.split())
    fields = _expand_cron(normal).split(" ")
    if len(fields) != 5:
        raise ValueError(
            f'invalid cron "{normal}": expected 5 fields (minute hour day-of-month month '
            f"day-of-week) or an alias such as @daily, got {len(fields)}"
        )
    for index, value in enumerate(fields):
        problem = _field_problem(index, value)
        if problem:
            raise ValueError(
                f'invalid cron "{normal}": {_CRON_FIELDS[index]} field "{value}" {problem}'
            )
    try:
        croniter(" ".join(fields), DEFAULT_ANCHOR).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(f'invalid cron "{normal}": it never fires') from None
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f'invalid cron "{normal}": {exc}') from None
    return normal


def _parse_rrule(text: str) -> rrule | rruleset:
    """The rule with naive dates, read as wall-clock times (DTSTART defaults to 2020-01-01)."""
    try:
        rule: rrule | rruleset = rrulestr(text, dtstart=DEFAULT_ANCHOR, ignoretz=True)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        raise ValueError(f'invalid rrule "{text}": {exc}') from None
    return rule


def _fast_forward(rule: rrule | rruleset, wall: datetime) -> rrule | rruleset:
    """The same rule with DTSTART moved by whole periods to before `wall`.

    Only for COUNT-less rules with a fixed-length period, where the move keeps every occurrence
    (the defaults DTSTART gives to BYHOUR, BYDAY... survive whole periods); it spares iterating
    minute by minute from 2020.
    """
    text = str(rule) if isinstance(rule, rrule) else ""
    fields = dict(re.findall(r"(DTSTART|FREQ|INTERVAL|COUNT)[:=]([0-9A-Z]+)", text))
    period = _RRULE_PERIODS.get(fields.get("FREQ", ""))
    if not isinstance(rule, rrule) or period is None or "COUNT" in fields:
        return rule
    step = period * int(fields.get("INTERVAL", "1"))
    dtstart = datetime.strptime(fields["DTSTART"], "%Y%m%dT%H%M%S")
    skipped = (wall - dtstart) // step
    return rule.replace(dtstart=dtstart + skipped * step) if skipped > 0 else rule


def _check_rrule(text: str) -> str:
    normal = text.strip()
    if not normal:
        raise ValueError("invalid rrule: it is empty")
    _parse_rrule(normal)
    return normal


def _canonical_json(data: dict[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


# --- the models ---------------------------------------------------------------------------------


class ScheduleBase(BaseModel):
    """Fields every schedule kind shares; see the module docstring for the time rules."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    timezone: str = "UTC"
    active: bool = True
    slug: str | None = None
    start: datetime | None = None
    end: datetime | None = None
    max_runs: int | None = Field(default=None, ge=1)
    jitter: timedelta = timedelta(0)
    parameters: dict[str, Any] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        return _check_timezone(value)

    @field_validator("slug")
    @classmethod
    def _valid_slug(cls, value: str | None) -> str | None:
        if value is not None and not _SLUG_RE.match(value):
            raise ValueError(
                f'invalid slug "{value}": use 1-63 lowercase letters, digits, "-" or "_", '
                "starting with a letter or digit"
            )
        return value

    @field_validator("jitter")
    @classmethod
    def _valid_jitter(cls, value: timedelta) -> timedelta:
        if value < timedelta(0):
            raise ValueError(f"jitter must not be negative, got {value}")
        return value

    @model_validator(mode="after")
    def _valid_bounds_and_slug(self) -> Self:
        start, end = self.aware(self.start), self.aware(self.end)
        if start is not None and end is not None and end <= start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        if self.slug is None:
            object.__setattr__(self, "slug", self.derived_slug())
        return self

    @property
    def kind_name(self) -> str:
        return str(getattr(self, "kind", "schedule"))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def derived_slug(self) -> str:
        """`{kind}-{8 hex}`: a hash of every field but `slug` and `active`."""
        data = self.model_dump(mode="json", exclude={"slug", "active"})
        digest = hashlib.sha256(_canonical_json(data).encode()).hexdigest()
        return f"{self.kind_name}-{digest[:8]}"

    def aware(self, moment: datetime | None) -> datetime | None:
        """`moment` as an aware UTC datetime; a naive one is a wall time in this zone."""
        return None if moment is None else _to_utc(moment, self.zone)

    def next_instants(
        self, after: datetime, count: int | None = None, until: datetime | None = None
    ) -> list[Instant]:
        """The nominal fire instants strictly after `after`: at most `count`, none past `until`.

        Instants lie within `start`..`end` (both inclusive); `max_runs` is not applied here.
        """
        lower, until_utc = _check_window(after, count, until)
        start = self.aware(self.start)
        if start is not None and start > lower:
            lower = start - timedelta(microseconds=1)
        stops = [t for t in (until_utc, self.aware(self.end)) if t is not None]
        limit = min(stops) if stops else None
        return _take(self._stream(lower), lower, count, limit)

    def jittered(self, nominal: datetime, next_nominal: datetime | None, seed: str) -> datetime:
        """`nominal` plus a deterministic delay in [0, jitter), strictly before `next_nominal`."""
        if not self.jitter:
            return nominal
        key = f"{seed}{nominal.astimezone(UTC).isoformat()}".encode()
        total = self.jitter // timedelta(microseconds=1)
        delay = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % total
        if next_nominal is not None:
            room = (next_nominal - nominal) // timedelta(microseconds=1) - 1
            delay = max(0, min(delay, room))
        return nominal + timedelta(microseconds=delay)

    def _stream(self, after: datetime) -> Iterator[Instant]:
        raise NotImplementedError


class Cron(ScheduleBase):
    """A 5-field cron expression (or @daily & co.), read in the schedule's timezone."""

    kind: Literal["cron"] = "cron"
    cron: str
    on_gap: Literal["shift", "skip"] = "shift"
    on_fold: Literal["first", "second", "both"] = "first"

    def __init__(self, cron: str | None = None, /, **data: Any) -> None:
        if cron is not None:
            data["cron"] = cron
        super().__init__(**data)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        return _check_cron(value)

    @property
    def expression(self) -> str:
        """The 5-field expression, aliases expanded."""
        return _expand_cron(self.cron)

    @property
    def fixed_time(self) -> bool:
        """True when neither minute nor hour contains `*`: the entry names wall-clock times."""
        minute, hour = self.expression.split(" ")[:2]
        return "*" not in minute and "*" not in hour

    def _stream(self, after: datetime) -> Iterator[Instant]:
        start = _wall(after, self.zone) - _MAX_FOLD
        batches = ((w, self._resolve(w)) for w in _cron_walls(self.expression, start))
        return _in_order(batches, self.zone, after)

    def _resolve(self, wall: datetime) -> list[Instant]:
        if self.fixed_time:
            return _resolve_fixed(wall, self.zone, self.on_gap, self.on_fold)
        return _resolve_real(wall, self.zone)


class Interval(ScheduleBase):
    """Every `every` from `anchor`; whole days keep the wall-clock time, shorter ones are exact."""

    kind: Literal["interval"] = "interval"
    every: timedelta
    anchor: datetime | None = None

    def __init__(self, every: timedelta | float | str | None = None, /, **data: Any) -> None:
        if every is not None:
            data["every"] = every
        super().__init__(**data)

    @field_validator("every", mode="before")
    @classmethod
    def _no_calendar_units(cls, value: object) -> object:
        if isinstance(value, str) and _CALENDAR_DURATION_RE.match(value.strip()):
            raise ValueError(f'interval "{value}" uses months or years; give days, e.g. "P30D"')
        return value

    @field_validator("every")
    @classmethod
    def _valid_every(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError(f"interval must be positive, got {value}")
        return value

    @property
    def whole_days(self) -> bool:
        return self.every % timedelta(days=1) == timedelta(0)

    @property
    def anchor_wall(self) -> datetime:
        """The anchor as a naive wall time in the schedule's zone."""
        anchor = self.anchor or DEFAULT_ANCHOR
        return anchor if anchor.tzinfo is None else _wall(anchor, self.zone)

    def _stream(self, after: datetime) -> Iterator[Instant]:
        if self.whole_days:
            return self._wall_steps(after)
        return self._exact_steps(after)

    def _wall_steps(self, after: datetime) -> Iterator[Instant]:
        first = (_wall(after, self.zone) - self.anchor_wall) // self.every - 1
        walls = _stepped(self.anchor_wall, self.every, first)
        batches = ((w, _resolve_fixed(w, self.zone, "shift", "first")) for w in walls)
        return _in_order(batches, self.zone, after)

    def _exact_steps(self, after: datetime) -> Iterator[Instant]:
        anchor = _to_utc(self.anchor or DEFAULT_ANCHOR, self.zone)
        first = (after - anchor) // self.every + 1
        for moment in _stepped(anchor, self.every, first):
            yield _instant(moment, self.zone, "fold" if _ambiguous(moment, self.zone) else None)


class RRule(ScheduleBase):
    """An RFC 5545 recurrence rule (dateutil); DTSTART defaults to 2020-01-01 00:00 local."""

    kind: Literal["rrule"] = "rrule"
    rrule: str

    def __init__(self, rrule: str | None = None, /, **data: Any) -> None:
        if rrule is not None:
            data["rrule"] = rrule
        super().__init__(**data)

    @field_validator("rrule")
    @classmethod
    def _valid_rrule(cls, value: str) -> str:
        return _check_rrule(value)

    def _stream(self, after: datetime) -> Iterator[Instant]:
        start = _wall(after, self.zone) - _MAX_FOLD
        walls = _fast_forward(_parse_rrule(self.rrule), start).xafter(start, inc=False)
        batches = ((w, _resolve_fixed(w, self.zone, "shift", "first")) for w in walls)
        return _in_order(batches, self.zone, after)


Schedule = Annotated[Cron | Interval | RRule, Field(discriminator="kind")]
"""Any schedule; `kind` ("cron", "interval" or "rrule") tells them apart."""

SCHEDULE_ADAPTER: TypeAdapter[Cron | Interval | RRule] = TypeAdapter(Schedule)


def _one_line(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        message = str(error["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in error["loc"][1:])
        parts.append(f"{where}: {message}" if where and error["type"] != "value_error" else message)
    return "invalid schedule: " + "; ".join(parts)


def parse_schedule(data: dict[str, Any]) -> Cron | Interval | RRule:
    """A schedule from its JSON form; raises `InvalidInput` with one readable line."""
    if not isinstance(data, dict) or data.get("kind") not in ("cron", "interval", "rrule"):
        kind = data.get("kind") if isinstance(data, dict) else None
        raise InvalidInput(
            f'invalid schedule: "kind" must be cron, interval or rrule, got {kind!r}'
        )
    try:
        return SCHEDULE_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise InvalidInput(_one_line(exc)) from None


# --- wall-clock arithmetic ----------------------------------------------------------------------


def _wall(moment: datetime, zone: ZoneInfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None)


def _to_utc(moment: datetime, zone: ZoneInfo) -> datetime:
    """An aware moment in UTC; a naive one is a wall time in `zone` (gap: shift, fold: first)."""
    if moment.tzinfo is None:
        return _resolve_fixed(moment, zone, "shift", "first")[0].time
    return moment.astimezone(UTC)


def _instant(moment: datetime, zone: ZoneInfo, dst: DstFlag | None) -> Instant:
    utc = moment.astimezone(UTC)
    return Instant(time=utc, local_time=utc.astimezone(zone), dst=dst)


def _occurrences(wall: datetime, zone: ZoneInfo) -> list[datetime]:
    """The UTC instants whose local wall time is `wall`: none (gap), one, or two (fold)."""
    found: set[datetime] = set()
    for fold in (0, 1):
        moment = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if _wall(moment, zone) == wall:
            found.add(moment)
    return sorted(found)


def _ambiguous(moment: datetime, zone: ZoneInfo) -> bool:
    return len(_occurrences(_wall(moment, zone), zone)) > 1


def _gap_end(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant after the gap that swallows `wall` (binary search on whole seconds)."""
    low = wall.replace(tzinfo=zone, fold=1).astimezone(UTC).replace(microsecond=0)
    high = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    steps_low, steps_high = 0, int((high - low).total_seconds()) + 1
    while steps_high - steps_low > 1:
        middle = (steps_low + steps_high) // 2
        if _wall(low + timedelta(seconds=middle), zone) > wall:
            steps_high = middle
        else:
            steps_low = middle
    return low + timedelta(seconds=steps_high)


def _resolve_fixed(wall: datetime, zone: ZoneInfo, on_gap: str, on_fold: str) -> list[Instant]:
    """The fixed-time rule: a gap shifts (or skips), a fold picks first/second/both."""
    found = _occurrences(wall, zone)
    if not found:
        return [] if on_gap == "skip" else [_instant(_gap_end(wall, zone), zone, "shifted")]
    if len(found) == 1:
        return [_instant(found[0], zone, None)]
    chosen = {"first": found[:1], "second": found[1:], "both": found}[on_fold]
    return [_instant(moment, zone, "fold") for moment in chosen]


def _resolve_real(wall: datetime, zone: ZoneInfo) -> list[Instant]:
    """The real-time rule: nothing in a gap, every occurrence in a fold."""
    found = _occurrences(wall, zone)
    flag: DstFlag | None = "fold" if len(found) > 1 else None
    return [_instant(moment, zone, flag) for moment in found]


def _cron_walls(expression: str, start: datetime) -> Iterator[datetime]:
    """Naive wall times matching `expression`, strictly after `start`."""
    walls = croniter(expression, start)
    while True:
        try:
            yield walls.get_next(datetime)
        except (CroniterBadDateError, OverflowError, ValueError):
            return


def _stepped(origin: datetime, step: timedelta, first: int) -> Iterator[datetime]:
    """origin + k*step for k = first, first+1, ... until the datetime range ends."""
    index = first
    while True:
        try:
            yield origin + index * step
        except OverflowError:
            return
        index += 1


def _in_order(
    batches: Iterable[tuple[datetime, list[Instant]]], zone: ZoneInfo, after: datetime
) -> Iterator[Instant]:
    """Merge per-wall-time instants into one increasing stream strictly after `after`.

    Walls arrive in increasing order; an instant from a later wall is never earlier than the
    current wall's instant minus the longest fold, so anything before that bound is final.
    """
    heap: list[tuple[datetime, int, int, Instant]] = []
    last: datetime | None = None
    for seq, (wall, instants) in enumerate(batches):
        for item in instants:
            if item.time > after:
                heapq.heappush(heap, (item.time, item.dst is not None, seq, item))
        bound = wall.replace(tzinfo=zone).astimezone(UTC) - _MAX_FOLD
        while heap and heap[0][0] < bound:
            item = heapq.heappop(heap)[3]
            if item.time != last:
                last = item.time
                yield item
    for _, _, _, item in sorted(heap):
        if item.time != last:
            last = item.time
            yield item


def _check_window(
    after: datetime, count: int | None, until: datetime | None
) -> tuple[datetime, datetime | None]:
    if after.tzinfo is None or (until is not None and until.tzinfo is None):
        raise ValueError("after and until must be timezone-aware datetimes")
    if count is None and until is None:
        raise ValueError("give count, until, or both")
    if count is not None and count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    return after.astimezone(UTC), until.astimezone(UTC) if until is not None else None


def _take(
    stream: Iterator[Instant], after: datetime, count: int | None, limit: datetime | None
) -> list[Instant]:
    taken: list[Instant] = []
    while count is None or len(taken) < count:
        item = next(stream, None)
        if item is None or (limit is not None and item.time > limit):
            break
        if item.time > after:
            taken.append(item)
    return taken
