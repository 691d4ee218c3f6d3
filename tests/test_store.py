"""Contract tests of the store (`ostinato.queues.*`), run on SQLite and on PostgreSQL.

Every test calls the store's functions inside `database.write()` / `database.read()` exactly as
the API does, and checks the rows that result. Runs in states the scheduler and agents produce
are made directly: `runs.insert_runs` plus a column update.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import StatementError

from ostinato.deploy.errors import Conflict, InvalidInput, NotFound, PayloadTooLarge
from ostinato.deploy.schemas import (
    Deployment,
    DeploymentSpec,
    DeploymentUpdate,
    ManualRunRequest,
    WorkQueueSpec,
    WorkQueueUpdate,
)
from ostinato.deploy.states import StateType
from ostinato.queues import bundles, deployments, runs, work_queues
from ostinato.queues.database import Database
from ostinato.queues.runs import RunFilter
from ostinato.queues.tables import (
    bundles as bundle_rows,
)
from ostinato.queues.tables import (
    deployments as deployment_rows,
)
from ostinato.queues.tables import (
    flow_run_states,
    flow_runs,
    flows,
    schedules,
    utcnow,
)
from ostinato.queues.tables import (
    work_queues as work_queue_rows,
)

SCHEMA = {
    "type": "object",
    "properties": {
        "day": {"type": "string"},
        "limit": {"type": "integer"},
        "ratio": {"anyOf": [{"type": "number"}, {"type": "null"}]},
    },
    "required": ["day"],
}
CRON = {"kind": "cron", "cron": "0 2 * * *", "slug": "nightly"}
HOUR = timedelta(hours=1)
KOLKATA_OFFSET = timezone(timedelta(hours=5, minutes=30))


def make_spec(name: str = "nightly", flow: str = "etl", **changes: Any) -> DeploymentSpec:
    data: dict[str, Any] = {
        "flow": flow, "name": name, "entrypoint": "flows.py:etl", "path": "/srv/flows",
        "parameters": {"day": "today", "limit": 10}, "parameter_schema": SCHEMA,
        "tags": ["etl"], "schedules": [CRON],
    }
    return DeploymentSpec.model_validate(data | changes)


def apply(database: Database, *specs: DeploymentSpec) -> Any:
    with database.write() as conn:
        return deployments.apply(conn, specs)


def get(database: Database, full_name: str = "etl/nightly") -> Deployment:
    with database.read() as conn:
        return deployments.get(conn, full_name)


def add_run(
    database: Database,
    deployment: Deployment,
    when: datetime,
    *,
    auto: bool = True,
    slug: str = "nightly",
    tags: Sequence[str] = (),
    parent: uuid.UUID | None = None,
    **columns: Any,
) -> uuid.UUID:
    """Insert a SCHEDULED run of `deployment` at `when`, then set any other `columns`."""
    values = runs.new_run_values(
        name=f"run-{uuid.uuid4().hex[:8]}", flow_name=deployment.flow,
        deployment_id=deployment.id, deployment_name=deployment.name,
        schedule_slug=slug if auto else None, nominal_time=when, scheduled_time=when,
        parameters=dict(deployment.parameters), tags=list(tags), auto_scheduled=auto,
        parent_run_id=parent,
    )
    with database.write() as conn:
        runs.insert_runs(conn, [values])
        if columns:
            conn.execute(update(flow_runs).where(flow_runs.c.id == values["id"]).values(**columns))
    run_id: uuid.UUID = values["id"]
    return run_id


def run_rows(database: Database) -> dict[uuid.UUID, Any]:
    with database.read() as conn:
        return {row.id: row for row in conn.execute(select(flow_runs))}


def history(database: Database, run_id: uuid.UUID) -> list[Any]:
    with database.read() as conn:
        return list(runs.state_history(conn, run_id))


def count(database: Database, table: Any) -> int:
    with database.read() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


# --- apply: create, update, unchanged, all or nothing -------------------------------------------


def test_apply_creates_then_leaves_unchanged_then_updates(database: Database) -> None:
    first = apply(database, make_spec())
    assert (first.created, first.updated, first.unchanged) == (["etl/nightly"], [], [])
    created = get(database)
    assert created.name == "etl/nightly" and created.flow == "etl"
    assert created.parameters == {"day": "today", "limit": 10}
    assert [s.slug for s in created.schedules] == ["nightly"]
    assert created.paused is False

    again = apply(database, make_spec())
    assert (again.created, again.updated, again.unchanged) == ([], [], ["etl/nightly"])
    assert get(database).updated == created.updated

    changed = apply(database, make_spec(description="now documented", retries=2))
    assert (changed.created, changed.updated, changed.unchanged) == ([], ["etl/nightly"], [])
    after = get(database)
    assert (after.description, after.retries, after.id) == ("now documented", 2, created.id)
    assert count(database, deployment_rows) == 1
    assert count(database, flows) == 1


def test_reapplying_an_unchanged_spec_does_not_resume_a_paused_deployment(
    database: Database,
) -> None:
    apply(database, make_spec())
    with database.write() as conn:
        deployments.set_paused(conn, "etl/nightly", True)

    assert apply(database, make_spec()).unchanged == ["etl/nightly"]
    assert get(database).paused is True


def test_a_deployment_created_paused_is_paused(database: Database) -> None:
    apply(database, make_spec(paused=True))
    assert get(database).paused is True


INVALID = {
    "bundle not uploaded": {"bundle": "ab" * 32, "path": None},
    "mis-typed parameter": {"parameters": {"day": "today", "limit": "ten"}},
    "unknown parameter": {"parameters": {"day": "today", "colour": "red"}},
    "boolean for an integer": {"parameters": {"day": "today", "limit": True}},
    "missing required parameter": {"parameters": {"limit": 1}},
    "schedule override of the wrong type": {
        "schedules": [CRON | {"parameters": {"limit": 1.5}}],
    },
}


@pytest.mark.parametrize("invalid", list(INVALID.values()), ids=list(INVALID))
def test_apply_with_one_invalid_deployment_changes_nothing(
    database: Database, invalid: dict[str, Any]
) -> None:
    apply(database, make_spec(name="existing"))
    before = get(database, "etl/existing")

    with pytest.raises(InvalidInput):
        apply(
            database,
            make_spec(name="existing", description="edited in the failed batch"),
            make_spec(name="fresh", flow="other"),
            make_spec(name="broken", flow="third", **invalid),
        )

    with database.read() as conn:
        names = conn.execute(select(deployment_rows.c.full_name)).scalars().all()
        flow_names = conn.execute(select(flows.c.name)).scalars().all()
    assert names == ["etl/existing"]
    assert flow_names == ["etl"]
    assert get(database, "etl/existing") == before
    assert count(database, schedules) == 1


def test_apply_refuses_repeated_names(database: Database) -> None:
    with pytest.raises(InvalidInput, match="repeat"):
        apply(database, make_spec(), make_spec(description="twice"))
    assert count(database, deployment_rows) == 0


def test_apply_with_an_uploaded_bundle_is_accepted(database: Database) -> None:
    content = b"bundle bytes"
    sha = hashlib.sha256(content).hexdigest()
    with database.write() as conn:
        bundles.put(conn, sha, content, max_bytes=1000)

    apply(database, make_spec(bundle=sha, path=None))

    assert get(database).bundle == sha


# --- edits replace only untouched future auto-scheduled runs -------------------------------------


def _runs_of_every_kind(database: Database, deployment: Deployment) -> dict[str, uuid.UUID]:
    now = utcnow()
    later = now + 2 * HOUR
    return {
        "untouched": add_run(database, deployment, later),
        "untouched later": add_run(database, deployment, later + HOUR),
        "claimed then given back": add_run(database, deployment, later + 2 * HOUR,
                                           fencing_token=1),
        "pending": add_run(database, deployment, later + 3 * HOUR, state="PENDING",
                           state_name="Pending", fencing_token=1),
        "running": add_run(database, deployment, later + 4 * HOUR, state="RUNNING",
                           state_name="Running", fencing_token=2),
        "finished": add_run(database, deployment, later + 5 * HOUR, state="COMPLETED",
                            state_name="Completed", fencing_token=3),
        "manual": add_run(database, deployment, later + 6 * HOUR, auto=False),
        "past": add_run(database, deployment, now - HOUR),
    }


EDITS = {
    "schedules": DeploymentUpdate(schedules=[{"kind": "cron", "cron": "0 3 * * *"}]),
    "parameters": DeploymentUpdate(parameters={"day": "yesterday"}),
    "tags": DeploymentUpdate(tags=["etl", "nightly"]),
}


@pytest.mark.parametrize("change", list(EDITS.values()), ids=list(EDITS))
def test_an_edit_replaces_only_untouched_future_auto_scheduled_runs(
    database: Database, change: DeploymentUpdate
) -> None:
    apply(database, make_spec())
    made = _runs_of_every_kind(database, get(database))
    before = run_rows(database)

    with database.write() as conn:
        deployments.edit(conn, "etl/nightly", change)

    after = run_rows(database)
    gone = {name for name, run_id in made.items() if run_id not in after}
    assert gone == {"untouched", "untouched later"}
    for run_id, row in after.items():
        assert row == before[run_id], "a run that was not replaced changed"


def test_a_respecified_deployment_replaces_untouched_runs_too(database: Database) -> None:
    apply(database, make_spec())
    made = _runs_of_every_kind(database, get(database))

    apply(database, make_spec(tags=["etl", "v2"]))

    after = run_rows(database)
    assert {name for name, run_id in made.items() if run_id not in after} == {
        "untouched", "untouched later"}


def test_a_replacing_edit_lets_the_scheduler_refill_from_the_edit(database: Database) -> None:
    apply(database, make_spec())
    with database.write() as conn:
        conn.execute(update(schedules).values(scheduled_until=utcnow() + 5 * HOUR))

    before = utcnow()
    with database.write() as conn:
        deployments.edit(conn, "etl/nightly", EDITS["schedules"])
    after = utcnow()

    with database.read() as conn:
        rows = conn.execute(select(schedules)).all()
    assert [row.definition["cron"] for row in rows] == ["0 3 * * *"]
    # The new definition takes over from the edit itself: no slot after it is lost, and the
    # next tick visits it at once.
    assert all(before <= row.scheduled_until == row.visit_at <= after for row in rows)


def test_an_edit_of_other_fields_keeps_every_run(database: Database) -> None:
    apply(database, make_spec())
    _runs_of_every_kind(database, get(database))
    before = run_rows(database)

    with database.write() as conn:
        deployments.edit(conn, "etl/nightly", DeploymentUpdate(description="d", retries=3))

    assert run_rows(database) == before
    assert get(database).retries == 3


def test_an_edit_with_an_invalid_parameter_changes_nothing(database: Database) -> None:
    apply(database, make_spec())
    _runs_of_every_kind(database, get(database))
    before, deployment = run_rows(database), get(database)

    with pytest.raises(InvalidInput), database.write() as conn:
        deployments.edit(conn, "etl/nightly", DeploymentUpdate(parameters={"limit": "x"}))

    assert run_rows(database) == before
    assert get(database) == deployment


# --- pause, resume, delete ------------------------------------------------------------------------


def test_pause_skips_waiting_runs_with_reason_and_history(database: Database) -> None:
    apply(database, make_spec())
    deployment = get(database)
    now = utcnow()
    waiting = [
        add_run(database, deployment, now + HOUR),
        add_run(database, deployment, now + 2 * HOUR, auto=False),
    ]
    running = add_run(database, deployment, now - HOUR, state="RUNNING", state_name="Running",
                      fencing_token=1)

    with database.write() as conn:
        paused = deployments.set_paused(conn, "etl/nightly", True)

    assert paused.paused is True
    rows = run_rows(database)
    for run_id in waiting:
        assert (rows[run_id].state, rows[run_id].reason) == ("SKIPPED", "paused")
        entries = history(database, run_id)
        assert [(e.type, e.reason) for e in entries] == [
            (StateType.SCHEDULED, None), (StateType.SKIPPED, "paused")]
    assert rows[running].state == "RUNNING"
    assert len(history(database, running)) == 1

    with database.write() as conn:
        deployments.set_paused(conn, "etl/nightly", True)
    assert len(history(database, waiting[0])) == 2, "pausing twice appended history"


def test_resume_frees_future_paused_slots_and_resets_scheduled_until(database: Database) -> None:
    apply(database, make_spec())
    deployment = get(database)
    now = utcnow()
    future = add_run(database, deployment, now + HOUR)
    past = add_run(database, deployment, now - HOUR)
    manual = add_run(database, deployment, now + HOUR, auto=False)
    with database.write() as conn:
        conn.execute(update(schedules).values(scheduled_until=now + 3 * HOUR))
        deployments.set_paused(conn, "etl/nightly", True)

    with database.write() as conn:
        resumed = deployments.set_paused(conn, "etl/nightly", False)
    resumed_at = utcnow()

    assert resumed.paused is False
    rows = run_rows(database)
    assert future not in rows, "a future slot skipped by the pause stays taken"
    assert (rows[past].state, rows[past].reason) == ("SKIPPED", "paused")
    assert (rows[manual].state, rows[manual].reason) == ("SKIPPED", "paused")
    with database.read() as conn:
        (until, visit_at), = conn.execute(select(schedules.c.scheduled_until, schedules.c.visit_at))
    assert now <= until == visit_at <= resumed_at  # runs are made from the resume on


def test_delete_skips_waiting_runs_and_keeps_every_run_row(database: Database) -> None:
    apply(database, make_spec())
    apply(database, make_spec(name="other"))
    deployment = get(database)
    now = utcnow()
    made = [
        add_run(database, deployment, now + HOUR),
        add_run(database, deployment, now - HOUR),
        add_run(database, deployment, now + HOUR, auto=False),
        add_run(database, deployment, now - 2 * HOUR, state="COMPLETED", state_name="Completed",
                fencing_token=1),
    ]
    bystander = add_run(database, get(database, "etl/other"), now + HOUR)

    with database.write() as conn:
        deployments.remove(conn, "etl/nightly")

    with pytest.raises(NotFound):
        get(database)
    rows = run_rows(database)
    assert set(made) | {bystander} == set(rows)
    assert [rows[r].state for r in made] == ["SKIPPED", "SKIPPED", "SKIPPED", "COMPLETED"]
    assert {rows[r].reason for r in made[:3]} == {"deployment_deleted"}
    assert rows[bystander].state == "SCHEDULED"
    assert [e.reason for e in history(database, made[0])] == [None, "deployment_deleted"]
    assert count(database, schedules) == 1  # only etl/other's
    with database.read() as conn:
        listed = runs.list_runs(conn, RunFilter(deployment="etl/nightly"))
    assert {run.id for run in listed} == set(made)


def test_unknown_deployments_are_not_found(database: Database) -> None:
    with database.write() as conn:
        for action in (
            lambda: deployments.get(conn, "etl/missing"),
            lambda: deployments.set_paused(conn, "etl/missing", True),
            lambda: deployments.remove(conn, "etl/missing"),
            lambda: deployments.edit(conn, "etl/missing", DeploymentUpdate(retries=1)),
            lambda: deployments.create_manual_run(conn, "etl/missing", ManualRunRequest()),
        ):
            with pytest.raises(NotFound):
                action()


# --- manual runs ---------------------------------------------------------------------------------


def manual_run(database: Database, **request: Any) -> Any:
    with database.write() as conn:
        return deployments.create_manual_run(
            conn, "etl/nightly", ManualRunRequest.model_validate(request))


def test_a_manual_run_merges_parameters_and_tags(database: Database) -> None:
    apply(database, make_spec())
    before = utcnow()

    run = manual_run(database, parameters={"limit": 5, "ratio": 0.5}, tags=["adhoc", "etl"],
                     start_in=60)

    assert run.parameters == {"day": "today", "limit": 5, "ratio": 0.5}
    assert run.tags == ["adhoc", "etl"]
    assert (run.state, run.auto_scheduled, run.schedule) == (StateType.SCHEDULED, False, None)
    assert before + timedelta(seconds=59) < run.scheduled_time < utcnow() + timedelta(seconds=61)
    assert get(database).parameters == {"day": "today", "limit": 10}, "defaults changed"


def test_a_manual_run_at_a_given_time_keeps_that_instant(database: Database) -> None:
    apply(database, make_spec())
    when = datetime(2031, 3, 30, 4, 30, tzinfo=ZoneInfo("Europe/Paris"))

    run = manual_run(database, scheduled_time=when)

    assert run.scheduled_time == when
    assert run.scheduled_time.utcoffset() == timedelta(0)


@pytest.mark.parametrize("parameters", [
    {"colour": "red"}, {"limit": "ten"}, {"limit": 1.5}, {"limit": True}, {"day": None},
    {"ratio": "half"},
], ids=["unknown", "string-for-int", "float-for-int", "bool-for-int", "null-for-str",
        "str-for-number"])
def test_a_manual_run_refuses_bad_parameters(database: Database, parameters: Any) -> None:
    apply(database, make_spec())

    with pytest.raises(InvalidInput):
        manual_run(database, parameters=parameters)

    assert count(database, flow_runs) == 0


def test_a_manual_run_of_a_paused_deployment_is_a_conflict(database: Database) -> None:
    apply(database, make_spec(paused=True))

    with pytest.raises(Conflict, match="paused"):
        manual_run(database)

    assert count(database, flow_runs) == 0


def test_manual_runs_survive_schedule_edits(database: Database) -> None:
    apply(database, make_spec())
    run = manual_run(database, start_in=3600)

    with database.write() as conn:
        deployments.edit(conn, "etl/nightly", EDITS["schedules"])

    assert run_rows(database)[run.id].state == "SCHEDULED"


# --- state history -------------------------------------------------------------------------------


def test_state_history_is_append_only_and_ordered(database: Database) -> None:
    apply(database, make_spec())
    run_id = add_run(database, get(database), utcnow())
    steps = [(StateType.PENDING, None), (StateType.RUNNING, None),
             (StateType.FAILED, "exception"), (StateType.SCHEDULED, None),
             (StateType.COMPLETED, "success")]
    seen: list[Any] = history(database, run_id)

    for state, reason in steps:
        with database.write() as conn:
            moved = runs.set_states(conn, flow_runs.c.id == run_id, state, reason=reason,
                                    message=f"to {state}", actor="agent-1")
        assert moved == [run_id]
        now = history(database, run_id)
        assert now[:-1] == seen, "an earlier history entry was rewritten"
        assert (now[-1].type, now[-1].reason, now[-1].actor) == (state, reason, "agent-1")
        seen = now

    assert [e.type for e in seen] == [StateType.SCHEDULED, *(s for s, _ in steps)]
    times = [e.timestamp for e in seen]
    assert times == sorted(times)
    row = run_rows(database)[run_id]
    assert (row.state, row.state_name, row.reason) == ("COMPLETED", "Completed", "success")


def test_history_of_an_unknown_run_is_not_found(database: Database) -> None:
    with database.read() as conn, pytest.raises(NotFound):
        runs.state_history(conn, uuid.uuid4())
    with database.read() as conn, pytest.raises(NotFound):
        runs.get_run(conn, uuid.uuid4())


def test_history_entries_of_other_runs_do_not_mix(database: Database) -> None:
    apply(database, make_spec())
    one, two = (add_run(database, get(database), utcnow() + n * HOUR) for n in (1, 2))
    with database.write() as conn:
        runs.set_states(conn, flow_runs.c.id == two, StateType.CANCELLED, actor="user")

    assert [e.type for e in history(database, one)] == [StateType.SCHEDULED]
    assert [e.type for e in history(database, two)] == [StateType.SCHEDULED, StateType.CANCELLED]
    assert count(database, flow_run_states) == 1  # creation is read from the run row


# --- filtering and paging ------------------------------------------------------------------------


def listed(database: Database, **fields: Any) -> list[uuid.UUID]:
    run_filter = RunFilter(**fields)
    with database.read() as conn:
        found = [run.id for run in runs.list_runs(conn, run_filter)]
        assert runs.count_runs(conn, RunFilter(**fields | {"limit": 1000, "offset": 0})) >= len(
            found)
    return found


@pytest.fixture
def landscape(database: Database) -> dict[str, uuid.UUID]:
    """Runs of two deployments of two flows, in several states, times, tags, with a child."""
    apply(database, make_spec(), make_spec(name="hourly", flow="report"))
    etl, report = get(database), get(database, "report/hourly")
    base = datetime(2030, 6, 1, tzinfo=UTC)
    made = {
        "etl-1": add_run(database, etl, base, tags=["etl", "eu"]),
        "etl-2": add_run(database, etl, base + HOUR, tags=["etl"], state="COMPLETED",
                         state_name="Completed"),
        "etl-3": add_run(database, etl, base + 2 * HOUR, tags=["etl", "eu"], state="FAILED",
                         state_name="Failed"),
        "report-1": add_run(database, report, base + HOUR, tags=["eu-west"]),
        "report-2": add_run(database, report, base + 3 * HOUR, tags=["reports"],
                            state="RUNNING", state_name="Running"),
    }
    made["child"] = add_run(database, report, base + 4 * HOUR, auto=False,
                            parent=made["report-2"])
    return made


def names(landscape: dict[str, uuid.UUID], ids: Sequence[uuid.UUID]) -> set[str]:
    by_id = {run_id: name for name, run_id in landscape.items()}
    return {by_id[run_id] for run_id in ids}


def test_run_filters(database: Database, landscape: dict[str, uuid.UUID]) -> None:
    base = datetime(2030, 6, 1, tzinfo=UTC)
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({}, set(landscape)),
        ({"states": [StateType.SCHEDULED]}, {"etl-1", "report-1", "child"}),
        ({"states": [StateType.COMPLETED, StateType.FAILED]}, {"etl-2", "etl-3"}),
        ({"deployment": "etl/nightly"}, {"etl-1", "etl-2", "etl-3"}),
        ({"flow": "report"}, {"report-1", "report-2", "child"}),
        ({"tag": "eu"}, {"etl-1", "etl-3"}),
        ({"tag": "etl"}, {"etl-1", "etl-2", "etl-3"}),
        ({"tag": "eu-west"}, {"report-1"}),
        ({"scheduled_after": base + HOUR}, {"etl-2", "etl-3", "report-1", "report-2", "child"}),
        ({"scheduled_before": base + HOUR}, {"etl-1"}),
        ({"scheduled_after": base + HOUR, "scheduled_before": base + 3 * HOUR},
         {"etl-2", "etl-3", "report-1"}),
        # the same window given in another zone selects the same instants
        ({"scheduled_after": (base + HOUR).astimezone(ZoneInfo("America/New_York")),
          "scheduled_before": (base + 3 * HOUR).astimezone(KOLKATA_OFFSET)},
         {"etl-2", "etl-3", "report-1"}),
        ({"parent_run_id": landscape["report-2"]}, {"child"}),
        ({"parent_run_id": uuid.uuid4()}, set()),
        ({"deployment": "etl/nightly", "states": [StateType.SCHEDULED], "tag": "eu"}, {"etl-1"}),
        ({"flow": "etl", "tag": "reports"}, set()),
    ]
    for fields, expected in cases:
        found = listed(database, **fields)
        assert names(landscape, found) == expected, fields
        assert len(found) == len(set(found))
        with database.read() as conn:
            assert runs.count_runs(conn, RunFilter(**fields)) == len(expected), fields


def test_runs_come_newest_first(database: Database, landscape: dict[str, uuid.UUID]) -> None:
    with database.read() as conn:
        times = [run.scheduled_time for run in runs.list_runs(conn, RunFilter())]
    assert times == sorted(times, reverse=True)


@pytest.mark.parametrize("tag, other", [("a_c", "abc"), ("a%c", "abbbc"), ("x", "xy")])
def test_a_tag_filter_matches_the_tag_exactly(
    database: Database, tag: str, other: str
) -> None:
    apply(database, make_spec())
    deployment = get(database)
    wanted = add_run(database, deployment, utcnow(), tags=[tag])
    add_run(database, deployment, utcnow() + HOUR, tags=[other])

    with database.read() as conn:
        found = [run.tags for run in runs.list_runs(conn, RunFilter(tag=tag))]
    assert found == [[tag]], f"tag filter {tag!r} also matched a run tagged {other!r}"
    assert listed(database, tag=tag) == [wanted]


@pytest.mark.parametrize("tag", ["café", "データ", 'say"hi', "back\\slash"],
                         ids=["accent", "cjk", "quote", "backslash"])
def test_a_tag_filter_finds_tags_with_any_allowed_character(database: Database, tag: str) -> None:
    apply(database, make_spec())
    wanted = add_run(database, get(database), utcnow(), tags=[tag, "plain"])

    assert listed(database, tag=tag) == [wanted], f"no run found by its tag {tag!r}"
    assert listed(database, tag="plain") == [wanted]


def test_paging_covers_every_run_once(database: Database) -> None:
    apply(database, make_spec())
    deployment = get(database)
    base = datetime(2030, 1, 1, tzinfo=UTC)
    # Five runs share each instant, so the order must break ties to page without overlap.
    made = {add_run(database, deployment, base + (n // 5) * HOUR, slug=f"s{n}")
            for n in range(25)}

    pages = [listed(database, limit=10, offset=offset) for offset in (0, 10, 20, 30)]

    assert [len(page) for page in pages] == [10, 10, 5, 0]
    everything = [run_id for page in pages for run_id in page]
    assert len(everything) == len(set(everything)) == 25
    assert set(everything) == made
    assert everything == listed(database, limit=100)


def test_a_page_is_capped(database: Database) -> None:
    apply(database, make_spec())
    deployment = get(database)
    for n in range(3):
        add_run(database, deployment, utcnow() + n * HOUR)
    assert len(listed(database, limit=2)) == 2
    assert len(listed(database, limit=10**9)) == 3


# --- Late ---------------------------------------------------------------------------------------


def test_a_scheduled_run_past_the_threshold_reads_as_late(database: Database) -> None:
    apply(database, make_spec())
    deployment = get(database)
    now = utcnow()
    late = add_run(database, deployment, now - timedelta(seconds=60))
    recent = add_run(database, deployment, now - timedelta(seconds=5))
    started = add_run(database, deployment, now - timedelta(seconds=60), slug="other",
                      state="RUNNING", state_name="Running")

    with database.read() as conn:
        shown = {run.id: run for run in runs.list_runs(conn, RunFilter())}
        late_run = runs.get_run(conn, late)
        strict = runs.get_run(conn, recent, late_after=timedelta(seconds=1))
        lenient = runs.get_run(conn, late, late_after=timedelta(minutes=5))

    assert (late_run.state, late_run.state_name) == (StateType.SCHEDULED, "Late")
    assert (shown[late].state, shown[late].state_name) == (StateType.SCHEDULED, "Late")
    assert shown[recent].state_name == "Scheduled"
    assert shown[started].state_name == "Running"
    assert strict.state_name == "Late"
    assert lenient.state_name == "Scheduled"
    row = run_rows(database)[late]
    assert (row.state, row.state_name) == ("SCHEDULED", "Scheduled"), "Late was stored"
    assert listed(database, states=[StateType.SCHEDULED], scheduled_before=now) == [recent, late]


# --- work queues ---------------------------------------------------------------------------------


def test_work_queue_crud(database: Database) -> None:
    spec = WorkQueueSpec.model_validate({
        "name": "gpu", "filter": {"tags": ["gpu"], "exclude_tags": ["slow"],
                                  "deployments": ["etl/nightly"], "flows": ["etl"]},
        "priority": 5, "concurrency_limit": 2, "description": "GPU boxes",
    })
    with database.write() as conn:
        created = work_queues.create(conn, spec)
        work_queues.create(conn, WorkQueueSpec(name="default"))
        work_queues.create(conn, WorkQueueSpec(name="urgent", priority=1))
    assert created.filter == spec.filter
    assert (created.priority, created.concurrency_limit, created.paused) == (5, 2, False)

    with database.read() as conn:
        assert work_queues.get(conn, "gpu") == created
        assert [q.name for q in work_queues.list_queues(conn)] == ["urgent", "gpu", "default"]

    with database.write() as conn:
        edited = work_queues.edit(conn, "gpu", WorkQueueUpdate(priority=0, paused=True))
    assert (edited.priority, edited.paused, edited.concurrency_limit) == (0, True, 2)
    assert edited.filter == spec.filter and edited.description == "GPU boxes"

    with database.write() as conn:
        unlimited = work_queues.edit(conn, "gpu", WorkQueueUpdate(concurrency_limit=None))
    assert unlimited.concurrency_limit is None

    with database.write() as conn:
        work_queues.remove(conn, "gpu")
    with database.read() as conn:
        with pytest.raises(NotFound):
            work_queues.get(conn, "gpu")
        assert [q.name for q in work_queues.list_queues(conn)] == ["urgent", "default"]


def test_a_duplicate_work_queue_is_a_conflict(database: Database) -> None:
    with database.write() as conn:
        work_queues.create(conn, WorkQueueSpec(name="default", priority=3))

    with pytest.raises(Conflict), database.write() as conn:
        work_queues.create(conn, WorkQueueSpec(name="default", priority=9))

    with database.read() as conn:
        assert work_queues.get(conn, "default").priority == 3
    assert count(database, work_queue_rows) == 1


def test_unknown_work_queues_are_not_found(database: Database) -> None:
    with database.write() as conn:
        for action in (
            lambda: work_queues.get(conn, "nope"),
            lambda: work_queues.edit(conn, "nope", WorkQueueUpdate(priority=1)),
            lambda: work_queues.remove(conn, "nope"),
        ):
            with pytest.raises(NotFound):
                action()


# --- bundles -------------------------------------------------------------------------------------


def sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def test_a_bundle_round_trips(database: Database) -> None:
    content = bytes(range(256)) * 4
    with database.write() as conn:
        stored = bundles.put(conn, sha(content), content, max_bytes=len(content))
    assert (stored.sha256, stored.size) == (sha(content), 1024)
    with database.read() as conn:
        assert bundles.content(conn, sha(content)) == content
        assert bundles.info(conn, sha(content)) == stored
        assert bundles.exists(conn, sha(content))


def test_a_bundle_whose_content_does_not_match_its_hash_is_refused(database: Database) -> None:
    content = b"the real content"
    with pytest.raises(InvalidInput, match="sha256"), database.write() as conn:
        bundles.put(conn, sha(b"something else"), content, max_bytes=1000)
    assert count(database, bundle_rows) == 0


def test_a_bundle_over_the_cap_is_refused(database: Database) -> None:
    content = b"x" * 101
    with pytest.raises(PayloadTooLarge), database.write() as conn:
        bundles.put(conn, sha(content), content, max_bytes=100)
    assert count(database, bundle_rows) == 0


def test_putting_the_same_bundle_again_is_a_no_op(database: Database) -> None:
    content = b"same bytes"
    with database.write() as conn:
        first = bundles.put(conn, sha(content), content, max_bytes=100)
    with database.write() as conn:
        second = bundles.put(conn, sha(content), content, max_bytes=100)
    assert second == first
    assert count(database, bundle_rows) == 1


def test_an_unknown_bundle_is_not_found(database: Database) -> None:
    with database.read() as conn:
        assert not bundles.exists(conn, "0" * 64)
        with pytest.raises(NotFound):
            bundles.info(conn, "0" * 64)
        with pytest.raises(NotFound):
            bundles.content(conn, "0" * 64)


# --- the UTCDateTime column type -----------------------------------------------------------------

MOMENTS = [
    datetime(2030, 7, 1, 12, 0, 0, 123456, tzinfo=ZoneInfo("Europe/Paris")),
    datetime(2030, 1, 1, 0, 30, tzinfo=ZoneInfo("America/New_York")),
    datetime(2030, 11, 3, 1, 30, fold=1, tzinfo=ZoneInfo("America/New_York")),
    datetime(2030, 3, 3, 8, 15, 59, tzinfo=ZoneInfo("Asia/Kolkata")),
    datetime(2030, 5, 5, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-3))),
    datetime(2030, 5, 6, 2, 59, 59, 999998, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, tzinfo=timezone(timedelta(hours=14))),
]


def _insert_queue(database: Database, name: str, moment: datetime | None) -> None:
    now = utcnow()
    with database.write() as conn:
        conn.execute(insert(work_queue_rows).values(
            id=uuid.uuid4(), name=name, filter={}, priority=0, paused=False, description="",
            last_polled=moment, created=now, updated=now))


def test_aware_datetimes_come_back_as_equal_utc_values(database: Database) -> None:
    for number, moment in enumerate(MOMENTS):
        _insert_queue(database, f"q{number}", moment)

    with database.read() as conn:
        rows = conn.execute(select(work_queue_rows.c.name, work_queue_rows.c.last_polled)
                            .order_by(work_queue_rows.c.last_polled)).all()

    back = {name: value for name, value in rows}
    for number, moment in enumerate(MOMENTS):
        value = back[f"q{number}"]
        # (`==` across zones is False for fold=1 instants by PEP 495, so compare in UTC.)
        assert value == moment.astimezone(UTC)
        assert value.timestamp() == moment.timestamp()
        assert value.utcoffset() == timedelta(0) and value.tzinfo == UTC
    in_order = sorted(MOMENTS, key=datetime.timestamp)
    assert [value for _, value in rows] == [m.astimezone(UTC) for m in in_order], "not by instant"


def test_comparisons_with_aware_values_use_the_instant(database: Database) -> None:
    for number, moment in enumerate(MOMENTS):
        _insert_queue(database, f"q{number}", moment)
    pivot = datetime(2030, 5, 6, 2, 59, 59, 999998, tzinfo=UTC).astimezone(
        ZoneInfo("Pacific/Auckland"))

    with database.read() as conn:
        later = conn.execute(select(work_queue_rows.c.name)
                             .where(work_queue_rows.c.last_polled >= pivot)).scalars().all()

    expected = {f"q{n}" for n, m in enumerate(MOMENTS) if m.timestamp() >= pivot.timestamp()}
    assert set(later) == expected and expected


def test_a_naive_datetime_is_refused(database: Database) -> None:
    with pytest.raises(StatementError, match="naive"):
        _insert_queue(database, "naive", datetime(2030, 1, 1, 12, 0))
    assert count(database, work_queue_rows) == 0
