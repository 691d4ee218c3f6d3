"""Contract tests of the claim and its companions (DESIGN.md §2, §4–6), on SQLite and PostgreSQL.

`acquire_runs` (order, limits, overlap and catch-up at claim time), the fenced state reports,
cancellation, the reaper and retries, heartbeats, and `flow-run explain`. Every test calls the
store's functions in `database.write()` / `database.read()` transactions as the API does, with an
explicit `now`; runs are inserted directly (`runs.insert_runs`) at times relative to `NOW`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from ostinato.deploy.errors import Conflict, InvalidInput, NotFound, StaleFencingToken
from ostinato.deploy.protocol import (
    AgentRegistration,
    ClaimedRun,
    ClaimRequest,
    ConcurrencyLimitSpec,
    Heartbeat,
    HeartbeatReply,
    HeldRun,
    StateReport,
)
from ostinato.deploy.schemas import Deployment, DeploymentSpec, FlowRun, WorkQueueSpec
from ostinato.deploy.states import StateType
from ostinato.queues import agents, deployments, leases, limits, runs, work_queues
from ostinato.queues.claims import ClaimOutcome, acquire_runs
from ostinato.queues.database import Database
from ostinato.queues.explain import explain
from ostinato.queues.tables import flow_runs
from ostinato.queues.tables import work_queues as work_queue_rows

S = StateType
NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MINUTE = timedelta(minutes=1)
LEASE = timedelta(seconds=30)
ONLINE_FOR = timedelta(seconds=60)
GRACE = 30.0


@dataclass
class Store:
    """The database plus the few steps every test takes, each in its own transaction."""

    db: Database

    def deploy(self, name: str = "d", **fields: Any) -> Deployment:
        spec = DeploymentSpec(flow="f", name=name, entrypoint="f.py:f", path="/srv/f", **fields)
        with self.db.write() as conn:
            return deployments.apply(conn, [spec]).deployments[0]

    def queue(self, name: str = "q", **fields: Any) -> None:
        with self.db.write() as conn:
            work_queues.create(conn, WorkQueueSpec(name=name, **fields))

    def agent(self, name: str = "a1") -> uuid.UUID:
        registration = AgentRegistration(name=name, host="host", queues=["q"])
        with self.db.write() as conn:
            return agents.register(conn, registration, NOW, ONLINE_FOR).id

    def run(self, deployment: Deployment, when: datetime, *, tags: tuple[str, ...] = (),
            slug: str | None = None) -> uuid.UUID:
        """A waiting run at `when`: manual, or auto-scheduled in the schedule `slug`."""
        values = runs.new_run_values(
            name=f"run-{uuid.uuid4().hex[:8]}", flow_name=deployment.flow,
            deployment_id=deployment.id, deployment_name=deployment.name, schedule_slug=slug,
            nominal_time=when, scheduled_time=when, parameters={}, auto_scheduled=slug is not None,
            tags=sorted({*deployment.tags, *tags}))
        with self.db.write() as conn:
            runs.insert_runs(conn, [values])
        run_id: uuid.UUID = values["id"]
        return run_id

    def claim(self, agent_id: uuid.UUID, *queues: str, limit: int = 1, prefetch: float = 0,
              now: datetime = NOW) -> ClaimOutcome:
        request = ClaimRequest(agent_id=agent_id, queues=list(queues or ["q"]), limit=limit,
                               prefetch_seconds=prefetch)
        with self.db.write() as conn:
            return acquire_runs(conn, request, lease=LEASE, now=now)

    def claim_one(self, agent_id: uuid.UUID, *queues: str, now: datetime = NOW) -> ClaimedRun:
        outcome = self.claim(agent_id, *queues, now=now)
        assert len(outcome.runs) == 1, outcome
        return outcome.runs[0]

    def report(self, run: ClaimedRun, state: StateType, *, now: datetime = NOW, **fields: Any
               ) -> FlowRun:
        """The holder of `run` (with the token its claim returned) reports `state`."""
        report = StateReport(state=state, fencing_token=run.fencing_token, **fields)
        with self.db.write() as conn:
            return leases.report_state(conn, run.id, report, now=now)

    def start(self, agent_id: uuid.UUID) -> ClaimedRun:
        """Claim one run from `q` and report it RUNNING."""
        run = self.claim_one(agent_id)
        self.report(run, S.RUNNING)
        return run

    def cancel(self, run_id: uuid.UUID) -> FlowRun:
        with self.db.write() as conn:
            return leases.cancel(conn, run_id, actor="alice", now=NOW)

    def reap(self, now: datetime) -> tuple[int, int]:
        with self.db.write() as conn:
            return leases.reap_expired(conn, now)

    def heartbeat(self, agent_id: uuid.UUID, *held: ClaimedRun | tuple[uuid.UUID, int],
                  now: datetime = NOW) -> HeartbeatReply:
        beat = Heartbeat(runs=[HeldRun(id=run.id, fencing_token=run.fencing_token)
                               if isinstance(run, ClaimedRun)
                               else HeldRun(id=run[0], fencing_token=run[1]) for run in held])
        with self.db.write() as conn:
            return agents.heartbeat(conn, agent_id, beat, now=now, lease=LEASE,
                                    cancel_grace=GRACE)

    def set_limit(self, tag: str, limit: int) -> None:
        with self.db.write() as conn:
            limits.set_limit(conn, ConcurrencyLimitSpec(tag=tag, limit=limit))

    def row(self, run_id: uuid.UUID) -> Any:
        with self.db.read() as conn:
            return conn.execute(select(flow_runs).where(flow_runs.c.id == run_id)).one()

    def state(self, run_id: uuid.UUID) -> tuple[str, str | None]:
        found = self.row(run_id)
        return found.state, found.reason

    def history(self, run_id: uuid.UUID) -> list[tuple[str, str, str | None, int]]:
        with self.db.read() as conn:
            return [(entry.type.value, entry.name, entry.reason, entry.attempt)
                    for entry in runs.state_history(conn, run_id)]

    def holds(self, run_id: uuid.UUID, now: datetime = NOW) -> dict[str, set[uuid.UUID]]:
        """`flow-run explain`: each hold's code and its holders."""
        with self.db.read() as conn:
            explanation = explain(conn, run_id, now)
        assert explanation.claimable == (not explanation.holds)
        return {hold.code: set(hold.holders) for hold in explanation.holds}


