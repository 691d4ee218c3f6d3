"""Fault injection with real processes (tests/system/harness.py): a cluster runs a workload of
real schedules firing every two seconds for a short window while one kind of fault is injected,
then drains, and every invariant of tests/system/invariants.py must hold. Each scenario prints
its report (JSON: faults injected, what each invariant found, figures) and lasts 20-30 s.

Isolation, so that scenarios run side by side under pytest-xdist: each has its own PostgreSQL
schema (conftest's `database_url`) or PostgreSQL cluster or tmpfs, its own ports, folder and
network namespaces. Scenarios that need something of the machine skip, saying why, without it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from ostinato.deploy.schedules import Interval
from tests.system import faults
from tests.system.harness import LEASE, Cluster
from tests.system.invariants import Budget, Marker
from tests.system.workload import (
    STANDARD,
    Job,
    Report,
    Workload,
    read_markers,
    run,
    standard_jobs,
    window,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
POSTGRES = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
LENGTH = 12.0  # seconds of schedule window: six slots of each deployment
PICKUP = timedelta(seconds=10)  # due to launched, behind limits and on a busy CI machine
# One attempt: the longest flow (1 s), then, if it crashes, a lease and a reaper pass.
PER_ATTEMPT = timedelta(seconds=1 + LEASE + 1)
DOWN = 3.0  # seconds a killed server or scheduler stays down
DB_DOWN = LEASE + 2  # PostgreSQL: long enough that no agent can renew a lease meanwhile
RECONNECT = 8.0  # after an outage: a restart, and the agents' back-off (up to 10 s, jittered)
FULL = 4.0  # seconds the disk stays full
OUTAGE = 2 * LEASE  # a partition: long enough to lose the agent's runs to the reaper
LONG = OUTAGE + 4  # seconds of the long flow a partition catches running: it outlives it
SKEW = 30.0  # seconds two agents' clocks are off by, one ahead, one behind


@pytest.fixture
def cluster(database_url: str, tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, database_url) as made:
        yield made


def _standard(cluster: Cluster, *, servers: int = 1, schedulers: int = 1, agents: int = 3,
              loops: bool = False, jobs: list[Job] | None = None,
              agent_env: dict[int, dict[str, str]] | None = None) -> Workload:
    """The standard layout served by `agents` agents spread over `servers` servers (agent
    number N with `agent_env[N]` added to its environment), scheduled by `schedulers`
    schedulers or the servers' own `loops`; the workload (standard jobs unless `jobs`), due
    from about two seconds after every agent is online."""
    for _ in range(servers):
        cluster.start_server(loops=loops)
    with cluster.http() as http:
        STANDARD.apply(http)
    for _ in range(schedulers):
        cluster.start_scheduler()
    for number in range(agents):
        cluster.start_agent(STANDARD.queue_names, server=cluster.servers[number % servers],
                            env=(agent_env or {}).get(number))
    cluster.wait_for_agents()
    start, end = window(lead=2, length=LENGTH)
    return Workload(STANDARD, jobs or standard_jobs(), cluster.folder / "work", start, end)


def _budget(outage: float = 0) -> Budget:
    return Budget(fixed=PICKUP + timedelta(seconds=outage), per_attempt=PER_ATTEMPT)


def _played(name: str, cluster: Cluster, workload: Workload, budget: Budget,
            script: Callable[[], None]) -> Report:
    """Run the scenario; print its report; fail with it and the logs' ends unless every
    invariant held."""
    report = run(name, cluster, workload, budget, script)
    print(report.json())
    failing = {invariant for invariant, found in report.problems.items() if found}
    assert not failing, f"{report.json()}\n{cluster.tail()}"
    return report


def _after(seconds: float, fault: Callable[[], None]) -> Callable[[], None]:
    def script() -> None:
        time.sleep(seconds)
        fault()
    return script


@POSTGRES
def test_an_agent_killed_mid_run_loses_its_runs_to_the_reaper_and_others_rerun_them(
        cluster: Cluster) -> None:
    workload = _standard(cluster)
    victim = cluster.agents[0]
    report = _played("kill -9 agent", cluster, workload, _budget(),
                     _after(4, lambda: faults.kill_agent(cluster, victim, workload.markers)))
    assert report.figures["retried"] >= 1, "the kill caught no run: the scenario proved nothing"


@POSTGRES
def test_a_server_killed_and_restarted_costs_its_agents_a_pause_not_a_run(
        cluster: Cluster) -> None:
    workload = _standard(cluster, servers=2)
    server = cluster.servers[0]

    def script() -> None:
        time.sleep(3)
        faults.kill(cluster, server.process)
        time.sleep(DOWN)
        faults.restart(cluster, server)

    _played("kill -9 server", cluster, workload, _budget(outage=DOWN + RECONNECT), script)


@POSTGRES
def test_schedulers_killed_in_turn_still_reap_and_schedule_once(cluster: Cluster) -> None:
    workload = _standard(cluster, schedulers=2)
    first, second = cluster.schedulers

    def script() -> None:
        time.sleep(2)
        faults.kill(cluster, first)
        faults.kill_agent(cluster, cluster.agents[0], workload.markers)  # the second reaps
        time.sleep(LEASE + 1)
        faults.restart(cluster, first)
        faults.kill(cluster, second)
        time.sleep(DOWN)
        faults.restart(cluster, second)

    report = _played("kill -9 scheduler", cluster, workload, _budget(), script)
    assert report.figures["retried"] >= 1, "the agent's kill caught no run"


@POSTGRES
def test_flow_processes_killed_crash_and_are_retried_within_their_limits(
        cluster: Cluster) -> None:
    workload = _standard(cluster)

    def script() -> None:
        for deployment in ("limited", "serial", "free"):
            time.sleep(2)
            faults.kill_flow(cluster, workload.markers, deployment)

    report = _played("kill -9 flow", cluster, workload, _budget(), script)
    assert report.figures["retried"] >= 3


@POSTGRES
def test_an_agent_cut_off_longer_than_its_lease_has_its_runs_rerun_and_kills_them(
        cluster: Cluster) -> None:
    if not cluster.isolated:
        pytest.skip(f"agents cannot be cut off here: {cluster.isolation}")
    long = Job("long-0", Interval(timedelta(seconds=8), slug="every"), LONG, ("free",))
    workload = _standard(cluster, jobs=[*standard_jobs(), long])
    cut_off: list[Marker] = []

    def script() -> None:
        cut_off.extend(faults.running_flows(cluster, workload.markers, deployment="long"))
        agent = next(a for a in cluster.agents if a.name == cut_off[0].agent)
        faults.partition(cluster, agent, OUTAGE)

    budget = Budget(fixed=PICKUP + timedelta(seconds=OUTAGE),
                    per_attempt=PER_ATTEMPT + timedelta(seconds=LONG))
    _played("partition", cluster, workload, budget, script)
    orphan = next(m for m in read_markers(workload.markers) if m.run_id == cut_off[0].run_id
                  and m.attempt == cut_off[0].attempt)
    assert orphan.end is None, "the run lost in the outage was not killed once it came back"


@POSTGRES
def test_agents_with_clocks_ahead_and_behind_run_everything_on_time(cluster: Cluster) -> None:
    workload = _standard(cluster, agent_env={0: faults.skewed_clock(SKEW),
                                             1: faults.skewed_clock(-SKEW)})
    cluster.record("clock skew", target="agent-0", seconds=SKEW)
    cluster.record("clock skew", target="agent-1", seconds=-SKEW)
    _played("clock skew", cluster, workload, _budget(), lambda: None)


def test_sqlite_on_a_full_disk_recovers_once_there_is_room(tmp_path: Path) -> None:
    cannot = faults.tmpfs_unavailable()
    if cannot:
        pytest.skip(cannot)
    with faults.Tmpfs(tmp_path / "disk", 8) as disk, Cluster(
            tmp_path, f"sqlite:///{disk.folder / 'ostinato.db'}") as cluster:
        workload = _standard(cluster, schedulers=0, loops=True)

        def script() -> None:
            time.sleep(3)
            disk.fill(cluster)
            time.sleep(FULL)
            disk.free(cluster)

        _played("full disk", cluster, workload, _budget(outage=FULL + RECONNECT), script)


def test_postgresql_down_longer_than_a_lease_loses_no_run_and_launches_each_attempt_once(
        tmp_path: Path) -> None:
    """No heartbeat can renew a lease while the database is down, so once it is back the
    reaper crashes the runs held meanwhile, and they run again (as attempt 2), finished or not:
    at least once, never twice in one attempt."""
    cannot = faults.postgres_unavailable()
    if cannot:
        pytest.skip(cannot)
    with faults.PrivatePostgres() as postgres, Cluster(tmp_path, postgres.url) as cluster:
        workload = _standard(cluster, servers=2)
        _played("postgres restart", cluster, workload, _budget(outage=DB_DOWN + RECONNECT),
                _after(3, lambda: postgres.restart(cluster, DB_DOWN)))
