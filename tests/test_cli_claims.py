"""`ostinato agent ls`, `concurrency-limit …`, `flow-run cancel` and `flow-run explain`, run as
a real subprocess against a real server (SQLite and PostgreSQL), with the helpers and contract
of tests/test_cli.py: exit 0, 1 with one `error: …` line, 2 on a usage error; `--json` is the
API's JSON.

Runs are claimed through the API as an agent would (`POST /api/claims`), so that limits fill
and agents hold runs without an agent process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from ostinato.queues import tables
from tests.test_cli import (
    HEAVY,
    PROBE,
    RUN_FIELDS,
    api_get,
    assert_user_error,
    cli,
    closed_port,
    project,  # noqa: F401 (a fixture)
    seed,
)

AGENT_FIELDS = {"id", "name", "host", "queues", "last_heartbeat", "status", "running"}


def register_agent(api_url: str, name: str, queues: list[str]) -> str:
    response = httpx.post(f"{api_url}/agents", timeout=10,
                          json={"name": name, "host": f"{name}.example", "queues": queues})
    agent_id: str = response.raise_for_status().json()["id"]
    return agent_id


def claim(api_url: str, agent_id: str, queues: list[str], limit: int) -> list[str]:
    """Claim up to `limit` due runs as the agent; the ids of the runs it got."""
    response = httpx.post(f"{api_url}/claims", timeout=10,
                          json={"agent_id": agent_id, "queues": queues, "limit": limit})
    return [run["id"] for run in response.raise_for_status().json()]


def run_now(api_url: str, deployment: str) -> str:
    """A manual run of `deployment`, due now, made with the CLI; its id."""
    made = cli(api_url, "deployment", "run", deployment)
    assert made.code == 0, made.stderr
    return made.stdout.strip()


def table_rows(text: str) -> dict[str, list[str]]:
    """A printed table's rows by their first cell, split on whitespace (header lines skipped)."""
    return {line.split()[0]: line.split() for line in text.splitlines()[2:]}


# --- concurrency-limit ---------------------------------------------------------------------------


def test_concurrency_limit_create_change_ls_delete_with_active_counts(server: Any) -> None:
    seed(server.url)  # etl/hourly runs carry the tag etl; queue `existing` takes every run
    assert cli(server.url, "concurrency-limit", "ls").stdout == "no concurrency limits\n"
    created = cli(server.url, "concurrency-limit", "create", "etl", "2", "--json").json()
    assert {k: created[k] for k in ("tag", "limit", "active")} == {"tag": "etl", "limit": 2,
                                                                   "active": 0}
    shown = cli(server.url, "concurrency-limit", "create", "unused", "0")
    assert shown.code == 0 and "unused" in shown.stdout

    for _ in range(3):
        run_now(server.url, "etl/hourly")
    agent = register_agent(server.url, "worker", ["existing"])
    assert len(claim(server.url, agent, ["existing"], limit=5)) == 2  # the tag limit holds one

    listed = cli(server.url, "concurrency-limit", "ls", "--json").json()
    assert listed == api_get(server.url, "/concurrency-limits")
    assert [(c["tag"], c["limit"], c["active"]) for c in listed] == [("etl", 2, 2),
                                                                     ("unused", 0, 0)]
    rows = table_rows(cli(server.url, "concurrency-limit", "ls").stdout)
    assert rows["etl"] == ["etl", "2", "2"] and rows["unused"] == ["unused", "0", "0"]

    raised = cli(server.url, "concurrency-limit", "create", "etl", "3", "--json").json()
    assert (raised["limit"], raised["active"], raised["created"]) == (3, 2, created["created"])
    assert len(claim(server.url, agent, ["existing"], limit=5)) == 1

    deleted = cli(server.url, "concurrency-limit", "delete", "etl")
    assert deleted.code == 0 and deleted.stdout == "deleted concurrency limit on tag etl\n"
    assert [c["tag"] for c in api_get(server.url, "/concurrency-limits")] == ["unused"]
    assert_user_error(cli(server.url, "concurrency-limit", "delete", "etl"),
                      "no concurrency limit on tag 'etl'")


# --- agent ls ------------------------------------------------------------------------------------