@pytest.fixture
def store(database: Database) -> Store:
    return Store(database)


@pytest.fixture
def agent_id(store: Store) -> uuid.UUID:
    """A registered agent polling the catch-all queue `q`."""
    store.queue()
    return store.agent()


def ids(outcome: ClaimOutcome) -> list[uuid.UUID]:
    return [run.id for run in outcome.runs]


def claimed_in(store: Store, queue: str) -> int:
    with store.db.read() as conn:
        return limits.active_by_queue(conn, [queue])[queue]


# --- order, limit, prefetch, what is not claimable -----------------------------------------------


def test_claims_by_queue_priority_then_scheduled_time(store: Store) -> None:
    d = store.deploy()
    store.queue("low", priority=5, filter={"tags": ["low"]})
    store.queue("high", priority=1, filter={"tags": ["high"]})
    agent_id = store.agent()
    oldest_low = store.run(d, NOW - 3 * MINUTE, tags=("low",))
    newer_high = store.run(d, NOW - MINUTE, tags=("high",))
    older_high = store.run(d, NOW - 2 * MINUTE, tags=("high",))
    order = [store.claim_one(agent_id, "low", "high").id for _ in range(3)]
    assert order == [older_high, newer_high, oldest_low]


def test_a_run_matching_several_queues_is_claimed_once_through_the_first(store: Store) -> None:
    d = store.deploy()
    store.queue("b", priority=1, filter={"exclude_tags": ["late"]})
    store.queue("a", priority=1, filter={"exclude_tags": ["late"]})
    store.queue("c", priority=0, filter={"tags": ["c"]})
    store.queue("z", priority=9)
    agent_id = store.agent()
    shared = store.run(d, NOW - 3 * MINUTE)  # matches a, b and z
    tagged = store.run(d, NOW - 2 * MINUTE, tags=("c",))  # matches every queue
    only_z = store.run(d, NOW - MINUTE, tags=("late",))
    outcome = store.claim(agent_id, "z", "b", "a", "c", limit=3)
    assert {run.id: run.work_queue for run in outcome.runs} == {
        tagged: "c", shared: "a", only_z: "z"}
    assert store.row(shared).fencing_token == 1
    assert [entry[0] for entry in store.history(shared)] == ["SCHEDULED", "PENDING"]


def test_a_claim_takes_at_most_limit_runs_the_oldest_first(store: Store, agent_id: uuid.UUID
                                                            ) -> None:
    d = store.deploy()
    waiting = [store.run(d, NOW - i * MINUTE) for i in range(5)]
    outcome = store.claim(agent_id, limit=2)
    assert ids(outcome) == [waiting[4], waiting[3]]
    assert {store.state(run_id)[0] for run_id in waiting[:3]} == {"SCHEDULED"}


def test_prefetch_claims_runs_due_within_it_and_no_later(store: Store, agent_id: uuid.UUID
                                                         ) -> None:
    d = store.deploy()
    soon = store.run(d, NOW + 20 * SECOND)
    store.run(d, NOW + 40 * SECOND)
    assert store.claim(agent_id, limit=5).runs == []
    outcome = store.claim(agent_id, limit=5, prefetch=30)
    assert ids(outcome) == [soon]
    assert outcome.runs[0].scheduled_time == NOW + 20 * SECOND


