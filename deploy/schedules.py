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

croniter's own timezone handling is not used: cron expressions are walked over naive wall-clock
times (`cronfields`), and each wall time is resolved with zoneinfo (`walltime`). Intervals that are
whole days, and RRules, name wall times too and follow the fixed-time rule with the defaults (shift,
first); shorter intervals are exact elapsed time from their anchor.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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

from ostinato.deploy.cronfields import check_cron, cron_walls, expand_cron
from ostinato.deploy.errors import InvalidInput
from ostinato.deploy.jsontypes import Parameters
from ostinato.deploy.walltime import (
    Instant,
    Resolver,
    ambiguous,
    first_wall,
    in_time_order,
    resolve_fixed,
    resolve_real,
    to_utc,
    wall,
)

__all__ = [
    "DEFAULT_ANCHOR",
    "SCHEDULE_ADAPTER",
    "Cron",
    "Instant",
    "Interval",
    "RRule",
    "Schedule",
    "ScheduleBase",
    "parse_schedule",
]

DEFAULT_ANCHOR = datetime(2020, 1, 1)
"""Midnight 2020-01-01, read in the schedule's timezone: the default phase of intervals/rrules."""

_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_KIND_TIMING_FIELDS = {"cron": {"cron", "on_gap", "on_fold"}, "interval": {"every", "anchor"},
                       "rrule": {"rrule"}}
MIN_INTERVAL = timedelta(seconds=1)
MAX_JITTER = timedelta(days=1)
_YEARS = range(1900, 9001)  # bounds and anchors; leaves room for date arithmetic either side


def within_supported_years(moment: datetime | None) -> datetime | None:
    """Refuse times far outside any schedule (they would overflow date arithmetic)."""
    if moment is not None and moment.year not in _YEARS:
        raise ValueError(f"{moment.isoformat()} is outside the years {_YEARS[0]}-{_YEARS[-1]}")
    return moment
_OFFSET_RE = re.compile(r"^\s*(?:UTC|GMT|Z)?\s*[+-]\s*\d", re.IGNORECASE)
_CALENDAR_DURATION_RE = re.compile(r"^P[^T]*[YM]", re.IGNORECASE)
_RRULE_PERIODS = {
    "SECONDLY": timedelta(seconds=1),
    "MINUTELY": timedelta(minutes=1),
    "HOURLY": timedelta(hours=1),
    "DAILY": timedelta(days=1),
    "WEEKLY": timedelta(weeks=1),
}


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

    timezone: Annotated[str, Field(max_length=100)] = "UTC"
    active: bool = True
    slug: str = ""  # empty: derived from the definition (see derived_slug)
    start: datetime | None = None
    end: datetime | None = None
    max_runs: int | None = Field(default=None, ge=1, le=1_000_000_000)
    jitter: timedelta = timedelta(0)
    parameters: Parameters = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _valid_timezone(cls, value: str) -> str:
        return _check_timezone(value)

    @field_validator("slug")
    @classmethod
    def _valid_slug(cls, value: str) -> str:
        if value and not _SLUG_RE.match(value):
            raise ValueError(
                f'invalid slug "{value}": use 1-63 lowercase letters, digits, "-" or "_", '
                "starting with a letter or digit"
            )
        return value

    @field_validator("start", "end")
    @classmethod
    def _valid_bound(cls, value: datetime | None) -> datetime | None:
        return within_supported_years(value)

    @field_validator("jitter")
    @classmethod
    def _valid_jitter(cls, value: timedelta) -> timedelta:
        if not timedelta(0) <= value <= MAX_JITTER:
            raise ValueError(f"jitter must be between 0 and 1 day, got {value}")
        return value

    @model_validator(mode="after")
    def _valid_bounds_and_slug(self) -> Self:
        start, end = self.aware(self.start), self.aware(self.end)
        if start is not None and end is not None and end <= start:
            raise ValueError(f"end ({self.end}) must be after start ({self.start})")
        if not self.slug:
            object.__setattr__(self, "slug", self.derived_slug())
        return self

    @property
    def kind_name(self) -> str:
        return str(getattr(self, "kind", "schedule"))

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def derived_slug(self) -> str:
        """`{kind}-{8 hex}`: a hash of what decides *when* the schedule fires.

        The slug is part of a run's identity, so it must survive edits of everything else
        (bounds, countdown, jitter, parameters): a slot that already ran is never run again.
        """
        data = self.model_dump(mode="json", include=self._timing_fields())
        digest = hashlib.sha256(_canonical_json(data).encode()).hexdigest()
        return f"{self.kind_name}-{digest[:8]}"

    def _timing_fields(self) -> set[str]:
        return {"kind", "timezone"} | _KIND_TIMING_FIELDS.get(self.kind_name, set())

    def aware(self, moment: datetime | None) -> datetime | None:
        """`moment` as an aware UTC datetime; a naive one is a wall time in this zone."""
        return None if moment is None else to_utc(moment, self.zone)

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
        return _take(self._stream(lower), count, limit)

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
        """Every instant strictly after `after`, in time order, lazily: callers take a few."""
        raise NotImplementedError


