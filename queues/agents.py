"""Agents in the store: registration, heartbeats (which renew the leases of the runs an agent
holds and tell it which to stop), and the list `ostinato agent ls` shows."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from ostinato.deploy.errors import NotFound
from ostinato.deploy.protocol import (
    Agent,
    AgentRegistration,
    CancelOrder,
    Heartbeat,
    HeartbeatReply,
)
from ostinato.deploy.states import Reason, StateType
from ostinato.queues.limits import holding_a_slot
from ostinato.queues.tables import agents, flow_runs, new_id


def register(conn: Connection, registration: AgentRegistration, now: datetime,
             online_for: timedelta) -> Agent:
    """Create the agent, or refresh it if one of that name registered before (same id)."""
    values = registration.model_dump()
    changed = conn.execute(update(agents).where(agents.c.name == registration.name)
                           .values(last_heartbeat=now, **values)).rowcount
    if not changed:
        conn.execute(insert(agents).values(id=new_id(), created=now, last_heartbeat=now,
                                           **values))
    return get(conn, registration.name, now, online_for)


def get(conn: Connection, name: str, now: datetime, online_for: timedelta) -> Agent:
    found = _listed(conn, now, online_for, agents.c.name == name)
    if not found:
        raise NotFound(f"agent {name!r} not found")
    return found[0]


def registered_queues(conn: Connection, *where: Any) -> list[str]:
    """The queues of the agent the condition picks (none if there is no such agent)."""
    queues: list[str] | None = conn.execute(select(agents.c.queues).where(*where)).scalar()
    return queues or []


def list_agents(conn: Connection, now: datetime, online_for: timedelta) -> list[Agent]:
    return _listed(conn, now, online_for)


def _listed(conn: Connection, now: datetime, online_for: timedelta, *where: Any) -> list[Agent]:
    c = flow_runs.c
    running = (select(c.agent_id, func.count().label("running")).where(holding_a_slot())
               .group_by(c.agent_id).subquery())
    query = (select(agents, func.coalesce(running.c.running, 0).label("running"))
             .outerjoin(running, running.c.agent_id == agents.c.id)
             .where(*where).order_by(agents.c.name))
    return [Agent(**{**row._mapping, "status": _status(row.last_heartbeat, now, online_for)})
            for row in conn.execute(query)]


def _status(last_heartbeat: datetime, now: datetime, online_for: timedelta) -> str:
    return "online" if last_heartbeat >= now - online_for else "offline"


def heartbeat(conn: Connection, agent_id: uuid.UUID, beat: Heartbeat, *, now: datetime,
              lease: timedelta, cancel_grace: float) -> HeartbeatReply:
    """Renew the leases of the runs the agent names (with their current fencing tokens);
    the others it names are lost to it. Runs being cancelled come back as cancel orders."""
    found = conn.execute(update(agents).where(agents.c.id == agent_id)
                         .values(last_heartbeat=now)).rowcount
    if not found:
        raise NotFound(f"agent {agent_id} is not registered")
    tokens = {run.id: run.fencing_token for run in beat.runs}
    c = flow_runs.c
    held_ids = _held(conn, agent_id, tokens)
    held = conn.execute(
        update(flow_runs).where(c.id.in_(held_ids)).values(lease_expires=now + lease)
        .returning(c.id, c.state, c.reason)
    ).all() if held_ids else []
    return HeartbeatReply(
        lease_seconds=lease.total_seconds(),
        cancel=[CancelOrder(id=row.id, grace_seconds=_grace(row.reason, cancel_grace))
                for row in held if row.state == StateType.CANCELLING],
        lost=[run_id for run_id in tokens if run_id not in held_ids],
    )


def _held(conn: Connection, agent_id: uuid.UUID, tokens: dict[uuid.UUID, int]
          ) -> set[uuid.UUID]:
    """The named runs the agent still holds with the tokens it names (locked until the end of
    the transaction, so their leases are renewed as they are now)."""
    if not tokens:
        return set()
    c = flow_runs.c
    rows = conn.execute(select(c.id, c.fencing_token).where(
        c.id.in_(tokens), c.agent_id == agent_id, holding_a_slot()).with_for_update())
    return {row.id for row in rows if tokens[row.id] == row.fencing_token}


def _grace(reason: str | None, cancel_grace: float) -> float:
    return 0.0 if reason == Reason.OVERLAP_TERMINATE else cancel_grace