def test_next_due_tells_when_the_earliest_matching_run_falls_due(store: Store) -> None:
    d = store.deploy()
    store.queue("q", filter={"tags": ["mine"]})
    agent_id = store.agent()
    store.run(d, NOW + 2 * MINUTE)  # not for this queue
    store.run(d, NOW + 5 * MINUTE, tags=("mine",))
    outcome = store.claim(agent_id)
    assert outcome.runs == [] and not outcome.contended
    assert outcome.next_due == NOW + 5 * MINUTE


def test_a_paused_queue_hands_out_nothing(store: Store) -> None:
    d = store.deploy()
    store.queue("q", paused=True)
    agent_id = store.agent()
    waiting = store.run(d, NOW - MINUTE)
    store.run(d, NOW + MINUTE)
    assert store.claim(agent_id) == ClaimOutcome([], None, contended=False)
    assert store.state(waiting) == ("SCHEDULED", None)


def test_runs_of_a_paused_deployment_are_not_claimed(store: Store, agent_id: uuid.UUID) -> None:
    paused = store.deploy("paused", paused=True)
    waiting = store.run(paused, NOW - MINUTE)  # e.g. given back by the reaper after the pause
    outcome = store.claim(agent_id)
    assert outcome.runs == [] and outcome.next_due is None
    assert store.state(waiting) == ("SCHEDULED", None)


def test_an_unknown_agent_or_queue_is_not_found_and_changes_nothing(store: Store,
                                                                    agent_id: uuid.UUID) -> None:
    waiting = store.run(store.deploy(), NOW - MINUTE)
    with pytest.raises(NotFound, match="agent"):
        store.claim(uuid.uuid4())
    with pytest.raises(NotFound, match="'nope'"):
        store.claim(agent_id, "q", "nope")
    assert store.state(waiting) == ("SCHEDULED", None)
    with store.db.read() as conn:
        assert conn.execute(select(work_queue_rows.c.last_polled)).scalar_one() is None


# --- queue and tag concurrency limits ------------------------------------------------------------


def test_a_queue_limit_is_never_exceeded_and_frees_a_slot_on_completion(store: Store) -> None:
    d = store.deploy()
    store.queue("q", concurrency_limit=2)
    first, second = store.agent("a1"), store.agent("a2")
    for i in range(4):
        store.run(d, NOW - i * MINUTE)
    held = store.claim(first, limit=10).runs
    assert len(held) == 2
    assert store.claim(second, limit=10).runs == []
    store.report(held[0], S.RUNNING)
    assert store.claim(second, limit=10).runs == []
    assert claimed_in(store, "q") == 2
    store.report(held[0], S.COMPLETED)
    assert len(store.claim(second, limit=10).runs) == 1
    assert claimed_in(store, "q") == 2


def test_a_tag_limit_holds_across_queues_and_frees_a_slot_on_completion(store: Store) -> None:
    d = store.deploy()
    store.queue("q1", priority=1)
    store.queue("q2", priority=2)
    store.set_limit("gpu", 1)
    first, second = store.agent("a1"), store.agent("a2")
    gpu = [store.run(d, NOW - i * MINUTE, tags=("gpu",)) for i in (3, 2, 1)]
    plain = store.run(d, NOW)
    outcome = store.claim(first, "q1", limit=10)
    assert sorted(ids(outcome)) == sorted([gpu[0], plain])
    assert store.claim(second, "q2", limit=10).runs == []
    store.report(outcome.runs[0], S.RUNNING)
    store.report(outcome.runs[0], S.COMPLETED)
    assert ids(store.claim(second, "q2", limit=10)) == [gpu[1]]
    with store.db.read() as conn:
        assert limits.get_limit(conn, "gpu").active == 1


def test_runs_overflowing_a_full_queue_go_through_another_with_room(store: Store) -> None:
    d = store.deploy()
    store.queue("small", priority=1, concurrency_limit=1)
    store.queue("other", priority=1, concurrency_limit=1)
    store.queue("big", priority=5)
    agent_id = store.agent()
    waiting = [store.run(d, NOW - i * MINUTE) for i in (4, 3, 2, 1)]
    outcome = store.claim(agent_id, "small", "other", "big", limit=4)
    assert {run.id: run.work_queue for run in outcome.runs} == {
        waiting[0]: "other", waiting[1]: "small", waiting[2]: "big", waiting[3]: "big"}


# --- overlap policies ----------------------------------------------------------------------------


def overlapping(store: Store, agent_id: uuid.UUID, policy: str, due: int, name: str = "d"
                ) -> tuple[ClaimedRun, list[uuid.UUID]]:
    """A RUNNING run of a deployment with the `policy`, and `due` newer runs of it, oldest first."""
    d = store.deploy(name, overlap=policy)
    store.run(d, NOW - 10 * MINUTE)
    running = store.start(agent_id)
    return running, [store.run(d, NOW - (due - i) * MINUTE) for i in range(due)]