class Cron(ScheduleBase):
    """A 5-field cron expression (or @daily & co.), read in the schedule's timezone."""

    kind: Literal["cron"] = "cron"
    cron: Annotated[str, Field(max_length=1000)]
    on_gap: Literal["shift", "skip"] = "shift"
    on_fold: Literal["first", "second", "both"] = "first"

    def __init__(self, cron: str | None = None, /, **data: Any) -> None:
        if cron is not None:
            data["cron"] = cron
        super().__init__(**data)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        return check_cron(value)

    @property
    def expression(self) -> str:
        """The 5-field expression, aliases expanded."""
        return expand_cron(self.cron)

    @property
    def fixed_time(self) -> bool:
        """True when neither minute nor hour contains `*`: the entry names wall-clock times."""
        minute, hour = self.expression.split(" ")[:2]
        return "*" not in minute and "*" not in hour

    def _stream(self, after: datetime) -> Iterator[Instant]:
        zone = self.zone
        walls = cron_walls(self.expression, first_wall(after, zone))
        return in_time_order(walls, zone, after, self._resolver(zone))

    def _resolver(self, zone: ZoneInfo) -> Resolver:
        """How a wall time in a gap or a fold runs: the DST rule of the module docstring."""
        if self.fixed_time:
            return functools.partial(
                resolve_fixed, zone=zone, on_gap=self.on_gap, on_fold=self.on_fold
            )
        return functools.partial(resolve_real, zone=zone)


class Interval(ScheduleBase):
    """Every `every` from `anchor`; whole days keep the wall-clock time, shorter ones are exact."""

    kind: Literal["interval"] = "interval"
    every: timedelta
    anchor: datetime | None = None

    def __init__(self, every: timedelta | float | str | None = None, /, **data: Any) -> None:
        if every is not None:
            data["every"] = every
        super().__init__(**data)

    @field_validator("anchor")
    @classmethod
    def _valid_anchor(cls, value: datetime | None) -> datetime | None:
        return within_supported_years(value)

    @field_validator("every", mode="before")
    @classmethod
    def _no_calendar_units(cls, value: object) -> object:
        if isinstance(value, str) and _CALENDAR_DURATION_RE.match(value.strip()):
            raise ValueError(f'interval "{value}" uses months or years; give days, e.g. "P30D"')
        return value

    @field_validator("every")
    @classmethod
    def _valid_every(cls, value: timedelta) -> timedelta:
        if value < MIN_INTERVAL:
            seconds = value.total_seconds()
            raise ValueError(f"interval must be at least 1 second, got {seconds:g} s")
        return value

    @property
    def whole_days(self) -> bool:
        return self.every % timedelta(days=1) == timedelta(0)

    @property
    def anchor_wall(self) -> datetime:
        """The anchor as a naive wall time in the schedule's zone."""
        anchor = self.anchor or DEFAULT_ANCHOR
        return anchor if anchor.tzinfo is None else wall(anchor, self.zone)

    def _stream(self, after: datetime) -> Iterator[Instant]:
        if self.whole_days:
            return self._wall_steps(after)
        return self._exact_steps(after)

    def _wall_steps(self, after: datetime) -> Iterator[Instant]:
        zone, anchor = self.zone, self.anchor_wall
        first = (wall(after, zone) - anchor) // self.every - 1
        walls = _stepped(anchor, self.every, first)
        return in_time_order(walls, zone, after, _fixed_defaults(zone))

    def _exact_steps(self, after: datetime) -> Iterator[Instant]:
        zone = self.zone
        anchor = to_utc(self.anchor or DEFAULT_ANCHOR, zone)
        first = (after - anchor) // self.every + 1
        for moment in _stepped(anchor, self.every, first):
            local = moment.astimezone(zone)
            yield Instant(moment, local, "fold" if ambiguous(local, zone) else None)


class RRule(ScheduleBase):
    """An RFC 5545 recurrence rule (dateutil); DTSTART defaults to 2020-01-01 00:00 local."""

    kind: Literal["rrule"] = "rrule"
    rrule: Annotated[str, Field(max_length=10_000)]

    def __init__(self, rrule: str | None = None, /, **data: Any) -> None:
        if rrule is not None:
            data["rrule"] = rrule
        super().__init__(**data)

    @field_validator("rrule")
    @classmethod
    def _valid_rrule(cls, value: str) -> str:
        return _check_rrule(value)

    def _stream(self, after: datetime) -> Iterator[Instant]:
        zone = self.zone
        start = first_wall(after, zone)
        walls = _fast_forward(_parse_rrule(self.rrule), start).xafter(start, inc=False)
        return in_time_order(walls, zone, after, _fixed_defaults(zone))


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


def _take(stream: Iterator[Instant], count: int | None, limit: datetime | None) -> list[Instant]:
    if limit is not None:
        stream = itertools.takewhile(lambda item: item.time <= limit, stream)
    return list(itertools.islice(stream, count))


def _fixed_defaults(zone: ZoneInfo) -> Resolver:
    """The fixed-time rule with its defaults, for intervals of whole days and rrules."""
    return functools.partial(resolve_fixed, zone=zone, on_gap="shift", on_fold="first")


def _stepped(origin: datetime, step: timedelta, first: int) -> Iterator[datetime]:
    """origin + k*step for k = first, first+1, ... until the datetime range ends."""
    index = first
    while True:
        try:
            yield origin + index * step
        except OverflowError:
            return
        index += 1
