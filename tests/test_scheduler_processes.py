"""Real `ostinato scheduler start` processes sharing one PostgreSQL database (DESIGN.md §4).

Each test gets a fresh PostgreSQL schema from conftest's `database_url` (skipped, saying why,
when OSTINATO_TEST_POSTGRES_URL is unset) and passes its URL to the processes as
OSTINATO_DATABASE_URL. Checked: no run identity is ever created twice and no slot of a schedule
is skipped while several schedulers compete; an edit never leaves future runs of the old
definition behind; a scheduler killed in the middle of a write loses nothing and duplicates
nothing once another one takes over. Every wait has a deadline; every process is stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import and_, func, select, text

from ostinato.deploy.schedules import Cron, Interval
from ostinato.deploy.schemas import DeploymentSpec, DeploymentUpdate
from ostinato.deploy.states import StateType
from ostinato.queues import deployments
from ostinato.queues.database import Database, connect
from ostinato.queues.migrate import upgrade
from ostinato.queues.tables import deployments as deployments_table
from ostinato.queues.tables import flow_runs, schedules
from ostinato.scheduler.loops import SchedulerLoops
from ostinato.scheduler.materialize import Policy
from tests.conftest import exit_status_after

POSTGRES_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
SECOND = timedelta(seconds=1)
STOP_SECONDS = 10  # a scheduler must exit this soon after SIGTERM

# --- processes -----------------------------------------------------------------------------------


@dataclass
class Scheduler:
    """One `ostinato scheduler start` process; its stdout and stderr go to `log`."""

    process: subprocess.Popen[bytes]
    log: Path
    app_name: str  # its PostgreSQL application_name, to find its backend in pg_stat_activity

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self) -> int:
        """SIGTERM, then the exit status; fails if the process needs more than STOP_SECONDS."""
        return exit_status_after(self.process, signal.SIGTERM, STOP_SECONDS, self.log)


Spawn = Callable[[float], Scheduler]


@pytest.fixture
def spawn(database_url: str, tmp_path: Path) -> Iterator[Spawn]:
    """Start scheduler processes on the test's database; any left running are killed after."""
    started: list[Scheduler] = []

    def start(interval: float) -> Scheduler:
        app_name = f"ostinato-test-{uuid.uuid4().hex[:12]}"
        env = {**os.environ, "OSTINATO_DATABASE_URL": database_url,
               "OSTINATO_HOME": str(tmp_path / "home"), "PGAPPNAME": app_name}
        log = tmp_path / f"scheduler-{len(started)}.log"
        command = [sys.executable, "-m", "ostinato.cli.main", "scheduler", "start",
                   "--interval", str(interval)]
        with log.open("wb") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        started.append(Scheduler(process, log, app_name))
        return started[-1]

    yield start
    for scheduler in started:
        if scheduler.process.poll() is None:
            scheduler.process.kill()
            scheduler.process.wait(timeout=STOP_SECONDS)


def assert_stopped_cleanly(running: Sequence[Scheduler]) -> None:
    """SIGTERM each: exit 0 within STOP_SECONDS, and no failed pass or traceback in its log."""
    for scheduler in running:
        assert scheduler.process.poll() is None, f"scheduler died early:\n{scheduler.output()}"
    codes = [scheduler.terminate() for scheduler in running]
    assert codes == [0] * len(running), [s.output() for s in running]
    for scheduler in running:
        assert "Traceback" not in scheduler.output(), scheduler.output()


def wait_until(condition: Callable[[], bool], seconds: float, what: str,
               poll: float = 0.05) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(poll)


# --- the store -----------------------------------------------------------------------------------


def spec(name: str, *schedule_list: Cron | Interval) -> DeploymentSpec:
    return DeploymentSpec(flow="f", name=name, entrypoint="flows.py:f", path="/srv/flows",
                          schedules=list(schedule_list))


def prepared(url: str, specs: Sequence[DeploymentSpec]) -> Database:
    """The database at `url` with the current schema and `specs` applied in one transaction."""
    database = connect(url)
    upgrade(database)
    with database.write() as conn:
        deployments.apply(conn, specs)
    return database


def minutely(count: int) -> list[DeploymentSpec]:
    return [spec(f"m{number:05}", Cron("* * * * *")) for number in range(count)]


def duplicates(database: Database) -> list[tuple[Any, ...]]:
    """Run identities present more than once."""
    c = flow_runs.c
    query = (select(c.deployment_id, c.schedule_slug, c.nominal_time, func.count())
             .group_by(c.deployment_id, c.schedule_slug, c.nominal_time)
             .having(func.count() > 1))
    with database.read() as conn:
        return [tuple(row) for row in conn.execute(query)]


def run_count(database: Database) -> int:
    with database.read() as conn:
        return int(conn.execute(select(func.count()).select_from(flow_runs)).scalar_one())