def test_overlap_allow_starts_a_run_while_another_runs(store: Store, agent_id: uuid.UUID
                                                       ) -> None:
    running, (new,) = overlapping(store, agent_id, "allow", due=1)
    assert ids(store.claim(agent_id)) == [new]
    assert store.state(running.id) == ("RUNNING", None)


def test_overlap_skip_skips_a_run_due_while_another_runs(store: Store, agent_id: uuid.UUID
                                                         ) -> None:
    running, (new,) = overlapping(store, agent_id, "skip", due=1)
    assert store.claim(agent_id).runs == []
    assert store.state(new) == ("SKIPPED", "overlap_skip")
    assert store.state(running.id) == ("RUNNING", None)


def test_overlap_buffer_one_keeps_the_oldest_waiting_and_skips_newer(store: Store,
                                                                     agent_id: uuid.UUID) -> None:
    running, (older, newer) = overlapping(store, agent_id, "buffer_one", due=2)
    assert store.claim(agent_id, limit=5).runs == []
    assert store.state(older) == ("SCHEDULED", None)
    assert store.state(newer) == ("SKIPPED", "overlap_skip")
    assert store.claim(agent_id, limit=5).runs == []
    assert store.state(older) == ("SCHEDULED", None)
    store.report(running, S.COMPLETED)
    assert ids(store.claim(agent_id, limit=5)) == [older]


def test_overlap_buffer_all_starts_waiting_runs_one_after_another(store: Store,
                                                                  agent_id: uuid.UUID) -> None:
    running, (older, newer) = overlapping(store, agent_id, "buffer_all", due=2)
    assert store.claim(agent_id, limit=5).runs == []
    assert {store.state(older), store.state(newer)} == {("SCHEDULED", None)}
    store.report(running, S.COMPLETED)
    (second,) = store.claim(agent_id, limit=5).runs
    assert second.id == older
    assert store.claim(agent_id, limit=5).runs == []
    store.report(second, S.RUNNING)
    store.report(second, S.FAILED)
    assert ids(store.claim(agent_id, limit=5)) == [newer]


def test_overlap_cancel_other_asks_the_running_one_to_stop_and_waits(store: Store,
                                                                     agent_id: uuid.UUID) -> None:
    running, (new,) = overlapping(store, agent_id, "cancel_other", due=1)
    assert store.claim(agent_id).runs == []
    assert store.state(running.id) == ("CANCELLING", "overlap_cancel")
    assert store.heartbeat(agent_id, running).cancel[0].grace_seconds == GRACE
    assert store.claim(agent_id).runs == []
    assert store.state(new) == ("SCHEDULED", None)
    assert store.report(running, S.CANCELLED).reason == "overlap_cancel"
    assert ids(store.claim(agent_id)) == [new]


def test_overlap_terminate_other_kills_the_running_one_and_starts_at_once(store: Store,
                                                                          agent_id: uuid.UUID
                                                                          ) -> None:
    running, (new,) = overlapping(store, agent_id, "terminate_other", due=1)
    assert ids(store.claim(agent_id)) == [new]
    assert store.state(running.id) == ("CANCELLING", "overlap_terminate")
    reply = store.heartbeat(agent_id, running)
    assert [(order.id, order.grace_seconds) for order in reply.cancel] == [(running.id, 0.0)]


def test_a_run_matching_queues_of_two_priorities_is_started_not_skipped(store: Store) -> None:
    store.queue("first", priority=1)
    store.queue("second", priority=2)
    agent_id = store.agent()
    run_id = store.run(store.deploy(overlap="skip"), NOW - MINUTE)
    assert ids(store.claim(agent_id, "first", "second", limit=2)) == [run_id]
    assert store.state(run_id) == ("PENDING", None)


def test_runs_held_back_by_overlap_do_not_crowd_out_claimable_ones(store: Store,
                                                                   agent_id: uuid.UUID) -> None:
    for i in range(12):  # more than a claim looks at beyond its limit
        overlapping(store, agent_id, "buffer_one", due=1, name=f"busy{i}")
    free = store.run(store.deploy("free"), NOW)
    assert ids(store.claim(agent_id)) == [free]


# --- catch-up at claim time ----------------------------------------------------------------------


def missed_slots(store: Store, catchup: str) -> tuple[Deployment, list[uuid.UUID]]:
    """Auto-scheduled runs of one schedule, 30, 20 and 10 minutes overdue (grace: 5 minutes),
    and one 1 minute overdue, still waiting: the agents were down."""
    d = store.deploy(catchup=catchup, misfire_grace=300)
    return d, [store.run(d, NOW - minutes * MINUTE, slug="every10")
               for minutes in (30, 20, 10, 1)]


