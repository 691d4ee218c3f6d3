"""`/api/deployments`: upsert a file's deployments, read, edit, pause, resume, delete, run now."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import Field

from ostinato.deploy.schemas import (
    ApplyResult,
    Deployment,
    DeploymentSpec,
    DeploymentUpdate,
    FlowRun,
    ManualRunRequest,
    Strict,
)
from ostinato.queues import deployments
from ostinato.scheduler.api.dependencies import DatabaseDep

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
