"""Prometheus metrics at `/metrics` (DESIGN.md §8); docs/operations.md lists them.

Two kinds. Instruments this process updates as things happen: claim latency, the scheduler
loops' pass durations and lag, the reaper's actions (per process: sum them over servers). And
gauges read from the store at scrape time by `StoreCollector` — runs by state, late runs, queue
depths, agents online — which every server of one database reports alike.

Each app has a registry of its own, never prometheus_client's global one: tests build many apps
in one process, and a registry refuses a name registered twice.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from ostinato.deploy.settings import Settings
from ostinato.queues import stats
from ostinato.queues.database import Database
from ostinato.scheduler.api.dependencies import late_after

log = logging.getLogger(__name__)
router = APIRouter()
CLAIM_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0)
TICK_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
REAPER_ACTIONS = ("returned_to_queue", "crashed")


class Metrics:
    """One app's instruments and registry."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self._claim_seconds = Histogram(
            "ostinato_claim_duration_seconds",
            "Time to answer one claim attempt (one claim transaction, without long-poll waits).",
            buckets=CLAIM_BUCKETS, registry=registry)
        self._tick_seconds = Histogram(
            "ostinato_scheduler_tick_duration_seconds",
            "Duration of one pass of a scheduler loop.", ["loop"], buckets=TICK_BUCKETS,
            registry=registry)
        self._tick_lag = Gauge(
            "ostinato_scheduler_tick_lag_seconds",
            "How long after its due time the last pass of a scheduler loop started.", ["loop"],
            registry=registry)
        self._reaper_actions = Counter(
            "ostinato_reaper_actions_total",
            "Runs whose lease expired, by what the reaper did: returned_to_queue (PENDING) or "
            "crashed (RUNNING or CANCELLING).", ["action"], registry=registry)
        for action in REAPER_ACTIONS:  # both series exist from the start, at 0
            self._reaper_actions.labels(action)

    def timing_claim(self) -> AbstractContextManager[object]:
        return self._claim_seconds.time()

    def timing_pass(self, loop: str) -> AbstractContextManager[object]:
        return self._tick_seconds.labels(loop).time()

    def started_late(self, loop: str, lag: timedelta) -> None:
        self._tick_lag.labels(loop).set(max(lag.total_seconds(), 0.0))

    def reaped(self, returned: int, crashed: int) -> None:
        self._reaper_actions.labels("returned_to_queue").inc(returned)
        self._reaper_actions.labels("crashed").inc(crashed)

    @contextmanager
    def watching(self, database: Database, settings: Settings) -> Iterator[None]:
        """Report the store's gauges while the app is up (its database is open)."""
        collector = StoreCollector(database, settings)
        self.registry.register(collector)
        try:
            yield
        finally:
            self.registry.unregister(collector)


@router.get("/metrics", response_class=Response, tags=["metrics"])
def read_metrics(request: Request) -> Response:
    """The Prometheus text format; a sync route, as the store gauges query the database."""
    metrics: Metrics = request.app.state.metrics
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


class StoreCollector:
    """The store's gauges, queried at each scrape in one read transaction."""

    def __init__(self, database: Database, settings: Settings) -> None:
        self._database = database
        self._late_after = late_after(settings)
        self._online_for = timedelta(seconds=settings.lease_seconds)  # as GET /api/agents

    def collect(self) -> Iterable[Metric]:
        """The gauges; none if the database cannot answer, so the process's own metrics are
        still scraped (alert on `absent(ostinato_flow_runs)`)."""
        now = datetime.now(UTC)
        try:
            with self._database.read() as conn:
                return self._families(conn, now)
        except SQLAlchemyError as exc:  # once per scrape: one line, not a traceback
            log.warning("metrics: store gauges left out, the database could not be read: %s",
                        str(exc).splitlines()[0])
            return []

    def _families(self, conn: Connection, now: datetime) -> list[Metric]:
        by_state = GaugeMetricFamily("ostinato_flow_runs", "Flow runs in each state.",
                                     labels=["state"])
        for state, count in stats.runs_by_state(conn).items():
            by_state.add_metric([state.value], count)
        depth = GaugeMetricFamily(
            "ostinato_work_queue_depth",
            "Due waiting runs each work queue's filter matches (paused or full queues too).",
            labels=["queue"])
        for queue, count in stats.queue_depths(conn, now).items():
            depth.add_metric([queue], count)
        late = stats.late_runs(conn, now - self._late_after)
        online = stats.agents_online(conn, now - self._online_for)
        return [by_state, depth,
                GaugeMetricFamily("ostinato_flow_runs_late",
                                  "SCHEDULED runs past the late threshold (shown as Late).",
                                  value=late),
                GaugeMetricFamily("ostinato_agents_online",
                                  "Agents that heartbeated within a lease.", value=online)]
