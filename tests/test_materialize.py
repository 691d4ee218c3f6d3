"""Materialisation: the pure plan (explicit times) and ticks against real databases."""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, update

from ostinato.deploy.schedules import Cron, Interval
from ostinato.deploy.schemas import DeploymentSpec, DeploymentUpdate
from ostinato.deploy.states import StateType
from ostinato.queues import bundles, deployments, runs
from ostinato.queues.catchup import skip_missed_runs
from ostinato.queues.database import Database
from ostinato.queues.tables import flow_run_states, flow_runs, schedules
from ostinato.scheduler.materialize import NEVER, Policy, plan, tick

NOW = datetime(2026, 11, 28, 10, 0, 30, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
BUNDLE = b"bundle"
BUNDLE_SHA = "65c99a6ab6ed6b21e6ea2d4a0ed3ed9e6b5d0a4c0ff4d0b0b7e0c1dc1ac0e9c9"


def _times(p: object) -> list[datetime]:
    return [r.instant.time for r in p.runs]  # type: ignore[attr-defined]


# --- the plan: pure, with explicit times ------------------------------------------------------


def test_a_new_minutely_schedule_covers_the_horizon_and_revisits_before_it_runs_short() -> None:
    p = plan(Cron("* * * * *"), last=None, now=NOW)
    times = _times(p)
    assert times[0] == datetime(2026, 11, 28, 10, 1, tzinfo=UTC)
    assert times[-1] >= NOW + timedelta(hours=1)
    assert len(times) <= Policy().max_runs
    assert p.scheduled_until == times[-1]
    assert NOW < p.visit_at <= times[-1] - timedelta(hours=1)


def test_a_daily_schedule_keeps_at_least_three_future_runs() -> None:
    p = plan(Cron("0 2 * * *"), last=None, now=NOW)
    assert len(p.runs) == 3
    assert p.visit_at == _times(p)[0]
    later = plan(Cron("0 2 * * *"), last=p.scheduled_until, now=p.visit_at + MINUTE)
    remaining_future = [t for t in _times(p) if t > p.visit_at + MINUTE]
    assert len(remaining_future) + len(later.runs) >= 3
    assert _times(later)[0] > _times(p)[-1]


def test_continuing_never_repeats_an_instant() -> None:
    first = plan(Cron("*/5 * * * *"), last=None, now=NOW)
    second = plan(Cron("*/5 * * * *"), last=first.scheduled_until, now=first.visit_at)
    assert not set(_times(first)) & set(_times(second))
    assert _times(second)[0] == _times(first)[-1] + 5 * MINUTE


def test_a_one_second_interval_is_capped_at_max_runs_and_revisited_mid_batch() -> None:
    p = plan(Interval(1), last=None, now=NOW)
    assert len(p.runs) == 100
    assert p.visit_at == _times(p)[50]


def test_the_cap_counts_runs_already_materialised() -> None:
    first = plan(Interval(1), last=None, now=NOW)
    second = plan(Interval(1), last=first.scheduled_until, now=first.visit_at)
    future_of_first = [t for t in _times(first) if t > first.visit_at]
    assert len(future_of_first) + len(second.runs) <= 100


@pytest.mark.parametrize(("catchup", "states"), [
    ("all", Counter({"SCHEDULED": 100})),
    ("latest", Counter({"SKIPPED": 99, "SCHEDULED": 1})),
    ("none", Counter({"SKIPPED": 100})),
])
def test_missed_slots_follow_the_catchup_policy(catchup: str, states: Counter[str]) -> None:
    p = plan(Cron("* * * * *"), last=NOW - timedelta(hours=2), now=NOW, catchup=catchup)
    cutoff = NOW - timedelta(minutes=5)
    missed = [r for r in p.runs if r.instant.time <= cutoff]
    assert Counter(r.state.value for r in missed) == states
    assert missed[-1].instant.time == datetime(2026, 11, 28, 9, 55, tzinfo=UTC)
    within_grace = [r for r in p.runs if r.instant.time > cutoff]
    assert all(r.state is StateType.SCHEDULED for r in within_grace)
    if catchup == "latest":
        assert missed[-1].state is StateType.SCHEDULED


def test_an_ended_schedule_is_never_visited_again() -> None:
    p = plan(Cron("* * * * *", end=NOW + 5 * MINUTE), last=None, now=NOW)
    assert len(p.runs) == 5
    assert p.visit_at == NEVER


def test_the_max_runs_countdown_stops_the_schedule() -> None:
    p = plan(Cron("* * * * *"), last=None, now=NOW, remaining=2)
    assert len(p.runs) == 2
    assert p.visit_at == NEVER


def test_jitter_is_deterministic_and_stays_before_the_next_slot() -> None:
    schedule = Cron("* * * * *", jitter=300)
    p1, p2 = plan(schedule, last=None, now=NOW), plan(schedule, last=None, now=NOW)
    assert [r.scheduled_time for r in p1.runs] == [r.scheduled_time for r in p2.runs]
    delays = [r.scheduled_time - r.instant.time for r in p1.runs]
    assert all(timedelta(0) <= d < MINUTE for d in delays)
    assert len(set(delays)) > 1


# --- ticks against real databases -------------------------------------------------------------


def _deploy(database: Database, name: str, *schedule_list: object, as_of: datetime = NOW,
            **fields: object) -> None:
    """Create a deployment as if at `as_of`: its schedules materialise from that time on."""
    data = name.encode()
    sha = hashlib.sha256(data).hexdigest()
    with database.write() as conn:
        bundles.put(conn, sha, data, max_bytes=1000)
        result = deployments.apply(conn, [DeploymentSpec(
            flow="f", name=name, entrypoint="f.py:f", bundle=sha, schedules=list(schedule_list),
            **fields)])
        conn.execute(update(schedules)
                     .where(schedules.c.deployment_id == result.deployments[0].id)
                     .values(scheduled_until=as_of, visit_at=as_of))


def _runs(database: Database, *columns: object) -> list[tuple[object, ...]]:
    with database.read() as conn:
        query = select(*columns).order_by(flow_runs.c.nominal_time)  # type: ignore[arg-type]
        return [tuple(row) for row in conn.execute(query)]


def test_tick_creates_runs_once_with_the_deployments_parameters_and_tags(database: Database
                                                                          ) -> None:
    _deploy(database, "d", Cron("*/10 * * * *", parameters={"x": 2}), parameters={"x": 1, "y": 1},
            tags=["etl"])
    first = tick(database, now=NOW)
    again = tick(database, now=NOW)
    rows = _runs(database, flow_runs.c.parameters, flow_runs.c.tags, flow_runs.c.auto_scheduled,
                 flow_runs.c.state)
    assert first.runs_created == len(rows) >= 3
    assert again.runs_created == 0 and again.schedules == 0
    assert all(r == ({"x": 2, "y": 1}, ["etl"], True, "SCHEDULED") for r in rows)
    with database.read() as conn:
        stored = conn.execute(select(func.count()).select_from(flow_run_states)).scalar_one()
        run_id = conn.execute(select(flow_runs.c.id).limit(1)).scalar_one()
        history = runs.state_history(conn, run_id)
    assert stored == 0  # a run's creation is read from its row, not stored twice
    assert [(e.type, e.actor) for e in history] == [(StateType.SCHEDULED, "scheduler")]


def test_ticks_after_the_visit_time_extend_without_duplicates(database: Database) -> None:
    _deploy(database, "d", Cron("* * * * *"))
    tick(database, now=NOW)
    with database.read() as conn:
        visit_at = conn.execute(select(schedules.c.visit_at)).scalar_one()
    later = tick(database, now=visit_at)
    times = [t for (t,) in _runs(database, flow_runs.c.nominal_time)]
    assert later.runs_created > 0
    assert len(times) == len(set(times))
    gaps = {b - a for a, b in zip(times, times[1:], strict=False)}
    assert times == sorted(times) and gaps == {MINUTE}


def test_a_scheduler_that_was_down_supersedes_missed_slots(database: Database) -> None:
    _deploy(database, "d", Cron("* * * * *"), as_of=NOW - timedelta(hours=3))
    tick(database, now=NOW - timedelta(hours=3))  # then the scheduler is down until NOW
    tick(database, now=NOW)
    rows = _runs(database, flow_runs.c.nominal_time, flow_runs.c.state, flow_runs.c.reason)
    missed = [(state, reason) for nominal, state, reason in rows
              if NOW - timedelta(hours=3) + timedelta(minutes=75) < nominal  # type: ignore[operator]
              <= NOW - timedelta(minutes=5)]
    assert missed[-1] == ("SCHEDULED", None)
    assert set(missed[:-1]) == {("SKIPPED", "superseded")}
    assert len(missed) == 100  # the newest max_runs missed slots are recorded


def test_concurrent_ticks_never_duplicate_a_slot(database: Database) -> None:
    for i in range(20):
        _deploy(database, f"d{i}", Cron("* * * * *"), Interval(7))
    errors: list[BaseException] = []

    def run() -> None:
        try:
            tick(database, now=NOW, policy=Policy(batch_size=7))
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    identities = _runs(database, flow_runs.c.deployment_id, flow_runs.c.schedule_slug,
                       flow_runs.c.nominal_time)
    assert not errors
    assert len(identities) == len(set(identities)) > 20 * 100


def test_an_edit_replaces_untouched_future_runs_and_the_next_tick_uses_the_new_definition(
        database: Database) -> None:
    _deploy(database, "d", Cron("0 * * * *"), as_of=datetime.now(UTC))
    tick(database, now=datetime.now(UTC))
    with database.write() as conn:
        deployments.edit(conn, "f/d", DeploymentUpdate(schedules=[Cron("30 * * * *")]))
    assert _runs(database, flow_runs.c.id) == []
    tick(database, now=datetime.now(UTC))
    minutes = {t.minute for (t,) in _runs(database, flow_runs.c.nominal_time)}
    assert minutes == {30}


def test_catch_up_skips_waiting_runs_that_missed_their_time(database: Database) -> None:
    _deploy(database, "latest", Cron("* * * * *"), catchup="latest")
    _deploy(database, "none", Cron("* * * * *"), catchup="none")
    _deploy(database, "all", Cron("* * * * *"), catchup="all")
    tick(database, now=NOW)
    skipped = 0
    with database.write() as conn:
        skipped = len(skip_missed_runs(conn, NOW + timedelta(minutes=20)))
    rows = _runs(database, flow_runs.c.deployment_name, flow_runs.c.state, flow_runs.c.reason,
                 flow_runs.c.nominal_time)
    missed_by = NOW + timedelta(minutes=15)  # 20 min later, minus the 5 min grace
    by_name: dict[str, Counter[tuple[object, object]]] = {}
    for name, state, reason, nominal in rows:
        if nominal < missed_by:  # type: ignore[operator]
            by_name.setdefault(str(name), Counter())[(state, reason)] += 1
    assert by_name["f/all"] == Counter({("SCHEDULED", None): 15})
    assert by_name["f/latest"] == Counter({("SKIPPED", "superseded"): 14, ("SCHEDULED", None): 1})
    assert by_name["f/none"] == Counter({("SKIPPED", "catchup_missed"): 15})
    assert skipped == 29


def test_a_paused_deployment_is_not_materialised(database: Database) -> None:
    _deploy(database, "d", Cron("* * * * *"), paused=True)
    assert tick(database, now=NOW).runs_created == 0
    with database.write() as conn:
        deployments.set_paused(conn, "f/d", False)
    assert tick(database, now=datetime.now(UTC)).runs_created > 0


def test_a_run_id_is_a_uuid_and_its_name_carries_the_slot(database: Database) -> None:
    _deploy(database, "nightly", Cron("0 2 * * *"))
    tick(database, now=NOW)
    (run_id, name), *_ = _runs(database, flow_runs.c.id, flow_runs.c.name)
    assert isinstance(run_id, uuid.UUID)
    assert name == "nightly-20261129-020000"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("action", ["pause", "delete"])
def test_pause_or_delete_racing_a_tick_leave_no_waiting_run(database: Database, action: str
                                                             ) -> None:
    """A tick holds the schedule rows while its runs are uncommitted; a pause or delete that
    arrives then must wait for it and skip every run it made."""
    from ostinato.queues.schedules import due_schedules
    from ostinato.scheduler.materialize import _visit_all

    now = datetime.now(UTC)
    _deploy(database, "d", Cron("* * * * *"), as_of=now)
    done = threading.Event()

    def act() -> None:
        with database.write() as conn:
            if action == "pause":
                deployments.set_paused(conn, "f/d", True)
            else:
                deployments.remove(conn, "f/d")
        done.set()

    with database.write() as tick_conn:
        due = due_schedules(tick_conn, database, now, 10)
        _, rows = _visit_all(tick_conn, due, now, Policy())
        runs.insert_runs(tick_conn, rows)
        other = threading.Thread(target=act)
        other.start()
        assert not done.wait(0.5), f"{action} did not wait for the tick holding the schedule"
    other.join(timeout=10)
    assert done.is_set()
    states = {state for (state,) in _runs(database, flow_runs.c.state)}
    assert len(rows) > 60
    assert states == {"SKIPPED"}


def test_latest_keeps_the_newest_slot_even_when_it_is_already_claimed(database: Database
                                                                      ) -> None:
    _deploy(database, "d", Cron("0 * * * *"), catchup="latest", as_of=NOW - timedelta(hours=4))
    tick(database, now=NOW - timedelta(hours=4))
    with database.write() as conn:  # an agent took the newest slot, 09:00; 07:00, 08:00 wait
        conn.execute(update(flow_runs).where(flow_runs.c.nominal_time == datetime(
            2026, 11, 28, 9, tzinfo=UTC)).values(state="PENDING", fencing_token=1))
        skip_missed_runs(conn, NOW)
    states = {t.hour: (s, r) for t, s, r in _runs(database, flow_runs.c.nominal_time,
                                                  flow_runs.c.state, flow_runs.c.reason)
              if t < NOW - timedelta(minutes=5)}  # type: ignore[operator]
    assert states == {7: ("SKIPPED", "superseded"), 8: ("SKIPPED", "superseded"),
                      9: ("PENDING", None)}


def test_catch_up_within_a_countdown_never_exceeds_max_runs() -> None:
    p = plan(Cron("* * * * *", max_runs=5), last=NOW - timedelta(hours=2), now=NOW,
             catchup="all", remaining=2)
    assert len(p.runs) == 2
    assert p.visit_at == NEVER


def test_one_schedule_that_cannot_be_planned_does_not_stop_the_others(database: Database,
                                                                       monkeypatch: Any) -> None:
    import ostinato.scheduler.materialize as materialize

    _deploy(database, "bad", Cron("* * * * *"))
    _deploy(database, "good", Cron("*/5 * * * *"))
    real_plan = materialize.plan

    def plan_failing_for_bad(schedule: Any, **kwargs: Any) -> Any:
        if schedule.cron == "* * * * *":
            raise OverflowError("date value out of range")
        return real_plan(schedule, **kwargs)

    monkeypatch.setattr(materialize, "plan", plan_failing_for_bad)
    first = tick(database, now=NOW)
    second = tick(database, now=NOW)
    names = {name for (name,) in _runs(database, flow_runs.c.deployment_name)}
    assert names == {"f/good"}
    assert first.runs_created > 0 and second.schedules == 0  # the bad one backs off
