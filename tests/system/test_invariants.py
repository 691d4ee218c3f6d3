"""The invariants of tests/system/invariants.py on hand-made data: each holds on a history that
keeps it and finds the problem in one that breaks it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tests.system.invariants import (
    Budget,
    Expected,
    Marker,
    Observed,
    Run,
    Span,
    check,
    launch_problems,
    leftover_problems,
    limit_problems,
    overdue_problems,
    slot_problems,
    spans,
    time_problems,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)
SLOTS = {("f/d", "every"): [T0, T0 + timedelta(seconds=2)]}
BUDGET = Budget(fixed=timedelta(seconds=5), per_attempt=timedelta(seconds=10))


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def run(id: str = "r1", nominal: float = 0, state: str = "COMPLETED", attempt: int = 1,
        ended: float | None = 3, started: float | None = 1) -> Run:
    return Run(id, "f/d", "every", at(nominal), state, attempt,
               at(ended) if ended is not None else None,
               at(started) if started is not None else None,
               at(ended) if ended is not None else None)


def marker(run_id: str = "r1", attempt: int = 1, pid: int = 100, start: float = 1,
           end: float | None = 3, alive: float | None = None) -> Marker:
    last = alive if alive is not None else (end if end is not None else start)
    return Marker(run_id, attempt, "f/d", "agent-0", pid, at(start), at(last),
                  at(end) if end is not None else None)


def span(start: float, end: float, *groups: str) -> Span:
    return Span(f"{start}-{end}", frozenset(groups), at(start), at(end))


def test_one_run_per_slot_holds_when_every_slot_has_one() -> None:
    assert slot_problems(SLOTS, [run("a", 0), run("b", 2)]) == []


def test_one_run_per_slot_finds_missing_doubled_and_stray_runs() -> None:
    found = slot_problems(SLOTS, [run("a", 0), run("b", 0), run("c", 3)])
    assert len(found) == 3
    assert "slot 2030-01-01T00:00:00+00:00: 2 runs" in found[0]
    assert "slot 2030-01-01T00:00:02+00:00: 0 runs" in found[1]
    assert "not a slot of its schedule" in found[2]


def test_one_launch_per_attempt_holds_across_retries() -> None:
    markers = [marker(attempt=1, end=None, pid=100), marker(attempt=2, pid=200)]
    assert launch_problems(markers, [run(attempt=2)]) == []


def test_one_launch_per_attempt_finds_a_double_launch_and_an_unlaunched_completion() -> None:
    markers = [marker(pid=100), marker(pid=200), marker("r2", attempt=3)]
    found = launch_problems(markers, [run("r1"), run("r2"), run("r3")])
    assert found == ["run r1 attempt 1: launched 2 times",
                     "run r2 attempt 3: launched, but the database has no such attempt",
                     "run r2 COMPLETED in attempt 1 without a launch of it",
                     "run r3 COMPLETED in attempt 1 without a launch of it"]


def test_ended_within_budget_holds_for_a_retried_run_within_two_attempts() -> None:
    assert overdue_problems([run(attempt=2, ended=24)], BUDGET, due_by=at(10)) == []


def test_ended_within_budget_finds_late_and_unfinished_runs() -> None:
    runs = [run("late", ended=16), run("stuck", state="RUNNING", ended=None),
            run("later", nominal=11, state="SCHEDULED", ended=None)]  # not due: not checked
    found = overdue_problems(runs, BUDGET, due_by=at(10))
    assert len(found) == 2
    assert "late" in found[0] and "1.0 s past its budget" in found[0]
    assert "stuck" in found[1] and "still RUNNING" in found[1]


def test_limits_hold_when_launches_only_touch() -> None:
    launched = [span(0, 2, "tag:x"), span(2, 4, "tag:x"), span(1, 3, "tag:y")]
    assert limit_problems(launched, {"tag:x": 1}) == []


def test_limits_find_the_first_moment_one_is_exceeded() -> None:
    launched = [span(0, 3, "tag:x"), span(1, 4, "tag:x"), span(2, 5, "tag:x")]
    assert limit_problems(launched, {"tag:x": 2}) == [
        "tag:x: 3 launches at once at 2030-01-01T00:00:02+00:00, limit 2"]


def test_a_killed_launch_spans_to_when_its_slot_was_freed_or_its_last_sign_of_life() -> None:
    groups = {"f/d": frozenset({"tag:x"})}
    killed = marker("r1", end=None, alive=2)  # its attempt's end was recorded at 5
    outlived = marker("r2", end=None, alive=9)  # cut off: its attempt was ended at 5, it ran on
    found = spans([killed, outlived], groups, {("r1", 1): at(5), ("r2", 1): at(5)})
    assert [(s.end, s.groups) for s in found] == [(at(5), groups["f/d"]),
                                                  (at(9), groups["f/d"])]


def test_true_times_hold_within_the_tolerance() -> None:
    assert time_problems([run(started=1.5, ended=3.2)], [marker(start=1, end=3)],
                         timedelta(seconds=1)) == []


def test_true_times_find_a_run_recorded_early() -> None:
    found = time_problems([run(started=-29, ended=-27)], [marker(start=1, end=3)],
                          timedelta(seconds=1))
    assert found == ["run r1 (f/d): recorded start -30.0 s off the process's",
                     "run r1 (f/d): recorded end -30.0 s off the process's"]


def test_nothing_left_running_holds_once_runs_ended_and_processes_died() -> None:
    assert leftover_problems([run()], [marker(end=None, alive=5)], now=at(10),
                             alive_within=timedelta(seconds=1)) == []


def test_nothing_left_running_finds_a_held_claim_and_a_live_process() -> None:
    found = leftover_problems([run(state="PENDING", ended=None)],
                              [marker(end=None, alive=9.5)], now=at(10),
                              alive_within=timedelta(seconds=1))
    assert found == ["run r1 (f/d 2030-01-01T00:00:00+00:00) left PENDING",
                     "run r1 attempt 1: process 100 still running"]


def test_check_names_every_invariant_and_holds_on_a_clean_history() -> None:
    observed = Observed([run("a", 0), run("b", 2, started=3, ended=4)],
                        {("a", 1): at(3), ("b", 1): at(4)},
                        [marker("a"), marker("b", start=3, end=4)], at(20))
    expected = Expected(SLOTS, at(2), BUDGET, {"tag:x": 1}, {"f/d": frozenset({"tag:x"})})
    assert check(observed, expected) == dict.fromkeys(
        ["one run per slot", "one launch per attempt", "ended within budget",
         "limits respected", "true times recorded", "nothing left running"], [])