def reach_by_schedule(database: Database, prefix: str) -> dict[str, datetime | None]:
    """For each schedule of the deployments named `f/{prefix}…`: its newest run's nominal time
    (None: no run)."""
    s, d, r = schedules.c, deployments_table.c, flow_runs.c
    runs_of_schedule = and_(r.deployment_id == s.deployment_id, r.schedule_slug == s.slug)
    query = (select(s.id, func.max(r.nominal_time))
             .select_from(schedules.join(deployments_table, d.id == s.deployment_id)
                          .outerjoin(flow_runs, runs_of_schedule))
             .where(d.full_name.startswith(f"f/{prefix}"))
             .group_by(s.id))
    with database.read() as conn:
        return {str(schedule_id): newest for schedule_id, newest in conn.execute(query)}


def nominal_times(database: Database, deployment: str) -> list[datetime]:
    query = (select(flow_runs.c.nominal_time).where(flow_runs.c.deployment_name == deployment)
             .order_by(flow_runs.c.nominal_time))
    with database.read() as conn:
        return [t for (t,) in conn.execute(query)]


def slot_errors(times: Sequence[datetime], step: timedelta) -> dict[str, list[datetime]]:
    """Slots between the first and the last time that are missing, repeated or off the grid."""
    counts = Counter(times)
    expected = [times[0] + k * step for k in range(int((times[-1] - times[0]) / step) + 1)]
    return {
        "missing": [t for t in expected if t not in counts],
        "repeated": [t for t, n in counts.items() if n > 1],
        "off_grid": sorted(set(counts) - set(expected)),
    }


# --- a. three schedulers, one database -----------------------------------------------------------

EVERY_SECOND = "f/every-second"


def assert_consistent(database: Database, cron_schedules: int) -> None:
    """No duplicate; the 1-second schedule has every slot once; every minutely schedule has runs
    reaching the horizon (1 h ahead, less a few seconds of tick lag)."""
    checked_at = datetime.now(UTC)
    assert duplicates(database) == []
    times = nominal_times(database, EVERY_SECOND)
    assert times, "the 1-second schedule has no run"
    assert slot_errors(times, SECOND) == {"missing": [], "repeated": [], "off_grid": []}
    reach = reach_by_schedule(database, "m")
    assert len(reach) == cron_schedules
    without_runs = [schedule for schedule, newest in reach.items() if newest is None]
    assert without_runs == []
    horizon = checked_at + Policy().horizon - 5 * SECOND
    short = {s: newest for s, newest in reach.items() if newest is not None and newest < horizon}
    assert short == {}


@POSTGRES_ONLY
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_three_schedulers_on_one_database_create_every_slot_exactly_once(
        database_url: str, spawn: Spawn) -> None:
    cron_count, seconds, check_every = 200, 60.0, 10.0
    database = prepared(database_url, [spec("every-second", Interval(1)),
                                       *minutely(cron_count)])
    running = [spawn(0.5) for _ in range(3)]
    try:
        wait_until(lambda: bool(nominal_times(database, EVERY_SECOND)), 30, "first runs")
        started = time.monotonic()
        while (left := seconds - (time.monotonic() - started)) > 0:
            time.sleep(min(check_every, left))
            assert_consistent(database, cron_count)
        assert_stopped_cleanly(running)
        assert_consistent(database, cron_count)
        # More slots than one visit creates: the schedule was extended by a later visit,
        # and the check above found that extension contiguous.
        assert len(nominal_times(database, EVERY_SECOND)) > Policy().max_runs
    finally:
        database.dispose()


# --- b. edits while schedulers run ---------------------------------------------------------------

EDITED = "f/edited"
EVEN = Cron("*/2 * * * *", slug="even")
ODD = Cron("1-59/2 * * * *", slug="odd")


def future_untouched_by_slug(database: Database, after: datetime) -> dict[str, list[int]]:
    """The minutes of the edited deployment's SCHEDULED, never-claimed, auto-scheduled runs
    due after `after`, by schedule slug."""
    c = flow_runs.c
    query = select(c.schedule_slug, c.nominal_time).where(
        c.deployment_name == EDITED, c.auto_scheduled.is_(True),
        c.state == StateType.SCHEDULED.value, c.fencing_token == 0, c.scheduled_time > after)
    found: dict[str, list[int]] = {}
    with database.read() as conn:
        for slug, nominal in conn.execute(query):
            found.setdefault(slug, []).append(nominal.minute)
    return found


def edit_repeatedly(database: Database, edits: int, pause: float) -> tuple[Cron, list[str]]:
    """Switch the schedule between EVEN and ODD; after each commit, look for future runs of
    any other slug. Returns the current schedule and what was found wrong."""
    problems: list[str] = []
    current = EVEN
    for number in range(edits):
        current = ODD if current is EVEN else EVEN
        with database.write() as conn:
            deployments.edit(conn, EDITED, DeploymentUpdate(schedules=[current]))
        stale = set(future_untouched_by_slug(database, datetime.now(UTC))) - {current.slug}
        if stale:
            problems.append(f"edit {number} to {current.slug}: future runs of {sorted(stale)}")
        time.sleep(pause)
    return current, problems


