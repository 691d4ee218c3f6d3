"""The soak: a bigger cluster under a random fault every half minute, run by hand from the
repository's root (it is not a test; pytest does not collect it):

    python -m tests.system.soak [--minutes 10] [--deployments 1000] [--seed N] [--postgres-url URL]

Two servers, three schedulers and eight agents (in network namespaces of their own where this
process can make them) serve `--deployments` deployments of tests/system/flow.py on mixed
schedules — intervals of 30 s to 5 min with random phases, and minutely crons firing all at
once — under the standard queues and limits. The database is a PostgreSQL cluster of the soak's
own (tests/system/faults.py `PrivatePostgres`), so it can be crashed; with `--postgres-url` it is
a fresh schema of that server instead, and PostgreSQL crashes are left out.

Every `--fault-every` seconds one fault, drawn at random from those this machine allows: kill -9
of an agent (started again 5 s later), a server or a scheduler (3 s later), a flow process; an
agent cut off for two leases; PostgreSQL crashed for 3 s; an agent restarted with a clock 30 s
ahead or behind. The schedules stop about 90 s before `--minutes` are up; the drain takes at
most 60 s. It then checks every invariant (tests/system/invariants.py) and prints a JSON summary
of the faults injected and what each invariant found; the exit status is 0 if all held. Logs
and markers stay in the folder it names on stderr.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from ostinato.deploy.schedules import Cron, Interval
from tests.benchmarks.harness import postgres_url
from tests.system import faults
from tests.system.harness import LEASE, Cluster
from tests.system.invariants import Budget
from tests.system.workload import STANDARD, Job, Layout, Report, Workload, run, window

LAYOUT = Layout(queues=STANDARD.queues, tag_limits={"limited": 4})
PERIODS = (30, 60, 120, 300)  # seconds, besides the minutely crons
RESTART_AGENT, DOWN = 5.0, 3.0  # seconds a killed agent, or a server, scheduler or PostgreSQL,
SKEW = 30.0  # stays down; how far off a skewed agent's clock is
RESERVE = 90.0  # seconds of `--minutes` kept for starting up and draining
DRAIN = 60.0
BUDGET = Budget(fixed=timedelta(seconds=60), per_attempt=timedelta(seconds=2 + LEASE + 2))


def jobs(count: int, rng: random.Random) -> list[Job]:
    """`count` deployments: one in five on a minutely cron, the others on intervals of random
    phase; 2% through the `serial` queue, 8% under the `limited` tag, the rest free."""
    anchor = datetime(2020, 1, 1, tzinfo=UTC)
    made = []
    for number in range(count):
        period = rng.choice((*PERIODS, 0))
        schedule = Cron("* * * * *", slug="every") if period == 0 else Interval(
            timedelta(seconds=period), anchor=anchor + timedelta(seconds=rng.uniform(0, period)),
            slug="every")
        tag = "serial" if number % 50 == 0 else "limited" if number % 12 == 1 else "free"
        made.append(Job(f"soak-{number:04}", schedule, round(rng.uniform(0.3, 2.0), 2), (tag,)))
    return made


@dataclass
class Faults:
    """The faults the soak draws from, on one cluster."""

    cluster: Cluster
    workload: Workload
    rng: random.Random
    postgres: faults.PrivatePostgres | None

    def kinds(self) -> list[Callable[[], None]]:
        """Those this machine allows."""
        allowed = [self.kill_agent, self.kill_server, self.kill_scheduler, self.kill_flow,
                   self.skew_agent]
        if self.cluster.isolated:
            allowed.append(self.partition)
        if self.postgres is not None:
            allowed.append(self.crash_postgres)
        return allowed

    def kill_agent(self) -> None:
        busy = faults.running_flows(self.cluster, self.workload.markers)
        agent = next(a for a in self.cluster.agents if a.name == self.rng.choice(busy).agent)
        faults.kill_agent(self.cluster, agent, self.workload.markers)
        time.sleep(RESTART_AGENT)
        faults.restart(self.cluster, agent.process)

    def kill_server(self) -> None:
        server = self.rng.choice(self.cluster.servers)
        faults.kill(self.cluster, server.process)
        time.sleep(DOWN)
        faults.restart(self.cluster, server)

    def kill_scheduler(self) -> None:
        scheduler = self.rng.choice(self.cluster.schedulers)
        faults.kill(self.cluster, scheduler)
        time.sleep(DOWN)
        faults.restart(self.cluster, scheduler)

    def kill_flow(self) -> None:
        faults.kill_flow(self.cluster, self.workload.markers)

    def partition(self) -> None:
        faults.partition(self.cluster, self.rng.choice(self.cluster.agents), 2 * LEASE,
                         self.rng.choice(("drop", "carrier")))

    def crash_postgres(self) -> None:
        assert self.postgres is not None
        self.postgres.restart(self.cluster, DOWN)

    def skew_agent(self) -> None:
        """Restart an agent with its clock off (ahead or behind)."""
        agent, seconds = self.rng.choice(self.cluster.agents), self.rng.choice((SKEW, -SKEW))
        faults.kill(self.cluster, agent.process)
        agent.process.env.update(faults.skewed_clock(seconds))
        faults.restart(self.cluster, agent.process)
        self.cluster.record("clock skew", target=agent.name, seconds=seconds)

    def play(self, every: float) -> None:
        """A random fault every `every` seconds until the workload's window ends."""
        kinds = self.kinds()
        while datetime.now(UTC) + timedelta(seconds=every) < self.workload.end:
            time.sleep(every)
            fault = self.rng.choice(kinds)
            note(f"{self.cluster.elapsed():7.1f} s: {fault.__name__}")
            try:
                fault()
            except AssertionError as exc:  # e.g. no flow running to kill: note it, go on
                self.cluster.record(f"{fault.__name__} not injected", why=str(exc)[:300])


