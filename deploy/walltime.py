"""Wall-clock times and UTC instants in an IANA zone: gaps, folds, and streams of instants.

A schedule names wall times (naive datetimes read in its zone); the scheduler needs UTC instants in
time order. Nearly every wall time occurs exactly once and becomes an instant by subtracting its
offset. The few that fall in a spring-forward gap (none) or a fall-back fold (two) are resolved by
the schedule's DST rule, and their instants may come out of wall order, so `in_time_order` holds
them back until a wall time that occurs once proves nothing earlier can follow.

The shortcut relies on a property of the tz database, checked over every zone from 1900 to 2100:
a zone's UTC offset never changes twice within 95 hours, and never by more than 24 hours. So if a
wall time has the same offset a day before and a day after, it is more than a day from any change
and occurs exactly once (`settled_offset`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

MAX_FOLD = timedelta(hours=3)
"""The longest fold honoured: wall times this far before `after` may still come back after it."""

_DAY = timedelta(days=1)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_UTC_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

DstFlag = Literal["shifted", "fold"]


@dataclass(frozen=True)
class Instant:
    """One nominal fire time: `time` in UTC, `local_time` in the schedule's zone, DST flag."""

    time: datetime
    local_time: datetime
    dst: DstFlag | None = None


Resolver = Callable[[datetime], list[Instant]]
"""The instants of one wall time under a DST rule (see `resolve_fixed`, `resolve_real`)."""

_Waiting = tuple[datetime, bool, int, Instant]


def wall(moment: datetime, zone: ZoneInfo) -> datetime:
    """The naive wall time of an aware `moment` in `zone`."""
    return moment.astimezone(zone).replace(tzinfo=None)


def to_utc(moment: datetime, zone: ZoneInfo) -> datetime:
    """An aware moment in UTC; a naive one is a wall time in `zone` (gap: shift, fold: first)."""
    if moment.tzinfo is not None:
        return moment.astimezone(UTC)
    offset = single_offset(moment, zone)
    if offset is None:
        return resolve_fixed(moment, zone, "shift", "first")[0].time
    return _UTC_EPOCH + (moment - _NAIVE_EPOCH - offset)


def _instant(moment: datetime, zone: ZoneInfo, dst: DstFlag | None) -> Instant:
    utc = moment.astimezone(UTC)
    return Instant(time=utc, local_time=utc.astimezone(zone), dst=dst)


def occurrences(wall_time: datetime, zone: ZoneInfo) -> list[datetime]:
    """The UTC instants whose local wall time is `wall_time`: none (gap), one, or two (fold)."""
    found: set[datetime] = set()
    for fold in (0, 1):
        moment = wall_time.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        if wall(moment, zone) == wall_time:
            found.add(moment)
    return sorted(found)


def _gap_end(wall_time: datetime, zone: ZoneInfo) -> datetime:
    """The first instant after the gap that swallows `wall_time` (binary search on seconds)."""
    low = wall_time.replace(tzinfo=zone, fold=1).astimezone(UTC).replace(microsecond=0)
    high = wall_time.replace(tzinfo=zone, fold=0).astimezone(UTC)
    steps_low, steps_high = 0, int((high - low).total_seconds()) + 1
    while steps_high - steps_low > 1:
        middle = (steps_low + steps_high) // 2
        if wall(low + timedelta(seconds=middle), zone) > wall_time:
            steps_high = middle
        else:
            steps_low = middle
    return low + timedelta(seconds=steps_high)


def resolve_fixed(wall_time: datetime, zone: ZoneInfo, on_gap: str, on_fold: str) -> list[Instant]:
    """The fixed-time rule: a gap shifts (or skips), a fold picks first/second/both."""
    found = occurrences(wall_time, zone)
    if not found:
        if on_gap == "skip":
            return []
        return [_instant(_gap_end(wall_time, zone), zone, "shifted")]
    if len(found) == 1:
        return [_instant(found[0], zone, None)]
    chosen = {"first": found[:1], "second": found[1:], "both": found}[on_fold]
    return [_instant(moment, zone, "fold") for moment in chosen]


