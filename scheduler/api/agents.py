"""`/api/agents` and `/api/claims`: agents register, heartbeat and claim runs.

A claim with `wait_seconds` is a long poll. It waits on the event loop — no thread, no database
connection — until work may be available (a notice from the store, see `queues.notify`), until
the next run of its queues falls due, or until the wait ends; then it tries again.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from ostinato.deploy.protocol import (
    Agent,
    AgentRegistration,
    ClaimedRun,
    ClaimRequest,
    Heartbeat,
    HeartbeatReply,
)
from ostinato.deploy.settings import Settings
from ostinato.queues import agents
from ostinato.queues.claims import ClaimOutcome, acquire_runs
from ostinato.queues.database import Database
from ostinato.queues.tables import agents as agents_table
from ostinato.scheduler.api.dependencies import DatabaseDep, NotifierDep, SettingsDep
from ostinato.scheduler.auth import AgentCaller

router = APIRouter(tags=["agents"])
CONTENDED_RETRY_SECONDS = 0.02


def _online_for(settings: Settings) -> timedelta:
    """An agent is online while its last heartbeat is younger than a lease."""
    return timedelta(seconds=settings.lease_seconds)


@router.post("/agents", response_model=Agent)
def register(body: AgentRegistration, caller: AgentCaller, database: DatabaseDep,
             settings: SettingsDep) -> Agent:
    """Register (or refresh) an agent; an agent key may register only for its queues, and
    only a name that is not registered for other queues."""
    caller.require_queues(body.queues)
    with database.write() as conn:
        if caller.limited_to_queues:
            caller.require_queues(agents.registered_queues(conn, agents_table.c.name == body.name))
        return agents.register(conn, body, datetime.now(UTC), _online_for(settings))


@router.get("/agents", response_model=list[Agent])
def list_all(database: DatabaseDep, settings: SettingsDep) -> list[Agent]:
    with database.read() as conn:
        return agents.list_agents(conn, datetime.now(UTC), _online_for(settings))


@router.post("/agents/{agent_id}/heartbeat", response_model=HeartbeatReply)
def heartbeat(agent_id: uuid.UUID, body: Heartbeat, caller: AgentCaller, database: DatabaseDep,
              settings: SettingsDep) -> HeartbeatReply:
    """Renew the leases of the runs the agent holds; answer which to cancel and which it
    lost."""
    with database.write() as conn:
        if caller.limited_to_queues:
            caller.require_queues(agents.registered_queues(conn, agents_table.c.id == agent_id))
        return agents.heartbeat(conn, agent_id, body, now=datetime.now(UTC),
                                lease=timedelta(seconds=settings.lease_seconds),
                                cancel_grace=settings.cancel_grace_seconds)


@router.post("/claims", response_model=list[ClaimedRun])
async def claim(body: ClaimRequest, request: Request, caller: AgentCaller, database: DatabaseDep,
                settings: SettingsDep, notifier: NotifierDep) -> list[ClaimedRun]:
    """Claim up to `limit` due runs; with `wait_seconds`, wait for some (a long poll)."""
    caller.require_queues(body.queues)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.wait_seconds
    prefetch = timedelta(seconds=body.prefetch_seconds)
    queues = frozenset(body.queues)
    baton = None
    while True:
        with notifier.waiter(queues, prefetch) as waiter:
            with request.app.state.metrics.timing_claim():  # one attempt, not the wait
                outcome = await run_in_threadpool(_claim_once, database, body, settings)
            if baton and len(outcome.runs) in (0, body.limit):  # not for us, or more left
                notifier.pass_on(baton, waiter, found_nothing=not outcome.runs)
            left = deadline - loop.time()
            if outcome.runs or left <= 0:
                return outcome.runs
            baton = await waiter.sleep(min(left, _until_worth_retrying(outcome, prefetch)))
        if notifier.closed:  # the server is shutting down: answer now, with no runs
            return []
        if await request.is_disconnected():
            if baton:
                notifier.pass_on(baton, waiter, found_nothing=False)
            return []


def _claim_once(database: Database, body: ClaimRequest, settings: Settings) -> ClaimOutcome:
    with database.write() as conn:
        return acquire_runs(conn, body, lease=timedelta(seconds=settings.lease_seconds),
                            now=datetime.now(UTC))


def _until_worth_retrying(outcome: ClaimOutcome, prefetch: timedelta) -> float:
    if outcome.contended:
        return CONTENDED_RETRY_SECONDS
    if outcome.next_due is None:
        return float("inf")
    return max((outcome.next_due - prefetch - datetime.now(UTC)).total_seconds(), 0.0)
