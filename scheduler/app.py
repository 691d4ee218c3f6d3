"""The server's FastAPI app: built by a factory, so tests and processes each get their own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from importlib.metadata import version

from fastapi import APIRouter, FastAPI

from ostinato.deploy.schemas import Health
from ostinato.deploy.settings import Settings
from ostinato.queues.database import Database, connect
from ostinato.queues.migrate import upgrade
from ostinato.queues.notify import PostgresListener, WorkNotifier
from ostinato.queues.retention import Retention
from ostinato.scheduler.api import (
    agents,
    bundles,
    concurrency_limits,
    deployments,
    errors,
    flow_runs,
    notifications,
    tokens,
    work_queues,
)
from ostinato.scheduler.api.dependencies import DatabaseDep
from ostinato.scheduler.auth import Authorized, FailedAuthentications, Public, announce
from ostinato.scheduler.body_limit import BodyLimit
from ostinato.scheduler.loops import SchedulerLoops
from ostinato.scheduler.metrics import Metrics
from ostinato.scheduler.metrics import router as metrics_router
from ostinato.scheduler.ui import dashboard, fleet, pages, runs
from ostinato.scheduler.ui import deployments as deployment_pages
from ostinato.scheduler.webhooks import WebhookPolicy

health = APIRouter(tags=["health"])


@health.get("/health", response_model=Health, dependencies=[Public])  # load balancers' probe
def read_health(database: DatabaseDep) -> Health:
    with database.read() as conn:
        conn.exec_driver_sql("SELECT 1")
    dialect = "sqlite" if database.is_sqlite else "postgresql"
    return Health(version=version("ostinato"), database=dialect)


@contextmanager
def _waking_long_polls(app: FastAPI, database: Database) -> Iterator[None]:
    """Long polls of this app wake on its own commits, and on PostgreSQL on other processes'."""
    app.state.notifier = notifier = WorkNotifier(asyncio.get_running_loop())
    listener = None if database.is_sqlite else PostgresListener(database, notifier)
    database.work_listeners.append(notifier.notify)
    if listener:
        listener.start()
    try:
        yield
    finally:
        database.work_listeners.remove(notifier.notify)
        if listener:
            listener.stop()


def create_app(settings: Settings | None = None, database: Database | None = None) -> FastAPI:
    """The API under `/api` (OpenAPI at `/api/docs`).

    With no database given, the app opens the configured one at start-up, upgrades its schema,
    and closes it at shutdown.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = database is None
        app.state.database = db = database or connect(settings.effective_database_url)
        loops = SchedulerLoops(db, interval=settings.scheduler_interval_seconds,
                               metrics=app.state.metrics,
                               webhooks=WebhookPolicy.from_settings(settings),
                               retention=Retention.from_settings(settings))
        try:
            if owned:
                upgrade(db)
            announce(db, settings)
            with _waking_long_polls(app, db), app.state.metrics.watching(db, settings):
                if settings.run_scheduler:
                    loops.start()
                yield
        finally:
            loops.stop()
            if owned:
                db.dispose()

    # Every route passes `authorize` (the health probe is marked public), so none added later
    # can be left open by mistake.
    app = FastAPI(title="Ostinato", version=version("ostinato"), lifespan=lifespan,
                  docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None,
                  dependencies=[Authorized])
    app.state.settings = settings
    app.state.metrics = Metrics()
    app.state.failed_authentications = FailedAuthentications()
    for router in (health, deployments.router, flow_runs.router, work_queues.router,
                   bundles.router, agents.router, concurrency_limits.router, tokens.router,
                   notifications.router):
        app.include_router(router, prefix="/api")
    app.include_router(metrics_router)  # at /metrics, where Prometheus looks by default
    pages.install(app, dashboard.router, deployment_pages.router, fleet.router, runs.router)
    errors.install(app)
    app.add_middleware(BodyLimit)  # caps every body before a route parses it
    return app