def test_catchup_all_claims_every_missed_slot(store: Store, agent_id: uuid.UUID) -> None:
    _, waiting = missed_slots(store, "all")
    assert ids(store.claim(agent_id, limit=10)) == waiting


def test_catchup_latest_claims_the_newest_missed_slot_and_supersedes_older(
        store: Store, agent_id: uuid.UUID) -> None:
    _, (oldest, older, newest_missed, on_time) = missed_slots(store, "latest")
    assert ids(store.claim(agent_id, limit=10)) == [newest_missed, on_time]
    assert {store.state(oldest), store.state(older)} == {("SKIPPED", "superseded")}


def test_catchup_none_skips_missed_slots_and_claims_those_within_grace(
        store: Store, agent_id: uuid.UUID) -> None:
    _, (*missed, on_time) = missed_slots(store, "none")
    assert ids(store.claim(agent_id, limit=10)) == [on_time]
    assert {store.state(run_id) for run_id in missed} == {("SKIPPED", "catchup_missed")}
    assert store.history(missed[0])[-1] == ("SKIPPED", "Skipped", "catchup_missed", 1)


def test_manual_runs_are_exempt_from_catchup(store: Store, agent_id: uuid.UUID) -> None:
    d, _ = missed_slots(store, "none")
    manual = [store.run(d, NOW - hours * timedelta(hours=1)) for hours in (3, 2)]
    outcome = store.claim(agent_id, limit=10)
    assert ids(outcome)[:2] == manual
    assert len(outcome.runs) == 3  # and the slot within grace


# --- fenced state reports ------------------------------------------------------------------------


def test_a_holder_reports_running_then_completed_with_its_token(store: Store,
                                                                agent_id: uuid.UUID) -> None:
    run_id = store.run(store.deploy(), NOW - MINUTE)
    claimed = store.claim_one(agent_id)
    assert (claimed.id, claimed.state, claimed.fencing_token) == (run_id, S.PENDING, 1)
    assert (claimed.lease_expires, claimed.work_queue, claimed.agent) == (NOW + LEASE, "q", "a1")
    running = store.report(claimed, S.RUNNING, now=NOW + SECOND)
    assert (running.state, running.start_time) == (S.RUNNING, NOW + SECOND)
    done = store.report(claimed, S.COMPLETED, now=NOW + MINUTE, result={"rows": 3})
    assert (done.state, done.end_time, done.agent) == (S.COMPLETED, NOW + MINUTE, "a1")
    assert store.row(run_id).lease_expires is None
    assert [entry[:2] for entry in store.history(run_id)] == [
        ("SCHEDULED", "Scheduled"), ("PENDING", "Pending"), ("RUNNING", "Running"),
        ("COMPLETED", "Completed")]


def test_report_times_are_moved_onto_the_servers_clock(store: Store, agent_id: uuid.UUID
                                                       ) -> None:
    """An agent 30 s behind reports a start 5 s before it sends the report, which arrives at
    NOW: the run started at NOW - 5 s by the server's clock, not NOW - 35 s. Without `sent`, a
    time is taken as it is; either way never later than the report's arrival."""
    store.run(store.deploy(), NOW - MINUTE)
    claimed = store.claim_one(agent_id)
    behind = NOW - 30 * SECOND
    running = store.report(claimed, S.RUNNING, time=behind - 5 * SECOND, sent=behind)
    assert running.start_time == NOW - 5 * SECOND
    ahead = NOW + 30 * SECOND
    done = store.report(claimed, S.COMPLETED, now=NOW + SECOND, time=ahead - SECOND, sent=ahead)
    assert done.end_time == NOW
    store.run(store.deploy("other"), NOW - MINUTE)
    unstamped = store.report(store.claim_one(agent_id), S.RUNNING, time=behind)
    assert unstamped.start_time == behind


def test_a_stale_token_is_refused_and_changes_nothing(store: Store, agent_id: uuid.UUID) -> None:
    run_id = store.run(store.deploy(), NOW - MINUTE)
    lost = store.claim_one(agent_id)
    assert store.reap(NOW + LEASE + SECOND) == (1, 0)
    rescuer = store.agent("a2")
    current = store.claim_one(rescuer, now=NOW + LEASE + SECOND)
    assert current.fencing_token == lost.fencing_token + 1
    before, history = store.row(run_id), store.history(run_id)
    for state in (S.RUNNING, S.COMPLETED, S.FAILED, S.SCHEDULED):
        with pytest.raises(StaleFencingToken, match="stale") as refused:
            store.report(lost, state)
        assert isinstance(refused.value, Conflict)
    assert store.row(run_id) == before
    assert store.history(run_id) == history
    assert store.report(current, S.RUNNING).agent == "a2"


