"""What must hold at the end of every system scenario, whatever was done to the cluster
(DESIGN.md §2-§6), as pure functions over plain data: the runs as the database has them (`Run`,
and when each attempt ended) and the launches as the flow processes recorded them (`Marker`).

Each check returns the problems it found, one line each; an empty list means it held. They take
their data as arguments, so tests/system/test_invariants.py tries each on hand-made data, and
the harness (tests/system/workload.py) only has to gather it. `check` runs them all:

- one run per slot: every slot of every schedule in the window has exactly one run;
- one launch per attempt: no attempt of a run was launched twice (fencing), none the database
  does not know was launched at all, and every COMPLETED run was launched;
- ended within budget: every due run reached a terminal state, within its budget (its flow,
  a lease and a reaper pass per attempt, plus the scenario's outages);
- limits respected: at no instant did more launches run than a queue's or a tag's limit, from
  the markers' own intervals;
- true times recorded: the start and end the database has are the process's own;
- nothing left running: no run is left PENDING, RUNNING or CANCELLING, no process still going.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

TERMINAL = frozenset({"COMPLETED", "FAILED", "CRASHED", "CANCELLED", "SKIPPED"})
HELD = frozenset({"PENDING", "RUNNING", "CANCELLING"})  # states that hold a claim
Slot = tuple[str, str]  # (deployment, schedule slug)
Attempt = tuple[str, int]  # (run id, attempt number)
ALIVE_WITHIN = timedelta(seconds=1)  # a flow stamps its marker more often than this
TIME_TOLERANCE = timedelta(seconds=5)  # recorded times against the processes' own (a first run
# waits for its agent's fork server to start; on a busy machine that takes seconds)


@dataclass(frozen=True)
class Run:
    """A flow run as the database has it once the scenario has drained."""

    id: str
    deployment: str
    slug: str | None  # its schedule's slug; None for a manual run
    nominal_time: datetime
    state: str
    attempt: int
    ended: datetime | None  # when the server recorded its terminal state (None: not ended)
    start_time: datetime | None = None  # its last attempt's start and end, as recorded
    end_time: datetime | None = None


@dataclass(frozen=True)
class Marker:
    """One launch of one attempt of a run, as its own process recorded it."""

    run_id: str
    attempt: int
    deployment: str
    agent: str
    pid: int
    start: datetime
    alive: datetime  # the last time the process said it was still going
    end: datetime | None  # None: it died (or was killed) before it finished


@dataclass(frozen=True)
class Span:
    """A launch as an interval, with the concurrency limits (groups) it counts against."""

    label: str
    groups: frozenset[str]
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Budget:
    """How long after its nominal time a run may reach its terminal state: `fixed` (the
    scenario's outages, pick-up slack) plus `per_attempt` (the flow's duration, and a lease
    and a grace period for a crash to be noticed) for each attempt it took."""

    fixed: timedelta
    per_attempt: timedelta

    def deadline(self, run: Run) -> datetime:
        return run.nominal_time + self.fixed + run.attempt * self.per_attempt


def slot_problems(expected: Mapping[Slot, Sequence[datetime]], runs: Iterable[Run]) -> list[str]:
    """Every slot the schedules have in the window has exactly one run, and no run of those
    schedules sits on a time they do not have."""
    counts = Counter((r.deployment, r.slug, r.nominal_time) for r in runs if r.slug is not None)
    wanted = {(deployment, slug, time) for (deployment, slug), times in expected.items()
              for time in times}
    problems = [f"{d} [{s}] slot {t.isoformat()}: {counts[(d, s, t)]} runs, not 1"
                for d, s, t in sorted(wanted) if counts[(d, s, t)] != 1]
    problems += [f"{d} [{s}] run at {t.isoformat()}, not a slot of its schedule"
                 for d, s, t in sorted(counts) if (d, s) in expected and (d, s, t) not in wanted]
    return problems


def launch_problems(markers: Iterable[Marker], runs: Iterable[Run]) -> list[str]:
    """No attempt of a run was launched twice; no launch is of an attempt the database does
    not know; every run that COMPLETED was launched in its last attempt."""
    launches = Counter((m.run_id, m.attempt) for m in markers)
    known = {run.id: run for run in runs}
    problems = [f"run {run_id} attempt {attempt}: launched {count} times"
                for (run_id, attempt), count in sorted(launches.items()) if count > 1]
    problems += [f"run {run_id} attempt {attempt}: launched, but the database has no such "
                 f"attempt" for run_id, attempt in sorted(launches)
                 if run_id not in known or attempt > known[run_id].attempt]
    problems += [f"run {run.id} COMPLETED in attempt {run.attempt} without a launch of it"
                 for run in known.values()
                 if run.state == "COMPLETED" and not launches[(run.id, run.attempt)]]
    return problems


def overdue_problems(runs: Iterable[Run], budget: Budget, due_by: datetime) -> list[str]:
    """Every run due by `due_by` reached a terminal state, within its budget."""
    problems = []
    for run in sorted(runs, key=lambda r: (r.nominal_time, r.id)):
        if run.nominal_time > due_by:
            continue
        if run.state not in TERMINAL or run.ended is None:
            problems.append(f"run {run.id} ({run.deployment} {run.nominal_time.isoformat()}) "
                            f"is still {run.state}")
        elif run.ended > budget.deadline(run):
            late = run.ended - budget.deadline(run)
            problems.append(f"run {run.id} ({run.deployment} {run.nominal_time.isoformat()}) "
                            f"ended {run.state} {late.total_seconds():.1f} s past its budget "
                            f"after {run.attempt} attempt(s)")
    return problems


def spans(markers: Iterable[Marker], groups: Mapping[str, frozenset[str]],
          attempt_ends: Mapping[Attempt, datetime]) -> list[Span]:
    """The launches as intervals, each counting against its deployment's `groups`.

    A launch that finished spans to its end. One that died first spans to the later of its
    last sign of life and the moment the server recorded that attempt's end: a process killed
    with its agent, or by hand, is dead by then, and the slot it held was only freed then. A
    process that outlived that moment (its agent cut off, its run given to another agent)
    shows as alive after it, and spans to its last sign of life.
    """
    found = []
    for m in markers:
        end = m.end or max(m.alive, attempt_ends.get((m.run_id, m.attempt), m.alive))
        found.append(Span(f"{m.run_id}#{m.attempt}", groups.get(m.deployment, frozenset()),
                          m.start, end))
    return found


def limit_problems(launched: Iterable[Span], limits: Mapping[str, int]) -> list[str]:
    """At no moment did more launches of a group run at once than the group's limit."""
    launched = list(launched)
    problems = []
    for group, limit in sorted(limits.items()):
        peak, moment = _peak((s.start, s.end) for s in launched if group in s.groups)
        if peak > limit:
            problems.append(f"{group}: {peak} launches at once at {moment.isoformat()}, "
                            f"limit {limit}")
    return problems


