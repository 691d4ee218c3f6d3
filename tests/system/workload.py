"""What a scenario runs, and what it finds once it has drained.

A `Workload` is deployments of tests/system/flow.py on schedules bounded to one window (`start`
to `end`, both inclusive), so every slot a schedule has is known in advance and nothing new is
created after the window. A `Layout` is the queues the agents serve and the tag limits; each
deployment matches exactly one queue, so a queue's limit counts every run of the deployments it
matches, and the harness can tell from a marker which limits its launch counted against.

`observe` reads the runs from the database (directly, not through a server that may be down)
and the markers from the scenario's folder; `drain` waits until nothing due is left unfinished
and no flow process is left running; `run` plays a scenario and returns its `Report`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select

from ostinato.deploy.schedules import Cron, Interval
from ostinato.deploy.schemas import DeploymentSpec, WorkQueueFilter, WorkQueueSpec
from ostinato.queues.database import Database, connect
from ostinato.queues.filters import matches
from ostinato.queues.tables import flow_run_states, flow_runs
from tests.system.harness import Cluster
from tests.system.invariants import (
    ALIVE_WITHIN,
    HELD,
    TERMINAL,
    Attempt,
    Budget,
    Expected,
    Marker,
    Observed,
    Run,
    check,
)

FLOW_FILE = Path(__file__).with_name("flow.py")
FLOW = "marked"
DEPLOY_BATCH = 200  # deployments per request
Schedule = Cron | Interval


@dataclass(frozen=True)
class Job:
    """One deployment of the marked flow: its schedule (unbounded: the workload bounds it to
    its window), how long each run takes, its tags."""

    name: str
    schedule: Schedule
    seconds: float
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Layout:
    """The work queues the agents serve, and the global limits by tag."""

    queues: tuple[WorkQueueSpec, ...]
    tag_limits: Mapping[str, int]

    @property
    def queue_names(self) -> list[str]:
        return [queue.name for queue in self.queues]

    def limits(self) -> dict[str, int]:
        """Every limit, as the groups the invariants count launches in."""
        by_queue = {f"queue:{q.name}": q.concurrency_limit for q in self.queues
                    if q.concurrency_limit is not None}
        return {**{f"tag:{tag}": n for tag, n in self.tag_limits.items()}, **by_queue}

    def groups(self, spec: DeploymentSpec) -> frozenset[str]:
        """The limit groups every run of `spec` counts against."""
        queues = {f"queue:{q.name}" for q in self.queues if q.concurrency_limit is not None
                  and matches(q.filter, tags=spec.tags, deployment=spec.full_name,
                              flow=spec.flow)}
        return frozenset({f"tag:{t}" for t in spec.tags if t in self.tag_limits} | queues)

    def apply(self, http: httpx.Client) -> None:
        for queue in self.queues:
            http.post("/work-queues", json=queue.model_dump(mode="json")).raise_for_status()
        for tag, limit in self.tag_limits.items():
            http.put("/concurrency-limits", json={"tag": tag, "limit": limit}
                     ).raise_for_status()


# A queue with a limit of its own (one `serial` run at a time) and a tag limit across deployments
# (two `limited` runs at a time), next to deployments with no limit.
STANDARD = Layout(
    queues=(WorkQueueSpec(name="main", filter=WorkQueueFilter(exclude_tags=["serial"])),
            WorkQueueSpec(name="serial", filter=WorkQueueFilter(tags=["serial"]),
                          concurrency_limit=1)),
    tag_limits={"limited": 2})


def standard_jobs() -> list[Job]:
    """Eight deployments firing together every two seconds: four free, three under the
    `limited` tag's limit, one through the `serial` queue."""
    schedule = Interval(timedelta(seconds=2), slug="every")
    return ([Job(f"free-{n}", schedule, 1.0, ("free",)) for n in range(4)]
            + [Job(f"limited-{n}", schedule, 1.0, ("limited",)) for n in range(3)]
            + [Job("serial-0", schedule, 0.8, ("serial",))])


@dataclass
class Workload:
    """Jobs deployed with their schedules bounded to `start`..`end`, on a layout."""

    layout: Layout
    jobs: Sequence[Job]
    folder: Path
    start: datetime
    end: datetime
    retries: int = 2
    specs: list[DeploymentSpec] = field(init=False)
    markers: Path = field(init=False)  # where the flows write their markers

    def __post_init__(self) -> None:
        project, self.markers = self.folder / "project", self.folder / "markers"
        project.mkdir(parents=True, exist_ok=True)
        self.markers.mkdir(exist_ok=True)
        shutil.copy(FLOW_FILE, project / FLOW_FILE.name)
        self.specs = [self._spec(job, project) for job in self.jobs]

    def _spec(self, job: Job, project: Path) -> DeploymentSpec:
        bounded = job.schedule.model_copy(update={"start": self.start, "end": self.end})
        return DeploymentSpec(
            flow=FLOW, name=job.name, entrypoint=f"{FLOW_FILE.name}:{FLOW}", path=str(project),
            parameters={"folder": str(self.markers), "seconds": job.seconds},
            tags=list(job.tags), schedules=[bounded], retries=self.retries)

    def deploy(self, http: httpx.Client) -> None:
        for first in range(0, len(self.specs), DEPLOY_BATCH):
            batch = self.specs[first:first + DEPLOY_BATCH]
            body = {"deployments": [spec.model_dump(mode="json") for spec in batch]}
            http.put("/deployments", json=body, timeout=60).raise_for_status()

    def expected(self, budget: Budget) -> Expected:
        after = self.start - timedelta(microseconds=1)
        slots = {(spec.full_name, schedule.slug): [i.time for i in schedule.next_instants(
            after, until=self.end)] for spec in self.specs for schedule in spec.schedules}
        return Expected(slots=slots, due_by=self.end, budget=budget,
                        limits=self.layout.limits(),
                        groups={spec.full_name: self.layout.groups(spec) for spec in self.specs})