def test_a_holder_may_give_back_a_run_it_has_not_started(store: Store, agent_id: uuid.UUID
                                                        ) -> None:
    run_id = store.run(store.deploy(), NOW - MINUTE)
    claimed = store.claim_one(agent_id)
    given_back = store.report(claimed, S.SCHEDULED)
    assert (given_back.state, given_back.agent, given_back.work_queue) == (S.SCHEDULED, None, None)
    assert store.row(run_id).lease_expires is None
    again = store.claim_one(store.agent("a2"))
    assert (again.id, again.fencing_token) == (run_id, 2)
    with pytest.raises(StaleFencingToken):
        store.report(claimed, S.RUNNING)


def test_illegal_transitions_are_conflicts(store: Store, agent_id: uuid.UUID) -> None:
    store.run(store.deploy(), NOW - MINUTE)
    claimed = store.claim_one(agent_id)
    with pytest.raises(Conflict, match="PENDING"):
        store.report(claimed, S.COMPLETED)  # never started
    with pytest.raises(InvalidInput):
        store.report(claimed, S.PENDING)  # only a claim makes a run PENDING
    store.report(claimed, S.RUNNING)
    store.report(claimed, S.COMPLETED)
    for state in (S.RUNNING, S.FAILED, S.CANCELLED, S.SCHEDULED):
        with pytest.raises(Conflict, match="COMPLETED"):
            store.report(claimed, state)
    assert store.state(claimed.id) == ("COMPLETED", None)


def test_a_run_asked_to_stop_before_it_started_stays_cancelling(store: Store,
                                                                 agent_id: uuid.UUID) -> None:
    store.run(store.deploy(), NOW - MINUTE)
    claimed = store.claim_one(agent_id)
    store.cancel(claimed.id)
    for sent_at in (NOW + SECOND, NOW + 5 * SECOND):  # the second is a resend
        started = store.report(claimed, S.RUNNING, now=sent_at)
        assert (started.state, started.start_time) == (S.CANCELLING, NOW + SECOND)
    assert store.report(claimed, S.CANCELLED).reason == "cancelled_by_user"
    assert [entry[0] for entry in store.history(claimed.id)] == [
        "SCHEDULED", "PENDING", "CANCELLING", "CANCELLED"]


# --- the reaper and retries ----------------------------------------------------------------------


def test_the_reaper_gives_back_expired_pending_runs(store: Store, agent_id: uuid.UUID) -> None:
    run_id = store.run(store.deploy(), NOW - MINUTE)
    first = store.claim_one(agent_id)
    assert store.reap(NOW + LEASE) == (0, 0)  # not expired yet
    assert store.reap(NOW + LEASE + SECOND) == (1, 0)
    given_back = store.row(run_id)
    assert (given_back.state, given_back.reason) == ("SCHEDULED", "lease_expired")
    assert (given_back.agent_id, given_back.lease_expires, given_back.work_queue) == (
        None, None, None)
    again = store.claim_one(agent_id, now=NOW + LEASE + SECOND)
    assert (again.id, again.fencing_token) == (run_id, first.fencing_token + 1)


def test_an_expired_running_run_crashes_and_is_retried_after_the_delay(store: Store,
                                                                       agent_id: uuid.UUID
                                                                       ) -> None:
    d = store.deploy(retries=1, retry_on=["crash"], retry_delay=60)
    run_id = store.run(d, NOW - MINUTE)
    store.start(agent_id)
    reaped_at = NOW + LEASE + SECOND
    assert store.reap(reaped_at) == (0, 1)
    retried = store.row(run_id)
    assert (retried.state, retried.state_name, retried.attempt) == ("SCHEDULED", "AwaitingRetry", 2)
    assert retried.scheduled_time == reaped_at + MINUTE
    assert store.history(run_id)[-2:] == [
        ("CRASHED", "Crashed", "lease_expired", 1), ("SCHEDULED", "AwaitingRetry", None, 2)]
    assert store.claim(agent_id, now=reaped_at).runs == []
    second = store.claim_one(agent_id, now=reaped_at + MINUTE)
    assert (second.id, second.attempt, second.fencing_token) == (run_id, 2, 2)
    store.report(second, S.RUNNING)
    store.report(second, S.CRASHED, reason="signal")
    assert store.state(run_id) == ("CRASHED", "signal")  # no retries left


def test_an_expired_running_run_without_retries_stays_crashed(store: Store,
                                                              agent_id: uuid.UUID) -> None:
    run_id = store.run(store.deploy(), NOW - MINUTE)
    store.start(agent_id)
    assert store.reap(NOW + LEASE + SECOND) == (0, 1)
    crashed = store.row(run_id)
    assert (crashed.state, crashed.reason, crashed.end_time) == (
        "CRASHED", "lease_expired", NOW + LEASE + SECOND)


