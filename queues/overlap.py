"""Overlap policies (DESIGN.md §4): what a due run does while another run of its deployment is
claimed (PENDING, RUNNING or CANCELLING). Enforced by the claim, with the deployment's name
locked, so two claims never both see "nothing running".

- `allow`: start it.
- `skip`: skip it (`overlap_skip`).
- `buffer_one`: the oldest waiting run waits; newer ones are skipped.
- `buffer_all`: every due run waits its turn.
- `cancel_other`: ask the running one to stop (`overlap_cancel`); start once it has.
- `terminate_other`: kill the running one at once (`overlap_terminate`) and start now.

A claim starts at most one run of a deployment whose policy is not `allow`; any further due runs
of it in the same claim are treated as overlapping the one it just started (without stopping it).
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, select

from ostinato.deploy.states import Reason, StateType
from ostinato.queues import limits, runs
from ostinato.queues.tables import flow_runs

STOPPING = {"cancel_other": Reason.OVERLAP_CANCEL, "terminate_other": Reason.OVERLAP_TERMINATE}


@dataclass
class Overlap:
    policies: dict[uuid.UUID, str]
    active: dict[uuid.UUID, list[Any]]  # deployment -> its claimed runs (id, state)
    started: set[uuid.UUID] = field(default_factory=set)  # deployments started by this claim
    buffered: set[uuid.UUID] = field(default_factory=set)
    skip: list[uuid.UUID] = field(default_factory=list)
    stop: dict[Reason, set[uuid.UUID]] = field(default_factory=lambda: defaultdict(set))

    @classmethod
    def load(cls, conn: Connection, policies: dict[uuid.UUID, str]) -> Overlap:
        """The policies of the given deployments (those not `allow`) and their claimed runs."""
        c = flow_runs.c
        active: dict[uuid.UUID, list[Any]] = defaultdict(list)
        if policies:
            query = select(c.deployment_id, c.id, c.state).where(
                c.deployment_id.in_(policies), limits.holding_a_slot())
            for row in conn.execute(query):
                active[row.deployment_id].append(row)
        return cls(policies, active)

    def admit(self, deployment_id: uuid.UUID, run_id: uuid.UUID) -> bool:
        """Whether the due run may start now; records what its policy does otherwise."""
        policy = self.policies.get(deployment_id, "allow")
        if policy == "allow":
            return True
        if deployment_id in self.started:
            self._hold_or_skip(policy, deployment_id, run_id)
            return False
        running = self.active[deployment_id]
        if running and policy in STOPPING:
            self.stop[STOPPING[policy]].update(
                row.id for row in running if row.state != StateType.CANCELLING)
        if running and policy != "terminate_other":
            self._hold_or_skip(policy, deployment_id, run_id)
            return False
        self.started.add(deployment_id)
        return True

    def _hold_or_skip(self, policy: str, deployment_id: uuid.UUID, run_id: uuid.UUID) -> None:
        if policy == "skip" or (policy == "buffer_one" and deployment_id in self.buffered):
            self.skip.append(run_id)
        elif policy == "buffer_one":
            self.buffered.add(deployment_id)

    def apply(self, conn: Connection, *, actor: str) -> None:
        """Skip the runs the policies drop and ask the runs they replace to stop."""
        c = flow_runs.c
        if self.skip:
            runs.set_states(conn, c.id.in_(self.skip) & (c.state == StateType.SCHEDULED.value),
                            StateType.SKIPPED, reason=Reason.OVERLAP_SKIP, actor=actor,
                            message="another run of the deployment was still running")
        for reason, ids in self.stop.items():
            runs.set_states(conn, c.id.in_(ids) & c.state.in_(_stoppable()),
                            StateType.CANCELLING, reason=reason, actor=actor,
                            message="a newer run of the deployment replaces it")


def _stoppable() -> Iterable[str]:
    return (StateType.PENDING.value, StateType.RUNNING.value)