def _peak(intervals: Iterable[tuple[datetime, datetime]]) -> tuple[int, datetime]:
    """The most intervals open at one instant, and the first instant it happened. An interval
    ending where another starts does not overlap it (ends sort before starts)."""
    edges = sorted(edge for start, end in intervals for edge in ((start, 1), (end, -1)))
    open_now, peak, moment = 0, 0, datetime.min
    for at, step in edges:
        open_now += step
        if open_now > peak:
            peak, moment = open_now, at
    return peak, moment


def time_problems(runs: Iterable[Run], markers: Iterable[Marker], tolerance: timedelta
                  ) -> list[str]:
    """The start and end the database recorded for each COMPLETED run are when the process of
    its last attempt really started and ended, within `tolerance` (RUNNING is reported just
    before the launch; an exit is noticed a moment after it)."""
    finished = {(m.run_id, m.attempt): (m.start, m.end) for m in markers if m.end is not None}
    problems = []
    for run in runs:
        true = finished.get((run.id, run.attempt))
        if run.state != "COMPLETED" or true is None:
            continue
        for what, recorded, happened in zip(("start", "end"), (run.start_time, run.end_time),
                                            true, strict=True):
            if recorded is None or happened is None or abs(recorded - happened) > tolerance:
                off = (f"{(recorded - happened).total_seconds():+.1f} s off"
                       if recorded and happened else "missing, unlike")
                problems.append(f"run {run.id} ({run.deployment}): recorded {what} {off} "
                                f"the process's")
    return problems


def leftover_problems(runs: Iterable[Run], markers: Iterable[Marker], now: datetime,
                      alive_within: timedelta) -> list[str]:
    """Once drained, no run still holds a claim and no launch is still going: a process whose
    last sign of life is younger than `alive_within` and that has not finished."""
    problems = [f"run {run.id} ({run.deployment} {run.nominal_time.isoformat()}) left "
                f"{run.state}" for run in runs if run.state in HELD]
    problems += [f"run {m.run_id} attempt {m.attempt}: process {m.pid} still running"
                 for m in markers if m.end is None and m.alive >= now - alive_within]
    return problems


@dataclass(frozen=True)
class Observed:
    """Everything the checks read, gathered once the scenario has drained (at `at`)."""

    runs: list[Run]
    attempt_ends: dict[Attempt, datetime]  # when the server recorded each attempt's end
    markers: list[Marker]
    at: datetime


@dataclass(frozen=True)
class Expected:
    """What the scenario set up: its schedules' slots in the window (which ends at `due_by`),
    its runs' budget, and its limits (group: limit) with the groups of each deployment."""

    slots: dict[Slot, list[datetime]]
    due_by: datetime
    budget: Budget
    limits: dict[str, int]
    groups: dict[str, frozenset[str]]


def check(observed: Observed, expected: Expected) -> dict[str, list[str]]:
    """Every invariant, by name, with the problems found (none: it held)."""
    launched = spans(observed.markers, expected.groups, observed.attempt_ends)
    return {
        "one run per slot": slot_problems(expected.slots, observed.runs),
        "one launch per attempt": launch_problems(observed.markers, observed.runs),
        "ended within budget": overdue_problems(observed.runs, expected.budget,
                                                expected.due_by),
        "limits respected": limit_problems(launched, expected.limits),
        "true times recorded": time_problems(observed.runs, observed.markers, TIME_TOLERANCE),
        "nothing left running": leftover_problems(observed.runs, observed.markers, observed.at,
                                                  ALIVE_WITHIN),
    }