def materialised(database: Database, slug: str) -> bool:
    """Whether a tick has materialised the edited deployment's `slug`: its future runs reach
    the horizon (1 h ahead, less one slot of the every-2-minutes schedules)."""
    minutes = future_untouched_by_slug(database, datetime.now(UTC)).get(slug, [])
    return len(minutes) >= Policy().horizon // timedelta(minutes=2) - 1


@contextmanager
def schedulers_running(database_url: str, spawn: Spawn, count: int, interval: float
                       ) -> Iterator[None]:
    """`count` schedulers: processes on PostgreSQL, SchedulerLoops threads (each with its own
    engine, as separate processes would have) on SQLite. Stopped cleanly on exit."""
    if not database_url.startswith("sqlite"):
        running = [spawn(interval) for _ in range(count)]
        yield
        assert_stopped_cleanly(running)
        return
    loops = [SchedulerLoops(connect(database_url), interval=interval) for _ in range(count)]
    for loop in loops:
        loop.start()
    try:
        yield
    finally:
        for loop in loops:
            stopper = threading.Thread(target=loop.stop)
            stopper.start()
            stopper.join(timeout=STOP_SECONDS)
            assert not stopper.is_alive(), f"SchedulerLoops.stop() took over {STOP_SECONDS} s"
            loop.database.dispose()


@pytest.mark.parametrize("database_url", ["postgresql", "sqlite"], indirect=True)
@pytest.mark.slow
@pytest.mark.timeout(90)
def test_edits_while_schedulers_run_never_leave_future_runs_of_the_old_definition(
        database_url: str, spawn: Spawn) -> None:
    database = prepared(database_url, [spec("edited", EVEN), *minutely(50)])
    try:
        with schedulers_running(database_url, spawn, count=2, interval=0.2):
            wait_until(lambda: materialised(database, "even"), 30, "first materialisation")
            current, problems = edit_repeatedly(database, edits=20, pause=0.75)
            wait_until(lambda: materialised(database, str(current.slug)), 10,
                       "a tick after the edits")
            time.sleep(0.5)  # and a couple more ticks
            final = future_untouched_by_slug(database, datetime.now(UTC))
        assert problems == []
        assert set(final) == {current.slug}
        parity = 0 if current is EVEN else 1
        assert {minute % 2 for minute in final[str(current.slug)]} == {parity}
        assert duplicates(database) == []
    finally:
        database.dispose()


# --- c. a scheduler killed in the middle of a write ----------------------------------------------

# The scheduler's backend inside a transaction that has written (it has a transaction id) and
# whose latest statement is a write: it is materialising a batch that has not committed yet.
WRITING = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
               "AND state IN ('active', 'idle in transaction') AND backend_xid IS NOT NULL "
               "AND query ~* '^\\s*(INSERT|COPY|UPDATE|TRUNCATE)'")


def writing_runs(database: Database, scheduler: Scheduler) -> bool:
    """Whether the scheduler is in the middle of writing a batch it has not committed."""
    with database.read() as conn:
        return bool(conn.execute(WRITING, {"name": scheduler.app_name}).scalar_one())


def schedule_reach_mismatches(database: Database) -> list[tuple[Any, ...]]:
    """Schedules whose recorded reach disagrees with their runs: `scheduled_until` must be the
    newest run's nominal time, or, with no run yet, still the schedule's creation time. A visit
    commits its runs and its bookkeeping together, or neither."""
    s, r = schedules.c, flow_runs.c
    runs_of_schedule = and_(r.deployment_id == s.deployment_id, r.schedule_slug == s.slug)
    query = (select(s.id, s.scheduled_until, func.coalesce(func.max(r.nominal_time), s.created))
             .select_from(schedules.outerjoin(flow_runs, runs_of_schedule))
             .group_by(s.id, s.scheduled_until, s.created))
    with database.read() as conn:
        return [tuple(row) for row in conn.execute(query) if row[1] != row[2]]


@POSTGRES_ONLY
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_scheduler_killed_mid_write_loses_nothing_and_another_carries_on(
        database_url: str, spawn: Spawn) -> None:
    count = 3 * Policy().batch_size  # the first batch commits; the kill hits a later one
    database = prepared(database_url, minutely(count))
    try:
        first = spawn(0.5)
        wait_until(lambda: run_count(database) > 0, 60, "the first batch committed")
        wait_until(lambda: writing_runs(database, first), 60, "a later batch inserting runs",
                   poll=0.005)
        first.process.kill()
        assert first.process.wait(timeout=STOP_SECONDS) == -signal.SIGKILL
        at_kill = reach_by_schedule(database, "m")
        materialised = sum(newest is not None for newest in at_kill.values())
        assert 0 < materialised < count, "the kill should land between two batches' commits"
        assert schedule_reach_mismatches(database) == []
        assert duplicates(database) == []
        runs_at_kill = run_count(database)

        second = spawn(0.5)
        wait_until(lambda: None not in reach_by_schedule(database, "m").values(), 60,
                   "every schedule materialised after the restart", poll=0.5)
        assert_stopped_cleanly([second])
        assert duplicates(database) == []
        assert schedule_reach_mismatches(database) == []
        assert run_count(database) > runs_at_kill
    finally:
        database.dispose()
