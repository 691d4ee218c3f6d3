"""Deployments in the store: upsert by `flow/name`, read, edit, pause, resume, delete, run now.

Edits follow DESIGN.md §4 in the same transaction as the edit: a change of schedules, parameters
or tags replaces the deployment's untouched future auto-scheduled runs (SCHEDULED and never
claimed); claimed, running and finished runs are never touched. Pausing skips its waiting runs;
deleting skips them too, so no SCHEDULED run outlives its deployment.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, and_, delete, insert, select, update

from ostinato.deploy.errors import Conflict, InvalidInput, NotFound
from ostinato.deploy.parameters import check_parameters
from ostinato.deploy.schedules import SCHEDULE_ADAPTER
from ostinato.deploy.schemas import (
    ApplyResult,
    Deployment,
    DeploymentSpec,
    DeploymentUpdate,
    FlowRun,
    ManualRunRequest,
)
from ostinato.deploy.states import Reason, StateType
from ostinato.queues import runs
from ostinato.queues.database import insert_ignoring_duplicates
from ostinato.queues.schedules import NEVER
from ostinato.queues.tables import (
    bundles,
    deployments,
    flow_runs,
    flows,
    new_id,
    schedules,
    utcnow,
)

ACTOR = "server"


def apply(conn: Connection, specs: Sequence[DeploymentSpec]) -> ApplyResult:
    """Upsert deployments; all of them or none (the caller's transaction decides)."""
    names = [spec.full_name for spec in specs]
    if len(set(names)) != len(names):
        raise InvalidInput(f"deployment names repeat: {', '.join(sorted(names))}")
    result = ApplyResult()
    for spec in specs:
        outcome = _apply_one(conn, spec)
        getattr(result, outcome).append(spec.full_name)
        result.deployments.append(get(conn, spec.full_name))
    return result


def _apply_one(conn: Connection, spec: DeploymentSpec) -> str:
    _check_spec(conn, spec)
    row = _find(conn, spec.full_name, lock=True)
    if row is None:
        _insert(conn, spec)
        return "created"
    if row.spec_hash == _spec_hash(spec):
        return "unchanged"
    _update(conn, row, spec)
    return "updated"


def _check_spec(conn: Connection, spec: DeploymentSpec) -> None:
    if spec.bundle and not conn.execute(
        select(bundles.c.sha256).where(bundles.c.sha256 == spec.bundle)
    ).first():
        raise InvalidInput(f"bundle {spec.bundle} has not been uploaded")
    check_parameters(spec.parameter_schema, spec.parameters, complete=False)
    for schedule in spec.schedules:
        merged = {**spec.parameters, **schedule.parameters}
        check_parameters(spec.parameter_schema, merged, complete=True)


# `paused` is operational state: the spec's value applies when a deployment is created, and
# re-applying an unchanged file does not resume a deployment someone paused.
_NOT_UPSERTED = {"flow", "name", "schedules", "paused"}


def _spec_hash(spec: DeploymentSpec) -> str:
    values = spec.model_dump(mode="json", exclude={"paused"})
    canonical = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _columns(spec: DeploymentSpec) -> dict[str, Any]:
    values = spec.model_dump(mode="json", exclude=_NOT_UPSERTED)
    return {**values, "spec_hash": _spec_hash(spec), "updated": utcnow()}


def _flow_id(conn: Connection, name: str) -> uuid.UUID:
    """The flow's id, creating the flow if needed (concurrent creators agree on one row)."""
    conn.execute(insert_ignoring_duplicates(conn, flows, "name")
                 .values(id=new_id(), name=name, created=utcnow()))
    found: uuid.UUID = conn.execute(select(flows.c.id).where(flows.c.name == name)).scalar_one()
    return found


def _insert(conn: Connection, spec: DeploymentSpec) -> None:
    deployment_id = new_id()
    conn.execute(insert(deployments).values(
        id=deployment_id, flow_id=_flow_id(conn, spec.flow), name=spec.name,
        full_name=spec.full_name, paused=spec.paused, created=utcnow(), **_columns(spec),
    ))
    _insert_schedules(conn, deployment_id, spec.schedules, utcnow(), paused=spec.paused)


def _insert_schedules(conn: Connection, deployment_id: uuid.UUID, items: Sequence[Any],
                      now: datetime, *, paused: bool) -> None:
    """New schedule rows, materialised from `now` on (the next tick visits them)."""
    if items:
        conn.execute(insert(schedules), [
            {"id": new_id(), "deployment_id": deployment_id, "slug": s.slug, "position": i,
             "definition": s.model_dump(mode="json"), "active": s.active, "created": now,
             "scheduled_until": now, "visit_at": now if s.active and not paused else NEVER}
            for i, s in enumerate(items)
        ])


def _update(conn: Connection, row: Any, spec: DeploymentSpec) -> None:
    old = _to_schema(conn, row)
    conn.execute(update(deployments).where(deployments.c.id == row.id).values(**_columns(spec)))
    if _runs_affected(old, spec):
        _replace_schedules(conn, row.id, spec.schedules, utcnow(), paused=row.paused)


def _runs_affected(old: Deployment, new: DeploymentSpec | DeploymentUpdate) -> bool:
    """Whether an edit changes what future runs would look like."""
    fields = ("schedules", "parameters", "tags")
    return any(
        getattr(new, name) is not None and getattr(new, name) != getattr(old, name)
        for name in fields
    )


def _replace_schedules(conn: Connection, deployment_id: uuid.UUID, items: Sequence[Any],
                       now: datetime, *, paused: bool) -> None:
    """Untouched runs of slots after `now` go; the new schedules take over from `now`, so no
    slot between the edit and the next tick is lost."""
    conn.execute(delete(schedules).where(schedules.c.deployment_id == deployment_id))
    c = flow_runs.c
    conn.execute(delete(flow_runs).where(and_(
        c.deployment_id == deployment_id, c.auto_scheduled.is_(True),
        c.state == StateType.SCHEDULED.value, c.fencing_token == 0, c.nominal_time > now,
    )))
    _insert_schedules(conn, deployment_id, items, now, paused=paused)


def _waiting_runs(deployment_id: uuid.UUID) -> Any:
    return and_(flow_runs.c.deployment_id == deployment_id,
                flow_runs.c.state == StateType.SCHEDULED.value)


def _set_paused(conn: Connection, deployment_id: uuid.UUID, paused: bool) -> None:
    now = utcnow()
    conn.execute(update(deployments).where(deployments.c.id == deployment_id)
                 .values(paused=paused, updated=now))
    own = schedules.c.deployment_id == deployment_id
    if paused:
        runs.set_states(conn, _waiting_runs(deployment_id), StateType.SKIPPED,
                        reason=Reason.PAUSED, message="deployment paused", actor=ACTOR)
        conn.execute(update(schedules).where(own).values(visit_at=NEVER))
        return
    # Resuming creates runs from now on: future slots skipped by the pause become free again.
    c = flow_runs.c
    conn.execute(delete(flow_runs).where(and_(
        c.deployment_id == deployment_id, c.state == StateType.SKIPPED.value,
        c.reason == Reason.PAUSED.value, c.auto_scheduled.is_(True), c.nominal_time > now,
    )))
    conn.execute(update(schedules).where(own, schedules.c.active.is_(True))
                 .values(scheduled_until=now, visit_at=now))


def _find(conn: Connection, full_name: str, *, lock: bool = False) -> Any:
    """The deployment's row; with `lock`, held (with its schedule rows) until the transaction
    ends.

    Every writer locks in the same order — deployment row, then schedule rows — and the
    schedule rows are what a scheduler tick holds while it inserts runs, so an edit, pause or
    delete waits for a tick in progress and then sees every run it made. The deployment row is
    locked FOR NO KEY UPDATE, which does not conflict with the key-share lock a tick's run
    inserts take through their foreign key.
    """
    query = select(deployments).where(deployments.c.full_name == full_name)
    row = conn.execute(query.with_for_update(key_share=True) if lock else query).first()
    if row is not None and lock:
        conn.execute(select(schedules.c.id).where(schedules.c.deployment_id == row.id)
                     .with_for_update())
    return row


def _require(conn: Connection, full_name: str, *, lock: bool = False) -> Any:
    row = _find(conn, full_name, lock=lock)
    if row is None:
        raise NotFound(f"deployment {full_name!r} not found")
    return row


def get(conn: Connection, full_name: str) -> Deployment:
    return _to_schema(conn, _require(conn, full_name))


def list_deployments(conn: Connection, *, flow: str | None = None, tag: str | None = None,
                     paused: bool | None = None, limit: int = 100, offset: int = 0
                     ) -> list[Deployment]:
    query = select(deployments).order_by(deployments.c.full_name)
    if flow:
        query = query.where(deployments.c.full_name.startswith(f"{flow}/", autoescape=True))
    if paused is not None:
        query = query.where(deployments.c.paused.is_(paused))
    rows = conn.execute(query).all()
    if tag:
        rows = [row for row in rows if tag in row.tags]
    rows = rows[offset:offset + min(limit, runs.MAX_PAGE)]
    by_deployment = _schedules_of(conn, [row.id for row in rows])
    return [_to_schema(conn, row, by_deployment.get(row.id, [])) for row in rows]


def _schedules_of(conn: Connection, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
    found: dict[uuid.UUID, list[Any]] = {}
    if not ids:
        return found
    query = (select(schedules).where(schedules.c.deployment_id.in_(ids))
             .order_by(schedules.c.position))
    for row in conn.execute(query):
        schedule = SCHEDULE_ADAPTER.validate_python(row.definition)
        found.setdefault(row.deployment_id, []).append(schedule)
    return found


def _to_schema(conn: Connection, row: Any, items: list[Any] | None = None) -> Deployment:
    if items is None:
        items = _schedules_of(conn, [row.id]).get(row.id, [])
    fields = {name: getattr(row, name) for name in Deployment.model_fields
              if name not in ("name", "flow", "schedules")}
    return Deployment(**fields, name=row.full_name, flow=row.full_name.split("/", 1)[0],
                      schedules=items)


def edit(conn: Connection, full_name: str, changes: DeploymentUpdate) -> Deployment:
    """Apply a partial edit as if the whole spec had been re-sent."""
    _require(conn, full_name, lock=True)
    current = get(conn, full_name)
    merged = current.model_dump(include=set(DeploymentSpec.model_fields)) | {
        "flow": current.flow, "name": full_name.split("/", 1)[1],
        **{field: getattr(changes, field) for field in changes.model_fields_set},
    }
    _apply_one(conn, DeploymentSpec.model_validate(merged))
    return get(conn, full_name)


def set_paused(conn: Connection, full_name: str, paused: bool) -> Deployment:
    row = _require(conn, full_name, lock=True)
    if row.paused != paused:
        _set_paused(conn, row.id, paused)
    return get(conn, full_name)


def remove(conn: Connection, full_name: str) -> None:
    row = _require(conn, full_name, lock=True)
    runs.set_states(conn, _waiting_runs(row.id), StateType.SKIPPED,
                    reason=Reason.DEPLOYMENT_DELETED, message="deployment deleted", actor=ACTOR)
    conn.execute(delete(deployments).where(deployments.c.id == row.id))


def create_manual_run(conn: Connection, full_name: str, request: ManualRunRequest) -> FlowRun:
    """A run outside any schedule; it survives schedule edits."""
    row = _require(conn, full_name, lock=True)
    parameters = {**row.parameters, **request.parameters}
    check_parameters(row.parameter_schema, parameters, complete=True)
    when = request.scheduled_time or utcnow() + timedelta(seconds=request.start_in or 0)
    if row.paused:
        raise Conflict(f"deployment {full_name!r} is paused; resume it to run it")
    values = runs.new_run_values(
        name=f"{row.name}-manual-{uuid.uuid4().hex[:6]}", flow_name=full_name.split("/", 1)[0],
        deployment_id=row.id, deployment_name=full_name, schedule_slug=None,
        nominal_time=when, scheduled_time=when, parameters=parameters,
        tags=sorted(set(row.tags) | set(request.tags)), auto_scheduled=False,
    )
    runs.insert_runs(conn, [values])
    return runs.get_run(conn, values["id"])