def test_agent_ls_shows_registered_agents_status_and_running_count(server: Any) -> None:
    seed(server.url)
    assert cli(server.url, "agent", "ls").stdout == "no agents\n"
    agent = register_agent(server.url, "worker-1", ["existing", "gpu"])
    register_agent(server.url, "worker-2", ["existing"])

    (first, second) = cli(server.url, "agent", "ls", "--json").json()
    assert AGENT_FIELDS <= first.keys()
    assert (first["id"], first["name"], first["host"]) == (agent, "worker-1", "worker-1.example")
    assert (first["queues"], first["status"], first["running"]) == (["existing", "gpu"],
                                                                    "online", 0)
    assert second["name"] == "worker-2"

    run_now(server.url, "etl/nightly")
    assert len(claim(server.url, agent, ["existing"], limit=1)) == 1
    with server.database.write() as conn:  # worker-2 has not been heard from for an hour
        conn.execute(update(tables.agents).where(tables.agents.c.name == "worker-2")
                     .values(last_heartbeat=datetime.now(UTC) - timedelta(hours=1)))

    listed = cli(server.url, "agent", "ls", "--json").json()
    assert listed == api_get(server.url, "/agents")
    assert [(a["name"], a["status"], a["running"]) for a in listed] == [
        ("worker-1", "online", 1), ("worker-2", "offline", 0)]
    rows = table_rows(cli(server.url, "agent", "ls").stdout)
    assert rows["worker-1"][:6] == ["worker-1", "worker-1.example", "existing,", "gpu",
                                    "online", "1"]
    assert rows["worker-2"][:5] == ["worker-2", "worker-2.example", "existing", "offline", "0"]


# --- flow-run cancel -----------------------------------------------------------------------------


def test_cancel_a_waiting_run_then_a_claimed_one_and_refuse_an_ended_one(server: Any) -> None:
    seed(server.url)
    later = cli(server.url, "deployment", "run", "etl/nightly", "--start-in", "10m").stdout.strip()

    cancelled = cli(server.url, "flow-run", "cancel", later, "--json").json()
    assert RUN_FIELDS <= cancelled.keys()
    assert (cancelled["id"], cancelled["state"]) == (later, "CANCELLED")
    assert cancelled["reason"] == "cancelled_by_user"
    assert api_get(server.url, f"/flow-runs/{later}")["state"] == "CANCELLED"
    states = api_get(server.url, f"/flow-runs/{later}/states")
    assert [s["type"] for s in states] == ["SCHEDULED", "CANCELLED"]

    again = cli(server.url, "flow-run", "cancel", later)
    assert_user_error(again, later, "CANCELLED", "nothing to cancel")
    assert again.stdout == ""
    assert len(api_get(server.url, f"/flow-runs/{later}/states")) == 2

    claimed = run_now(server.url, "etl/hourly")
    agent = register_agent(server.url, "worker", ["existing"])
    assert claim(server.url, agent, ["existing"], limit=1) == [claimed]
    stopping = cli(server.url, "flow-run", "cancel", claimed)
    assert stopping.code == 0, stopping.stderr
    assert stopping.stdout.startswith("cancelling ") and "its agent will stop it" in stopping.stdout
    assert claimed in stopping.stdout
    assert api_get(server.url, f"/flow-runs/{claimed}")["state"] == "CANCELLING"


# --- flow-run explain ----------------------------------------------------------------------------


def explain(api_url: str, run_id: str) -> list[str]:
    result = cli(api_url, "flow-run", "explain", run_id)
    assert result.code == 0, result.stderr
    return result.stdout.splitlines()


