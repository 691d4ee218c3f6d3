"""The server's FastAPI app: built by a factory, so tests and processes each get their own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

from fastapi import APIRouter, FastAPI

from ostinato.deploy.schemas import Health
from ostinato.deploy.settings import Settings
from ostinato.queues.database import Database, connect
from ostinato.queues.migrate import upgrade
from ostinato.scheduler.api import bundles, deployments, errors, flow_runs, work_queues
from ostinato.scheduler.api.dependencies import DatabaseDep
from ostinato.scheduler.loops import SchedulerLoops

health = APIRouter(tags=["health"])


@health.get("/health", response_model=Health)
def read_health(database: DatabaseDep) -> Health:
    with database.read() as conn:
        conn.exec_driver_sql("SELECT 1")
    dialect = "sqlite" if database.is_sqlite else "postgresql"
    return Health(version=version("ostinato"), database=dialect)


def create_app(settings: Settings | None = None, database: Database | None = None) -> FastAPI:
    """The API under `/api` (OpenAPI at `/api/docs`).

    With no database given, the app opens the configured one at start-up, upgrades its schema,
    and closes it at shutdown.
    """
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = database is None
        app.state.database = database or connect(settings.effective_database_url)
        loops = SchedulerLoops(app.state.database, interval=settings.scheduler_interval_seconds)
        try:
            if owned:
                upgrade(app.state.database)
            if settings.run_scheduler:
                loops.start()
            yield
        finally:
            loops.stop()
            if owned:
                app.state.database.dispose()

    app = FastAPI(title="Ostinato", version=version("ostinato"), lifespan=lifespan,
                  docs_url="/api/docs", openapi_url="/api/openapi.json", redoc_url=None)
    app.state.settings = settings
    for router in (health, deployments.router, flow_runs.router, work_queues.router,
                   bundles.router):
        app.include_router(router, prefix="/api")
    errors.install(app)
    return app