def window(lead: float, length: float) -> tuple[datetime, datetime]:
    """A window starting `lead` seconds from now, `length` seconds long."""
    start = datetime.now(UTC) + timedelta(seconds=lead)
    return start, start + timedelta(seconds=length)


# --- what is found ---------------------------------------------------------------------------


def observe(database: Database, workload: Workload) -> Observed:
    """The runs of the workload's deployments, when each attempt ended, and the markers."""
    names = [spec.full_name for spec in workload.specs]
    r, s = flow_runs.c, flow_run_states.c
    with database.read() as conn:
        rows = conn.execute(select(r.id, r.deployment_name, r.schedule_slug, r.nominal_time,
                                   r.state, r.attempt, r.start_time, r.end_time)
                            .where(r.deployment_name.in_(names))).all()
        ends = conn.execute(select(s.flow_run_id, s.attempt, s.timestamp)
                            .join(flow_runs, r.id == s.flow_run_id)
                            .where(r.deployment_name.in_(names), s.type.in_(TERMINAL))
                            .order_by(s.id)).all()
    attempt_ends: dict[Attempt, datetime] = {(str(run_id), attempt): at
                                             for run_id, attempt, at in ends}
    runs = [Run(str(row.id), str(row.deployment_name), row.schedule_slug, row.nominal_time,
                row.state, row.attempt, attempt_ends.get((str(row.id), row.attempt))
                if row.state in TERMINAL else None, row.start_time, row.end_time)
            for row in rows]
    return Observed(runs, attempt_ends, read_markers(workload.markers), datetime.now(UTC))


def read_markers(folder: Path) -> list[Marker]:
    """The launches recorded in `folder`, their monotonic times made UTC datetimes."""
    offset = time.time() - time.monotonic()

    def moment(monotonic: float) -> datetime:
        return datetime.fromtimestamp(monotonic + offset, UTC)

    markers = []
    for path in sorted(folder.glob("*.json")):
        m = json.loads(path.read_text())
        markers.append(Marker(m["run_id"], m["attempt"], m["deployment"], m["agent"], m["pid"],
                              moment(m["start"]), moment(m["alive"]),
                              moment(m["end"]) if m["end"] is not None else None))
    return markers


def running_markers(folder: Path) -> list[Marker]:
    """Launches still going: not finished, and a sign of life within ALIVE_WITHIN."""
    now = datetime.now(UTC)
    return [m for m in read_markers(folder) if m.end is None and m.alive >= now - ALIVE_WITHIN]


def unfinished(observed: Observed, due_by: datetime) -> list[str]:
    """What drain waits for: due runs not ended yet, claims held, processes still going."""
    left = [f"{run.deployment} {run.state}" for run in observed.runs
            if run.state in HELD or (run.state not in TERMINAL and run.nominal_time <= due_by)]
    stale = observed.at - ALIVE_WITHIN
    return left + [f"pid {m.pid}" for m in observed.markers if m.end is None and m.alive >= stale]


def drain(database: Database, workload: Workload, timeout: float) -> Observed:
    """The observation once nothing is left unfinished, or at `timeout` (the invariants then
    say what was left)."""
    deadline = time.monotonic() + timeout
    while True:
        observed = observe(database, workload)
        if not unfinished(observed, workload.end) or time.monotonic() > deadline:
            return observed
        time.sleep(0.5)


# --- a scenario ------------------------------------------------------------------------------


@dataclass
class Report:
    """A scenario's outcome: the faults injected, what each invariant found, and figures."""

    scenario: str
    seconds: float
    faults: list[dict[str, Any]]
    problems: dict[str, list[str]]
    figures: dict[str, Any]

    @property
    def held(self) -> bool:
        return not any(self.problems.values())

    def json(self, shown: int = 20) -> str:
        """The report as JSON, with the first `shown` problems of each invariant."""
        invariants = {name: {"problems": len(found), "first": found[:shown]} if found
                      else "held" for name, found in self.problems.items()}
        return json.dumps({"scenario": self.scenario, "seconds": self.seconds,
                           "held": self.held, "invariants": invariants, "faults": self.faults,
                           **self.figures}, indent=1, default=str)


def figures(observed: Observed, cluster: Cluster) -> dict[str, Any]:
    """What the runs did, for the report (not checked)."""
    return {"runs": len(observed.runs),
            "states": dict(Counter(run.state for run in observed.runs)),
            "retried": sum(run.attempt > 1 for run in observed.runs),
            "launches": len(observed.markers),
            "agents_isolated": cluster.isolated or cluster.isolation,
            "tracebacks": {p.name: n for p in cluster.processes() if (n := p.tracebacks())}}


def sleep_until(moment: datetime) -> None:
    time.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))


def run(name: str, cluster: Cluster, workload: Workload, budget: Budget,
        script: Callable[[], None] = lambda: None, drain_timeout: float = 45) -> Report:
    """Deploy the workload, play `script` (the faults) from the window's start, wait for its
    end, drain, and check every invariant."""
    begun, setup = time.monotonic(), cluster.elapsed()
    with cluster.http() as http:
        workload.deploy(http)
    sleep_until(workload.start)
    script()
    sleep_until(workload.end)
    database = connect(cluster.database_url)
    try:
        observed = drain(database, workload, drain_timeout)
    finally:
        database.dispose()
    problems = check(observed, workload.expected(budget))
    return Report(name, round(time.monotonic() - begun, 1), cluster.faults, problems,
                  {"setup_seconds": setup, **figures(observed, cluster)})