def test_explain_names_every_hold_then_says_when_a_run_is_claimable(server: Any,
                                                                     project: Path  # noqa: F811
                                                                     ) -> None:
    assert cli(server.url, "deployment", "create", "etl.py", cwd=project).code == 0
    first = run_now(server.url, "etl/nightly")  # tags etl, nightly; no work queue yet

    as_json = cli(server.url, "flow-run", "explain", first, "--json").json()
    assert as_json == api_get(server.url, f"/flow-runs/{first}/explain")
    assert as_json["claimable"] is False
    assert [h["code"] for h in as_json["holds"]] == ["no_matching_queue"]
    lines = explain(server.url, first)
    assert lines[0].startswith("nightly-") and first in lines[0] and "SCHEDULED" in lines[0]
    assert lines[1:] == ["- no work queue's filter matches it"]

    assert cli(server.url, "work-queue", "create", "nightly", "--tag", "nightly").code == 0
    assert explain(server.url, first)[1:] == [
        "- no agent has polled a matching queue in the last minute (nightly)"]

    agent = register_agent(server.url, "worker", ["nightly"])
    assert claim(server.url, agent, ["nightly"], limit=1) == [first]
    assert explain(server.url, first)[1:] == ["- the run is PENDING, not waiting"]

    second = run_now(server.url, "etl/nightly")
    assert cli(server.url, "concurrency-limit", "create", "etl", "1").code == 0
    held = cli(server.url, "flow-run", "explain", second, "--json").json()
    assert [(h["code"], h["holders"]) for h in held["holds"]] == [("tag_limit_full", [first])]
    assert explain(server.url, second)[1:] == [
        f"- tag etl is at its concurrency limit (1/1); held by {first}"]

    assert cli(server.url, "concurrency-limit", "delete", "etl").code == 0
    assert explain(server.url, second)[1:] == [
        "claimable now: it waits only for an agent to claim it"]
    assert cli(server.url, "flow-run", "explain", second, "--json").json()["claimable"] is True


# --- errors --------------------------------------------------------------------------------------

UNKNOWN_RUN = "00000000-0000-4000-8000-000000000000"

USER_ERRORS: dict[str, tuple[list[str], list[str]]] = {
    # id: (arguments, fragments the error line must contain)
    "delete unknown limit": (["concurrency-limit", "delete", "nope"],
                             ["no concurrency limit on tag 'nope'"]),
    "limit on a tag with a space": (["concurrency-limit", "create", "a b", "1"], ["tag"]),
    "limit too high": (["concurrency-limit", "create", "etl", "10000000"], ["limit"]),
    "cancel unknown run": (["flow-run", "cancel", UNKNOWN_RUN], [UNKNOWN_RUN, "not found"]),
    "explain unknown run": (["flow-run", "explain", UNKNOWN_RUN], [UNKNOWN_RUN, "not found"]),
    "agents, server unreachable": (["agent", "ls"], ["cannot reach"]),
}


@pytest.mark.parametrize("case", list(USER_ERRORS))
def test_user_errors_are_one_line_and_exit_1(server: Any, case: str) -> None:
    args, fragments = USER_ERRORS[case]
    api_url = f"http://127.0.0.1:{closed_port()}/api" if "unreachable" in case else server.url
    result = cli(api_url, *args)
    assert_user_error(result, *fragments)
    assert result.stdout == ""
    assert api_get(server.url, "/concurrency-limits") == []


USAGE_ERRORS = {
    "negative limit": ["concurrency-limit", "create", "etl", "-1"],
    "limit not a number": ["concurrency-limit", "create", "etl", "lots"],
    "limit missing": ["concurrency-limit", "create", "etl"],
    "cancel a bad id": ["flow-run", "cancel", "not-a-uuid"],
    "explain a bad id": ["flow-run", "explain", "12345"],
    "inspect a bad id": ["flow-run", "inspect", ""],
    "agent ls, extra argument": ["agent", "ls", "extra"],
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_exit_2_before_talking_to_the_server(case: str) -> None:
    result = cli(f"http://127.0.0.1:{closed_port()}/api", *USAGE_ERRORS[case])
    assert result.code == 2, result
    assert "Usage:" in result.stderr and "Traceback" not in result.stdout + result.stderr
    assert "cannot reach" not in result.stderr


def test_bad_ids_and_limits_say_what_is_wrong() -> None:
    nowhere = f"http://127.0.0.1:{closed_port()}/api"
    bad_id = cli(nowhere, "flow-run", "cancel", "not-a-uuid").stderr.splitlines()[-1]
    assert "'not-a-uuid' is not a flow run id" in bad_id
    negative = cli(nowhere, "concurrency-limit", "create", "etl", "-1").stderr.splitlines()[-1]
    assert "-1" in negative  # click reads it as an option: still a usage error, naming it


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the backend is irrelevant
def test_the_new_commands_do_not_load_the_server_stack(server: Any) -> None:
    for args in (["agent", "ls"], ["concurrency-limit", "ls"],
                 ["flow-run", "explain", UNKNOWN_RUN]):
        probe = subprocess.run(
            [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True,
            text=True, env={**os.environ, "OSTINATO_API_URL": server.url}, timeout=60)
        assert probe.stderr.splitlines()[-1] == "[]", (args, probe.stderr)
