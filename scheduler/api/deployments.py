"""`/api/deployments`: upsert a file's deployments, read, edit, pause, resume, delete, run now."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import Field

from ostinato.deploy.errors import InvalidInput
from ostinato.deploy.schedules import within_supported_years
from ostinato.deploy.schemas import (
    ApplyResult,
    BackfillRequest,
    BackfillResult,
    Deployment,
    DeploymentSpec,
    DeploymentUpdate,
    FlowRun,
    ManualRunRequest,
    ScheduledInstant,
    Strict,
)
from ostinato.queues import backfill as queued_backfill
from ostinato.queues import deployments
from ostinato.scheduler import instants
from ostinato.scheduler.api.dependencies import DatabaseDep, as_utc

router = APIRouter(prefix="/deployments", tags=["deployments"])
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=1_000_000_000)]


class ApplyRequest(Strict):
    deployments: Annotated[list[DeploymentSpec], Field(min_length=1, max_length=1000)]


@router.put("", response_model=ApplyResult)
def apply(body: ApplyRequest, database: DatabaseDep) -> ApplyResult:
    """Create or update deployments by `flow/name`, all in one transaction; unchanged ones stay."""
    with database.write() as conn:
        return deployments.apply(conn, body.deployments)


@router.get("", response_model=list[Deployment])
def list_all(database: DatabaseDep, flow: str | None = None, tag: str | None = None,
             paused: bool | None = None, limit: Limit = 100, offset: Offset = 0
             ) -> list[Deployment]:
    with database.read() as conn:
        return deployments.list_deployments(conn, flow=flow, tag=tag, paused=paused,
                                            limit=limit, offset=offset)


@router.get("/{flow}/{name}", response_model=Deployment)
def read(flow: str, name: str, database: DatabaseDep) -> Deployment:
    with database.read() as conn:
        return deployments.get(conn, f"{flow}/{name}")


@router.patch("/{flow}/{name}", response_model=Deployment)
def edit(flow: str, name: str, body: DeploymentUpdate, database: DatabaseDep) -> Deployment:
    with database.write() as conn:
        return deployments.edit(conn, f"{flow}/{name}", body)


@router.post("/{flow}/{name}/pause", response_model=Deployment)
def pause(flow: str, name: str, database: DatabaseDep) -> Deployment:
    with database.write() as conn:
        return deployments.set_paused(conn, f"{flow}/{name}", True)


@router.post("/{flow}/{name}/resume", response_model=Deployment)
def resume(flow: str, name: str, database: DatabaseDep) -> Deployment:
    with database.write() as conn:
        return deployments.set_paused(conn, f"{flow}/{name}", False)


@router.delete("/{flow}/{name}", status_code=status.HTTP_204_NO_CONTENT)
def remove(flow: str, name: str, database: DatabaseDep) -> None:
    with database.write() as conn:
        deployments.remove(conn, f"{flow}/{name}")


@router.post("/{flow}/{name}/runs", response_model=FlowRun, status_code=status.HTTP_201_CREATED)
def run_now(flow: str, name: str, body: ManualRunRequest, database: DatabaseDep) -> FlowRun:
    with database.write() as conn:
        return deployments.create_manual_run(conn, f"{flow}/{name}", body)


@router.get("/{flow}/{name}/upcoming", response_model=list[ScheduledInstant])
def upcoming(flow: str, name: str, database: DatabaseDep,
             n: Annotated[int, Query(ge=1, le=1000)] = 10,
             after: datetime | None = None) -> list[ScheduledInstant]:
    """The next `n` instants of the deployment's active schedules (after now, or `after`)."""
    with database.read() as conn:
        deployment = deployments.get(conn, f"{flow}/{name}")
    start = as_utc(after) or datetime.now(UTC)
    try:
        within_supported_years(start)
    except ValueError as exc:
        raise InvalidInput(f"after: {exc}") from None
    slots = instants.upcoming(deployment.schedules, start, n)
    return [ScheduledInstant.model_validate(slot.to_json()) for slot in slots]


@router.post("/{flow}/{name}/backfill", response_model=BackfillResult)
def backfill(flow: str, name: str, body: BackfillRequest, database: DatabaseDep
             ) -> BackfillResult:
    """Create the runs the window [start, end] would have had; `dry_run` only lists them."""
    with database.write() as conn:
        deployment = deployments.get(conn, f"{flow}/{name}")
        slots = instants.between(deployment.schedules, body.start, body.end)
        by_identity = {(slot.slug, slot.instant.time): slot for slot in slots}
        missing = queued_backfill.missing_slots(conn, deployment.id, list(by_identity))
        if not body.dry_run:
            overrides = {s.slug: s.parameters for s in deployment.schedules}
            queued_backfill.create(conn, deployment, missing, overrides)
    return BackfillResult(
        deployment=deployment.name, dry_run=body.dry_run,
        runs=[ScheduledInstant.model_validate(by_identity[slot].to_json()) for slot in missing],
        already_present=len(slots) - len(missing),
    )