def test_an_expired_cancelling_run_crashes_without_retry(store: Store, agent_id: uuid.UUID
                                                         ) -> None:
    run_id = store.run(store.deploy(retries=3, retry_on=["crash"]), NOW - MINUTE)
    store.start(agent_id)
    store.cancel(run_id)
    assert store.reap(NOW + LEASE + SECOND) == (0, 1)
    assert store.state(run_id) == ("CRASHED", "lease_expired")
    assert store.row(run_id).attempt == 1


@pytest.mark.parametrize(("policy", "reason", "after"), [
    ({"retries": 0}, "exception", ("FAILED", 1)),
    ({"retries": 1}, "exception", ("SCHEDULED", 2)),
    ({"retries": 1, "retry_on": ["crash"]}, "exception", ("FAILED", 1)),
    ({"retries": 1, "retry_on": ["timeout"]}, "timeout", ("SCHEDULED", 2)),
])
def test_a_failed_report_is_retried_as_the_deployment_allows(
        store: Store, agent_id: uuid.UUID, policy: dict[str, Any], reason: str,
        after: tuple[str, int]) -> None:
    run_id = store.run(store.deploy(**policy), NOW - MINUTE)
    store.report(store.start(agent_id), S.FAILED, reason=reason, message="boom")
    ended = store.row(run_id)
    assert (ended.state, ended.attempt) == after
    assert ("FAILED", "Failed", reason, 1) in store.history(run_id)


@pytest.mark.parametrize("state", [S.FAILED, S.CRASHED])
def test_a_run_asked_to_stop_is_not_retried_however_it_ends(store: Store, agent_id: uuid.UUID,
                                                            state: StateType) -> None:
    run_id = store.run(store.deploy(retries=2, retry_on=["failure", "crash"]), NOW - MINUTE)
    run = store.start(agent_id)
    store.cancel(run_id)
    store.report(run, state, reason="signal")
    assert store.state(run_id) == (state.value, "signal")
    assert store.row(run_id).attempt == 1


# --- heartbeats and agents -----------------------------------------------------------------------


def test_a_heartbeat_renews_the_leases_of_the_runs_it_names(store: Store, agent_id: uuid.UUID
                                                            ) -> None:
    d = store.deploy()
    store.run(d, NOW - 2 * MINUTE)
    store.run(d, NOW - MINUTE)
    named, unnamed = store.claim(agent_id, limit=2).runs
    reply = store.heartbeat(agent_id, named, now=NOW + 20 * SECOND)
    assert reply == HeartbeatReply(lease_seconds=30, cancel=[], lost=[])
    assert store.row(named.id).lease_expires == NOW + 50 * SECOND
    assert store.row(unnamed.id).lease_expires == NOW + LEASE
    assert store.reap(NOW + 40 * SECOND) == (1, 0)
    assert store.state(named.id) == ("PENDING", None)


def test_a_heartbeat_reports_runs_the_agent_no_longer_holds(store: Store, agent_id: uuid.UUID
                                                            ) -> None:
    d = store.deploy()
    store.run(d, NOW - 2 * MINUTE)
    store.run(d, NOW - MINUTE)
    reaped, held = store.claim(agent_id, limit=2).runs
    store.heartbeat(agent_id, held, now=NOW + 20 * SECOND)
    store.reap(NOW + LEASE + SECOND)
    stranger = (uuid.uuid4(), 1)
    reply = store.heartbeat(agent_id, reaped, (held.id, held.fencing_token + 1), stranger,
                            now=NOW + LEASE + SECOND)
    assert sorted(reply.lost) == sorted([reaped.id, held.id, stranger[0]])
    assert store.row(held.id).lease_expires == NOW + 50 * SECOND  # a wrong token renews nothing


def test_a_heartbeat_orders_runs_being_cancelled_stopped(store: Store, agent_id: uuid.UUID
                                                         ) -> None:
    d = store.deploy()
    store.run(d, NOW - 2 * MINUTE)
    store.run(d, NOW - MINUTE)
    cancelled, other = store.claim(agent_id, limit=2).runs
    store.cancel(cancelled.id)
    reply = store.heartbeat(agent_id, cancelled, other)
    assert [(order.id, order.grace_seconds) for order in reply.cancel] == [(cancelled.id, GRACE)]
    assert reply.lost == []
    assert store.row(cancelled.id).lease_expires == NOW + LEASE


def test_a_heartbeat_from_an_unregistered_agent_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        store.heartbeat(uuid.uuid4())


def test_agents_keep_their_id_and_show_status_and_running_count(store: Store,
                                                                agent_id: uuid.UUID) -> None:
    store.run(store.deploy(), NOW - MINUTE)
    store.start(agent_id)
    assert store.agent("a1") == agent_id
    idle = store.agent("a2")
    store.heartbeat(agent_id, now=NOW + 2 * MINUTE)
    with store.db.read() as conn:
        listed = agents.list_agents(conn, NOW + 2 * MINUTE, ONLINE_FOR)
    assert [(a.id, a.status, a.running) for a in listed] == [
        (agent_id, "online", 1), (idle, "offline", 0)]