def note(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@contextmanager
def database(postgres: str | None) -> Iterator[tuple[str, faults.PrivatePostgres | None]]:
    """A fresh schema of `postgres`, or a PostgreSQL cluster of our own (which may crash)."""
    if postgres:
        with postgres_url(postgres) as url:
            yield url, None
        return
    with faults.PrivatePostgres() as private:
        yield private.url, private


def started(cluster: Cluster) -> None:
    """2 servers without loops, the standard queues, 3 schedulers, 8 agents (4 runs each)."""
    for _ in range(2):
        cluster.start_server()
    with cluster.http() as http:
        LAYOUT.apply(http)
    for _ in range(3):
        cluster.start_scheduler()
    for number in range(8):
        cluster.start_agent(LAYOUT.queue_names, server=cluster.servers[number % 2], limit=4)
    cluster.wait_for_agents()


def soak(options: argparse.Namespace, folder: Path) -> Report:
    rng = random.Random(options.seed)
    with ExitStack() as stack:
        url, private = stack.enter_context(database(options.postgres_url))
        cluster = stack.enter_context(Cluster(folder, url))
        note(f"agents isolated: {cluster.isolated or cluster.isolation}")
        started(cluster)
        length = max(30.0, options.minutes * 60 - RESERVE - cluster.elapsed())
        start, end = window(lead=10, length=length)
        workload = Workload(LAYOUT, jobs(options.deployments, rng), folder / "work", start, end)
        note(f"{cluster.elapsed():7.1f} s: {options.deployments} deployments, schedules for "
             f"{length:.0f} s from {start:%H:%M:%S}")
        chaos = Faults(cluster, workload, rng, private)
        report = run("soak", cluster, workload, BUDGET, lambda: chaos.play(options.fault_every),
                     drain_timeout=DRAIN)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--deployments", type=int, default=1000)
    parser.add_argument("--fault-every", type=float, default=30, metavar="SECONDS")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--postgres-url", default=None, metavar="URL",
                        help="use a fresh schema of this server, not a cluster of our own")
    options = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="ostinato-soak-"))
    note(f"logs and markers in {folder}")
    report = soak(options, folder)
    print(report.json())
    return 0 if report.held else 1


if __name__ == "__main__":
    sys.exit(main())
