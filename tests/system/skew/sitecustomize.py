"""A skewed wall clock for one process tree, for the clock-skew scenario (tests/system/faults.py
`skewed_clock`): a Python process started with this folder on PYTHONPATH and
OSTINATO_TEST_CLOCK_SKEW=SECONDS in its environment reads a wall clock SECONDS off —
`time.time()`, `time.time_ns()`, `datetime.now()`, `datetime.utcnow()` and `datetime.today()`.
Its children inherit both variables, so an agent's fork server and flow runs are off by as much,
as on a host whose clock is wrong. CLOCK_MONOTONIC (`time.monotonic()`, and the timeouts of
sleeps, waits and locks) is left alone.

Python imports `sitecustomize` at start-up, before any module of ours, so every module that
does `from datetime import datetime` gets the skewed class. Only Python code reading the clock
through those names is skewed; C code reading it itself (OpenSSL checking a certificate's dates)
is not, and an agent relies on none for the time of day.

Why not libfaketime (Debian's `faketime`): its 0.9.10 breaks `time.sleep()` on Python 3.11 as
soon as the monotonic clock is excluded (EINVAL from clock_nanosleep with TIMER_ABSTIME,
wolfcw/libfaketime#426), and faking the monotonic clock as well hangs threading waits.
"""

from __future__ import annotations

import datetime as _datetime
import os
import time as _time
from datetime import timedelta, tzinfo

SKEW = float(os.environ.get("OSTINATO_TEST_CLOCK_SKEW") or 0)


class SkewedDatetime(_datetime.datetime):
    """`datetime` whose idea of now is SKEW seconds off."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> SkewedDatetime:
        return super().now(tz) + timedelta(seconds=SKEW)

    @classmethod
    def utcnow(cls) -> SkewedDatetime:
        return super().utcnow() + timedelta(seconds=SKEW)

    @classmethod
    def today(cls) -> SkewedDatetime:
        return cls.now()


def _skew() -> None:
    real_time, real_time_ns = _time.time, _time.time_ns
    _time.time = lambda: real_time() + SKEW
    _time.time_ns = lambda: real_time_ns() + round(SKEW * 1e9)
    _datetime.datetime = SkewedDatetime  # type: ignore[misc]


if SKEW:
    _skew()