# --- explain: why a waiting run is not starting --------------------------------------------------


def polled(store: Store, agent_id: uuid.UUID) -> None:
    """The agent polls `q` at NOW, when nothing is due yet."""
    assert store.claim(agent_id).runs == []


def test_a_claimable_run_has_no_holds(store: Store, agent_id: uuid.UUID) -> None:
    polled(store, agent_id)
    assert store.holds(store.run(store.deploy(), NOW - MINUTE)) == {}


def test_explain_not_due(store: Store, agent_id: uuid.UUID) -> None:
    polled(store, agent_id)
    assert store.holds(store.run(store.deploy(), NOW + MINUTE)) == {"not_due": set()}


def test_explain_deployment_paused(store: Store, agent_id: uuid.UUID) -> None:
    polled(store, agent_id)
    paused = store.deploy(paused=True)
    assert store.holds(store.run(paused, NOW - MINUTE)) == {"deployment_paused": set()}


def test_explain_no_matching_queue(store: Store) -> None:
    store.queue("q", filter={"tags": ["gpu"]})
    polled(store, store.agent())
    assert store.holds(store.run(store.deploy(), NOW - MINUTE)) == {"no_matching_queue": set()}


def test_explain_queue_paused(store: Store) -> None:
    store.queue("q", paused=True)
    polled(store, store.agent())
    assert store.holds(store.run(store.deploy(), NOW - MINUTE)) == {"queue_paused": set()}


def test_explain_no_agent_polling(store: Store, agent_id: uuid.UUID) -> None:
    polled(store, agent_id)
    waiting = store.run(store.deploy(), NOW - MINUTE)
    assert store.holds(waiting, now=NOW + 2 * MINUTE) == {"no_agent_polling": set()}


def test_explain_queue_limit_full(store: Store) -> None:
    store.queue("q", concurrency_limit=1)
    agent_id = store.agent()
    d = store.deploy()
    store.run(d, NOW - 2 * MINUTE)
    holder = store.claim_one(agent_id)
    waiting = store.run(d, NOW - MINUTE)
    assert store.holds(waiting) == {"queue_limit_full": {holder.id}}


def test_explain_tag_limit_full(store: Store, agent_id: uuid.UUID) -> None:
    store.set_limit("gpu", 1)
    d = store.deploy()
    store.run(d, NOW - 2 * MINUTE, tags=("gpu",))
    holder = store.start(agent_id)
    waiting = store.run(d, NOW - MINUTE, tags=("gpu",))
    assert store.holds(waiting) == {"tag_limit_full": {holder.id}}


def test_explain_overlap(store: Store, agent_id: uuid.UUID) -> None:
    running, (waiting,) = overlapping(store, agent_id, "buffer_all", due=1)
    assert store.holds(waiting) == {"overlap": {running.id}}


def test_explain_not_waiting(store: Store, agent_id: uuid.UUID) -> None:
    store.run(store.deploy(), NOW - MINUTE)
    claimed = store.claim_one(agent_id)
    assert store.holds(claimed.id) == {"not_waiting": set()}


# --- cancellation --------------------------------------------------------------------------------


def test_cancelling_a_waiting_run_cancels_it_at_once(store: Store) -> None:
    run_id = store.run(store.deploy(), NOW + MINUTE)
    cancelled = store.cancel(run_id)
    assert (cancelled.state, cancelled.reason, cancelled.end_time) == (
        S.CANCELLED, "cancelled_by_user", NOW)
    assert store.history(run_id)[-1] == ("CANCELLED", "Cancelled", "cancelled_by_user", 1)


def test_cancelling_a_claimed_run_asks_its_agent_to_stop(store: Store, agent_id: uuid.UUID
                                                         ) -> None:
    d = store.deploy()
    store.run(d, NOW - 2 * MINUTE)
    store.run(d, NOW - MINUTE)
    pending, running = store.claim(agent_id, limit=2).runs
    store.report(running, S.RUNNING)
    for run in (pending, running):
        assert store.cancel(run.id).state is S.CANCELLING
        assert store.cancel(run.id).state is S.CANCELLING  # asking twice is harmless
        assert store.state(run.id) == ("CANCELLING", "cancelled_by_user")
    assert [entry[0] for entry in store.history(running.id)].count("CANCELLING") == 1


def test_cancelling_a_finished_run_is_a_conflict(store: Store, agent_id: uuid.UUID) -> None:
    store.run(store.deploy(), NOW - MINUTE)
    run = store.start(agent_id)
    store.report(run, S.COMPLETED)
    with pytest.raises(Conflict, match="COMPLETED"):
        store.cancel(run.id)
    with pytest.raises(NotFound):
        store.cancel(uuid.uuid4())
    assert store.state(run.id) == ("COMPLETED", None)