def resolve_real(wall_time: datetime, zone: ZoneInfo) -> list[Instant]:
    """The real-time rule: nothing in a gap, every occurrence in a fold."""
    found = occurrences(wall_time, zone)
    flag: DstFlag | None = "fold" if len(found) > 1 else None
    return [_instant(moment, zone, flag) for moment in found]


def settled_offset(wall_time: datetime, zone: ZoneInfo) -> timedelta | None:
    """The offset of `wall_time` if it is more than a day from any change of offset, else None.

    Two lookups instead of the round trips of `occurrences`: the cheap test that clears nearly
    every wall time (the module docstring says why it is enough). `wall_time` may be aware; only
    its fields count.
    """
    try:
        before = zone.utcoffset(wall_time - _DAY)
        return before if before == zone.utcoffset(wall_time + _DAY) else None
    except OverflowError:  # within a day of year 1 or 9999: let the exact path decide
        return None


def single_offset(wall_time: datetime, zone: ZoneInfo) -> timedelta | None:
    """The offset of `wall_time` if it occurs exactly once, None in a gap or a fold.

    Near a change of offset, zoneinfo reads a wall time in a gap or a fold with the offset before
    the change when `fold=0` and the one after when `fold=1`; elsewhere `fold` makes no difference.
    """
    settled = settled_offset(wall_time, zone)
    if settled is not None:
        return settled
    offset = zone.utcoffset(wall_time.replace(fold=0))
    return offset if offset == zone.utcoffset(wall_time.replace(fold=1)) else None


def ambiguous(local: datetime, zone: ZoneInfo) -> bool:
    """Whether the wall time of the aware `local` occurs twice: it is real, so not in a gap."""
    return single_offset(local, zone) is None


def first_wall(after: datetime, zone: ZoneInfo) -> datetime:
    """The wall time to read a schedule's wall times from, so every instant after `after` is found.

    Earlier wall times only occur before `after` when its own wall time occurs once; when it lies
    in a fold, a fold's length of earlier ones come round again after it.
    """
    start = wall(after, zone)
    return start if single_offset(start, zone) is not None else start - MAX_FOLD


def in_time_order(
    walls: Iterable[datetime], zone: ZoneInfo, after: datetime, resolve: Resolver
) -> Iterator[Instant]:
    """The instants of increasing wall times, in time order, strictly after `after`.

    A wall time that occurs once becomes one unflagged instant, and no instant of an earlier wall
    time comes after it, nor one of a later wall time before it; so it releases the instants that
    wait, those of wall times in a gap or a fold, which `resolve` turns into 0-2 instants each.
    Of equal instants the unflagged one wins, then the one of the earlier wall time.
    """
    local_epoch = datetime(1970, 1, 1, tzinfo=zone)
    waiting: list[_Waiting] = []
    for seq, wall_time in enumerate(walls):
        offset = single_offset(wall_time, zone)
        if offset is None:
            instants = resolve(wall_time)
            waiting += [(i.time, i.dst is not None, seq, i) for i in instants if i.time > after]
            continue
        since_epoch = wall_time - _NAIVE_EPOCH
        moment = _UTC_EPOCH + since_epoch - offset
        if waiting:
            yield from _release(waiting, moment)
        if moment > after:
            yield Instant(moment, local_epoch + since_epoch)
    yield from _release(waiting, None)


def _release(waiting: list[_Waiting], before: datetime | None) -> Iterator[Instant]:
    """The waiting instants earlier than `before` (all if None), in order, once per time."""
    ready, last = sorted(waiting), None
    waiting.clear()
    for moment, _, _, item in ready:
        if moment != last and (before is None or moment < before):
            last = moment
            yield item
