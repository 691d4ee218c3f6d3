"""The `ostinato` command line, run as a real subprocess against a real server.

Every test that uses `server` runs on SQLite and on PostgreSQL. The contract checked here:
exit 0 on success, 1 with exactly one `error: …` line on stderr (no traceback, nothing changed in
the database) on a user error, 2 on a usage error; `--json` prints the API's JSON.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from ostinato.cli.deployments import parse_parameter
from ostinato.cli.output import parse_duration
from ostinato.queues import tables
from ostinato.queues.database import Database

# --- helpers -------------------------------------------------------------------------------------

SNAPSHOT_TABLES = (tables.flows, tables.deployments, tables.schedules, tables.flow_runs,
                   tables.flow_run_states, tables.bundles, tables.work_queues)

FLOW_FILE = '''
from ostinato.deploy import Cron, Deployment, Interval, flow


@flow(name="etl", retries=1)
def etl(day: str = "today", limit: int = 10) -> None:
    print(day, limit)


nightly = Deployment(etl, name="nightly", tags=["etl", "nightly"],
                     parameters={"day": "monday", "limit": 100},
                     schedules=[Cron("0 2 * * *", timezone="Europe/Paris")])
hourly = Deployment(etl, name="hourly", tags=["etl"], schedules=[Interval(3600)])
'''

FLOW_ONLY = FLOW_FILE.split("\n\nnightly")[0] + "\n"

# §10 field names every JSON object of that kind must carry.
DEPLOYMENT_FIELDS = {"id", "name", "flow", "entrypoint", "bundle", "parameters", "tags",
                     "schedules", "paused", "overlap", "catchup", "retries", "timeout"}
SCHEDULE_FIELDS = {"slug", "kind", "timezone", "active"}
RUN_FIELDS = {"id", "name", "flow", "deployment", "state", "state_name", "reason", "attempt",
              "scheduled_time", "start_time", "end_time", "parameters", "tags", "work_queue",
              "agent", "auto_scheduled", "result", "exit_code", "exit_signal", "cpu_seconds",
              "peak_rss_bytes"}
QUEUE_FIELDS = {"name", "filter", "priority", "concurrency_limit", "paused"}
FILTER_FIELDS = {"tags", "exclude_tags", "deployments", "flows"}


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, self.stderr
        return json.loads(self.stdout)


def cli(api_url: str, *args: str, cwd: Path | None = None, stdin: str = "",
        env: Mapping[str, str] | None = None) -> Result:
    """`ostinato ARGS` in a fresh interpreter, talking to `api_url`; stderr is not a terminal."""
    base = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    full_env = {**base, "OSTINATO_API_URL": api_url, **(env or {})}
    done = subprocess.run([sys.executable, "-m", "ostinato.cli.main", *args], cwd=cwd,
                          input=stdin, capture_output=True, text=True, env=full_env, timeout=60)
    return Result(done.returncode, done.stdout, done.stderr)


def assert_user_error(result: Result, *fragments: str) -> None:
    """Exit 1, exactly one `error: …` line on stderr naming `fragments`, no traceback."""
    assert result.code == 1, result
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def snapshot(database: Database) -> dict[str, list[str]]:
    """Every row of the tables `deployment create` may touch (timestamps included)."""
    with database.read() as conn:
        return {table.name: sorted(repr(tuple(row)) for row in conn.execute(select(table)))
                for table in SNAPSHOT_TABLES}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder holding etl.py (two deployments); the bundle is this folder, nothing else."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "etl.py").write_text(FLOW_FILE)
    return folder


SEED = [
    {"flow": "etl", "name": "nightly", "entrypoint": "etl.py:etl", "path": "/srv/flows",
     "parameters": {"day": "monday", "limit": 100}, "tags": ["etl", "nightly"],
     "schedules": [{"kind": "cron", "cron": "0 2 * * *", "timezone": "Europe/Paris"}]},
    {"flow": "etl", "name": "hourly", "entrypoint": "etl.py:etl", "path": "/srv/flows",
     "tags": ["etl"], "schedules": [{"kind": "interval", "every": 3600}]},
]


def seed(api_url: str) -> None:
    """Deployments and a work queue made through the API (faster than the CLI), so that a test
    starts from a database with something in it."""
    with httpx.Client(base_url=api_url, timeout=10) as http:
        http.put("/deployments", json={"deployments": SEED}).raise_for_status()
        http.post("/work-queues", json={"name": "existing"}).raise_for_status()


def api_get(api_url: str, path: str) -> Any:
    with httpx.Client(base_url=api_url, timeout=10) as http:
        return http.get(path).raise_for_status().json()


# --- deployment create ---------------------------------------------------------------------------


def test_create_twice_reports_unchanged_and_leaves_every_row_as_it_was(server: Any,
                                                                       project: Path) -> None:
    first = cli(server.url, "deployment", "create", "etl.py", cwd=project)
    assert first.code == 0, first.stderr
    assert first.stdout.strip() == ("created: 2 (etl/nightly, etl/hourly), updated: 0, "
                                    "unchanged: 0")
    before = snapshot(server.database)
    assert len(before["deployments"]) == 2 and len(before["deployment_schedules"]) == 2
    assert len(before["bundles"]) == 1

    # Pretend stderr is a terminal: the progress notes appear there, the JSON result on stdout.
    second = cli(server.url, "deployment", "create", "etl.py", "--json", cwd=project,
                 env={"TTY_COMPATIBLE": "1"})
    result = second.json()
    assert result["created"] == [] and result["updated"] == []
    assert sorted(result["unchanged"]) == ["etl/hourly", "etl/nightly"]
    assert "loading" in second.stderr and "already on the server" in second.stderr
    assert snapshot(server.database) == before


def test_create_from_flags_builds_the_deployment(server: Any, project: Path) -> None:
    result = cli(server.url, "deployment", "create", "etl.py", "--flow", "etl", "--name", "adhoc",
                 "--interval", "90m", "--timezone", "Europe/Paris", "--param", "limit=7",
                 "--param", "day=friday", "--tag", "manual", "--json", cwd=project).json()
    assert result["created"] == ["etl/adhoc"]
    (deployment,) = result["deployments"]
    assert deployment["parameters"] == {"limit": 7, "day": "friday"}
    assert deployment["tags"] == ["manual"]
    (schedule,) = deployment["schedules"]
    assert schedule["kind"] == "interval" and schedule["timezone"] == "Europe/Paris"
    assert schedule["every"] == "PT1H30M"


def test_a_file_registers_all_its_deployments_or_none(server: Any, project: Path) -> None:
    bad = FLOW_FILE + '\nbroken = Deployment(etl, name="broken", parameters={"limit": "lots"})\n'
    (project / "etl.py").write_text(bad)
    seed(server.url)  # etl/nightly and etl/hourly exist: the good two would be updates
    before = snapshot(server.database)

    result = cli(server.url, "deployment", "create", "etl.py", cwd=project)

    assert_user_error(result, "etl/broken", "limit")
    assert snapshot(server.database) == before
    assert len(before["deployments"]) == 2 and before["bundles"] == []


BAD_INPUTS: dict[str, tuple[dict[str, str], list[str], list[str]]] = {
    # id: (files to write, arguments, fragments the error line must contain)
    "syntax error": ({"broken.py": "def oops(:\n"}, ["deployment", "create", "broken.py"],
                     ["broken.py:1", "syntax error"]),
    "import error": ({"broken.py": "import does_not_exist\n"},
                     ["deployment", "create", "broken.py"], ["does_not_exist"]),
    "raises at import": ({"broken.py": 'raise RuntimeError("boom at import")\n'},
                         ["deployment", "create", "broken.py"], ["RuntimeError", "boom at import"]),
    "no deployment": ({"lonely.py": FLOW_ONLY}, ["deployment", "create", "lonely.py"],
                      ["no Deployment"]),
    "missing file": ({}, ["deployment", "create", "missing.py"], ["missing.py", "no such file"]),
    "unknown flow": ({}, ["deployment", "create", "etl.py", "--flow", "nope", "--name", "x"],
                     ["no flow named 'nope'", "etl"]),
    "bad cron": ({}, ["deployment", "create", "etl.py", "--flow", "etl", "--name", "x",
                      "--cron", "0 25 * * *"], ["hour", "25"]),
    "offset timezone": ({}, ["deployment", "create", "etl.py", "--flow", "etl", "--name", "x",
                             "--cron", "0 2 * * *", "--timezone", "+02:00"], ["+02:00", "IANA"]),
    "wrong parameter type": ({}, ["deployment", "create", "etl.py", "--flow", "etl", "--name",
                                  "x", "--param", "limit=lots"], ["limit"]),
    "unknown parameter": ({}, ["deployment", "create", "etl.py", "--flow", "etl", "--name", "x",
                               "--param", "colour=red"], ["colour"]),
    "declared bad parameter": ({"bad.py": FLOW_ONLY + 'd = Deployment(etl, name="d", '
                                          'parameters={"limit": [1]})\n'},
                               ["deployment", "create", "bad.py"], ["etl/d", "limit"]),
    "unknown deployment": ({}, ["deployment", "inspect", "etl/unknown"],
                           ["deployment 'etl/unknown' not found"]),
    "run unknown deployment": ({}, ["deployment", "run", "etl/unknown"], ["not found"]),
    "existing work queue": ({}, ["work-queue", "create", "existing"], ["already exists"]),
    "server unreachable": ({}, ["deployment", "create", "etl.py"], ["cannot reach"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_1_and_changes_nothing(server: Any, project: Path,
                                                          case: str) -> None:
    files, args, fragments = BAD_INPUTS[case]
    for name, content in files.items():
        (project / name).write_text(content)
    seed(server.url)
    before = snapshot(server.database)
    api_url = f"http://127.0.0.1:{closed_port()}/api" if case == "server unreachable" \
        else server.url

    result = cli(api_url, *args, cwd=project)

    assert_user_error(result, *fragments)
    assert result.stdout == ""
    assert snapshot(server.database) == before


USAGE_ERRORS = {
    "param without =": ["deployment", "run", "etl/x", "--param", "novalue"],
    "flow without name": ["deployment", "create", "etl.py", "--flow", "etl"],
    "schedule flags without flow": ["deployment", "create", "etl.py", "--cron", "@daily"],
    "cron and interval": ["deployment", "create", "etl.py", "--flow", "etl", "--name", "x",
                          "--cron", "@daily", "--interval", "60"],
    "bad duration": ["deployment", "run", "etl/x", "--start-in", "soon"],
    "start-in and at": ["deployment", "run", "etl/x", "--start-in", "1m", "--at", "2030-01-01"],
    "name without slash": ["deployment", "inspect", "nightly"],
    "limit and no-limit": ["work-queue", "update", "q", "--limit", "1", "--no-limit"],
    "unknown command": ["deployment", "frobnicate"],
}


@pytest.mark.parametrize("case", list(USAGE_ERRORS))
def test_usage_errors_exit_2_before_talking_to_the_server(case: str) -> None:
    # The API URL points nowhere: a usage error must be found before any request.
    result = cli(f"http://127.0.0.1:{closed_port()}/api", *USAGE_ERRORS[case])
    assert result.code == 2, result
    assert "Usage:" in result.stderr and "Traceback" not in result.stderr
    assert "cannot reach" not in result.stderr


# --- reading -------------------------------------------------------------------------------------


def test_ls_and_inspect_print_tables_or_the_apis_json(server: Any) -> None:
    seed(server.url)

    listed = cli(server.url, "deployment", "ls", "--json").json()
    assert [d["name"] for d in listed] == ["etl/hourly", "etl/nightly"]
    for deployment in listed:
        assert DEPLOYMENT_FIELDS <= deployment.keys()
        assert all(SCHEDULE_FIELDS <= s.keys() for s in deployment["schedules"])
    tagged = cli(server.url, "deployment", "ls", "--tag", "nightly", "--json").json()
    assert [d["name"] for d in tagged] == ["etl/nightly"]

    nightly = cli(server.url, "deployment", "inspect", "etl/nightly", "--json").json()
    assert nightly == next(d for d in listed if d["name"] == "etl/nightly")
    assert nightly["schedules"][0]["cron"] == "0 2 * * *"

    table = cli(server.url, "deployment", "ls")
    rows = {line.split()[0]: line for line in table.stdout.splitlines()[2:]}
    assert set(rows) == {"etl/hourly", "etl/nightly"}
    assert "every 1h" in rows["etl/hourly"] and "(Europe/Paris)" in rows["etl/nightly"]
    shown = cli(server.url, "deployment", "inspect", "etl/nightly").stdout
    assert nightly["id"] in shown and '{"day": "monday", "limit": 100}' in shown


def test_run_now_or_later_and_find_runs_by_state_deployment_and_tag(server: Any) -> None:
    seed(server.url)
    asked = datetime.now(UTC)

    later = cli(server.url, "deployment", "run", "etl/nightly", "--param", "limit=5",
                "--start-in", "10m")
    assert later.code == 0, later.stderr
    later_id = later.stdout.strip()
    hourly = cli(server.url, "deployment", "run", "etl/hourly", "--tag", "adhoc",
                 "--at", "2030-01-31T02:00", "--json").json()

    run = cli(server.url, "flow-run", "inspect", later_id, "--json").json()
    assert RUN_FIELDS <= run.keys()
    assert run["state"] == "SCHEDULED" and run["auto_scheduled"] is False
    assert run["parameters"] == {"day": "monday", "limit": 5}
    scheduled = datetime.fromisoformat(run["scheduled_time"])
    assert timedelta(minutes=9) < scheduled - asked < timedelta(minutes=11)
    assert [s["type"] for s in run["states"]] == ["SCHEDULED"]
    assert hourly["scheduled_time"].startswith("2030-01-31T02:00:00")
    assert "adhoc" in hourly["tags"]

    def ids(*filters: str) -> set[str]:
        found = cli(server.url, "flow-run", "ls", *filters, "--json").json()
        assert all(RUN_FIELDS <= r.keys() for r in found)
        return {r["id"] for r in found} & {later_id, hourly["id"]}

    assert ids("--state", "scheduled", "--state", "PENDING", "--deployment", "etl/nightly"
               ) == {later_id}
    assert ids("--tag", "adhoc", "--before", "2030-02-01") == {hourly["id"]}
    assert ids("--state", "COMPLETED", "--after", "2020-01-01") == set()
    table = cli(server.url, "flow-run", "ls", "--flow", "etl").stdout
    assert later_id in table and hourly["id"] in table
    shown = cli(server.url, "flow-run", "inspect", later_id).stdout
    assert "state history" in shown and '{"day": "monday", "limit": 5}' in shown


# --- changing ------------------------------------------------------------------------------------


def test_pause_resume_and_delete_a_deployment(server: Any) -> None:
    seed(server.url)

    def paused() -> dict[str, bool]:
        return {d["name"]: d["paused"] for d in api_get(server.url, "/deployments")}

    assert cli(server.url, "deployment", "pause", "etl/nightly").stdout == "paused etl/nightly\n"
    assert paused() == {"etl/nightly": True, "etl/hourly": False}
    active = cli(server.url, "deployment", "ls", "--active", "--json").json()
    assert [d["name"] for d in active] == ["etl/hourly"]
    assert cli(server.url, "deployment", "resume", "etl/nightly").code == 0
    assert paused() == {"etl/nightly": False, "etl/hourly": False}

    refused = cli(server.url, "deployment", "delete", "etl/nightly", stdin="n\n")
    assert refused.code == 1 and "etl/nightly" in paused()
    assert cli(server.url, "deployment", "delete", "etl/nightly", "--yes").code == 0
    assert paused() == {"etl/hourly": False}
    assert_user_error(cli(server.url, "deployment", "pause", "etl/nightly"), "not found")


def test_work_queue_create_update_pause_resume_delete(server: Any) -> None:
    created = cli(server.url, "work-queue", "create", "prod", "--tag", "etl", "--tag", "prod",
                  "--exclude-tag", "slow", "--deployment", "etl/nightly", "--priority", "3",
                  "--limit", "4", "--json").json()
    assert QUEUE_FIELDS <= created.keys() and FILTER_FIELDS == created["filter"].keys()
    assert created["filter"] == {"tags": ["etl", "prod"], "exclude_tags": ["slow"],
                                 "deployments": ["etl/nightly"], "flows": []}
    assert (created["priority"], created["concurrency_limit"], created["paused"]) == (3, 4, False)

    updated = cli(server.url, "work-queue", "update", "prod", "--flow", "etl", "--flow",
                  "reports", "--no-limit", "--json").json()
    assert updated["filter"] == {**created["filter"], "flows": ["etl", "reports"]}
    assert (updated["priority"], updated["concurrency_limit"]) == (3, None)
    cleared = cli(server.url, "work-queue", "update", "prod", "--clear-filter", "--tag", "only",
                  "--priority", "7", "--json").json()
    assert cleared["filter"] == {"tags": ["only"], "exclude_tags": [], "deployments": [],
                                 "flows": []}
    assert (cleared["priority"], cleared["concurrency_limit"]) == (7, None)

    assert cli(server.url, "work-queue", "pause", "prod").code == 0
    inspected = cli(server.url, "work-queue", "inspect", "prod", "--json").json()
    assert inspected == {**cleared, "paused": True, "updated": inspected["updated"]}
    assert cli(server.url, "work-queue", "resume", "prod").code == 0
    assert [q["paused"] for q in cli(server.url, "work-queue", "ls", "--json").json()] == [False]
    table = cli(server.url, "work-queue", "ls").stdout.splitlines()
    assert table[2].split()[:4] == ["prod", "7", "none", "active"]
    assert cli(server.url, "work-queue", "delete", "prod").code == 0
    assert api_get(server.url, "/work-queues") == []
    assert_user_error(cli(server.url, "work-queue", "inspect", "prod"), "not found")


# --- server and database -------------------------------------------------------------------------


def test_db_upgrade_says_what_it_did_and_is_idempotent(database_url: str) -> None:
    env = {"OSTINATO_DATABASE_URL": database_url}
    first = cli("http://unused", "db", "upgrade", env=env)
    assert first.code == 0, first.stderr
    assert "upgraded schema from empty to revision" in first.stdout
    second = cli("http://unused", "db", "upgrade", env=env)
    assert second.code == 0 and "nothing to do" in second.stdout


def test_server_start_port_flag_overrides_the_environment_and_sigterm_stops_it(tmp_path: Path
                                                                          ) -> None:
    port = closed_port()
    env = {**os.environ, "OSTINATO_HOME": str(tmp_path / "home"),
           "OSTINATO_PORT": str(closed_port())}
    process = subprocess.Popen(
        [sys.executable, "-m", "ostinato.cli.main", "server", "start", "--port", str(port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        health = wait_for_health(f"http://127.0.0.1:{port}/api/health", deadline_seconds=20)
        assert health["status"] == "ok" and health["database"] == "sqlite"
        assert (tmp_path / "home" / "ostinato.db").exists()
        process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal so the parent sees it.
        assert process.wait(timeout=15) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def wait_for_health(url: str, deadline_seconds: float) -> dict[str, Any]:
    deadline = time.monotonic() + deadline_seconds
    while True:
        try:
            response = httpx.get(url, timeout=1)
            if response.status_code == 200:
                found: dict[str, Any] = response.json()
                return found
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"{url} not healthy within {deadline_seconds} s"
        time.sleep(0.05)


# --- start-up cost -------------------------------------------------------------------------------

HEAVY = ("sqlalchemy", "fastapi", "uvicorn", "alembic")
PROBE = """
import sys
from ostinato.cli.main import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print(sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
"""


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the backend is irrelevant
def test_everyday_commands_do_not_load_the_server_stack(server: Any) -> None:
    seed(server.url)
    for args in (["--help"], ["deployment", "ls"], ["work-queue", "ls"]):
        probe = subprocess.run(
            [sys.executable, "-c", PROBE.format(heavy=HEAVY), *args], capture_output=True,
            text=True, env={**os.environ, "OSTINATO_API_URL": server.url}, timeout=60)
        assert probe.stdout and probe.stderr.splitlines()[-1] == "[]", (args, probe.stderr)


# --- option parsing (in-process) -----------------------------------------------------------------


@pytest.mark.parametrize(("text", "key", "value"), [
    ("limit=5", "limit", 5), ("ratio=0.5", "ratio", 0.5), ("flag=true", "flag", True),
    ("xs=[1, 2]", "xs", [1, 2]), ('day="5"', "day", "5"), ("day=monday", "day", "monday"),
    ("empty=", "empty", ""), ("eq=a=b", "eq", "a=b"), ("nan=NaN", "nan", "NaN"),
    ("none=null", "none", None),
])
def test_param_value_is_json_when_it_parses_else_a_string(text: str, key: str,
                                                          value: object) -> None:
    parsed = parse_parameter(text)
    assert (parsed.key, parsed.value) == (key, value)
    assert type(parsed.value) is type(value)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90), ("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1h30m", 5400),
    ("1.5m", 90),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


# --- upcoming, backfill, scheduler ---------------------------------------------------------------


def test_upcoming_lists_instants_in_utc_and_local_time_with_dst_flags(server: Any, project: Path
                                                                       ) -> None:
    assert cli(server.url, "deployment", "create", "etl.py", cwd=project).code == 0
    got = cli(server.url, "deployment", "upcoming", "etl/nightly", "-n", "2",
              "--after", "2026-10-24T12:00", "--json").json()
    assert got == [
        {"scheduled_time": "2026-10-25T00:00:00Z", "local_time": "2026-10-25T02:00:00+02:00",
         "schedule": got[0]["schedule"], "dst": "fold"},
        {"scheduled_time": "2026-10-26T01:00:00Z", "local_time": "2026-10-26T02:00:00+01:00",
         "schedule": got[0]["schedule"], "dst": None},
    ]
    table = cli(server.url, "deployment", "upcoming", "etl/nightly", "-n", "1",
                "--after", "2026-10-24T12:00")
    assert "2026-10-25 00:00:00" in table.stdout and "fold" in table.stdout


def test_backfill_dry_run_then_real_then_again(server: Any, project: Path) -> None:
    assert cli(server.url, "deployment", "create", "etl.py", cwd=project).code == 0
    window = ("--start", "2026-11-01", "--end", "2026-11-03T00:00")
    dry = cli(server.url, "deployment", "backfill", "etl/nightly", *window, "--dry-run", "--json")
    real = cli(server.url, "deployment", "backfill", "etl/nightly", *window, "--json")
    again = cli(server.url, "deployment", "backfill", "etl/nightly", *window)
    assert [r["scheduled_time"] for r in dry.json()["runs"]] == [
        "2026-11-01T01:00:00Z", "2026-11-02T01:00:00Z"]
    assert real.json()["runs"] == dry.json()["runs"]
    assert again.code == 0 and "created 0 runs; 2 slots already had one" in again.stdout
    runs = cli(server.url, "flow-run", "ls", "--deployment", "etl/nightly", "--json").json()
    assert len(runs) == 2
    reversed_window = cli(server.url, "deployment", "backfill", "etl/nightly",
                          "--start", "2026-11-05", "--end", "2026-11-01")
    assert_user_error(reversed_window, "ends before it starts")


def test_scheduler_once_materialises_the_deployments(tmp_path: Path, project: Path) -> None:
    home = {"OSTINATO_HOME": str(tmp_path / "home")}
    port = closed_port()
    api = f"http://127.0.0.1:{port}/api"
    server = subprocess.Popen([sys.executable, "-m", "ostinato.cli.main", "server", "start",
                               "--port", str(port)], env={**os.environ, **home,
                                                          "OSTINATO_RUN_SCHEDULER": "false"},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_health(api)
        assert cli(api, "deployment", "create", "etl.py", cwd=project).code == 0
        once = cli(api, "scheduler", "start", "--once", env=home)
        again = cli(api, "scheduler", "start", "--once", env=home)
        runs = cli(api, "flow-run", "ls", "--limit", "1000", "--json").json()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=15)
    assert once.code == 0 and again.code == 0, once.stderr + again.stderr
    assert f"materialised {len(runs)} runs for 2 schedules" in once.stdout
    assert "materialize: nothing to do" in again.stdout
    assert {r["deployment"] for r in runs} == {"etl/nightly", "etl/hourly"}


def _wait_for_health(api: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{api}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("server did not answer /api/health within 15 s")


def test_work_queue_preview_lists_matching_waiting_runs_in_order(server: Any) -> None:
    seed(server.url)
    soon = (datetime.now(UTC) + timedelta(minutes=5)).isoformat()
    later = (datetime.now(UTC) + timedelta(hours=3)).isoformat()
    for when in (later, soon):
        assert cli(server.url, "deployment", "run", "etl/nightly", "--at", when).code == 0
    assert cli(server.url, "work-queue", "create", "nightly", "--tag", "nightly").code == 0
    assert cli(server.url, "work-queue", "create", "gpu", "--tag", "gpu").code == 0
    one_hour = cli(server.url, "work-queue", "preview", "nightly", "--json").json()
    four_hours = cli(server.url, "work-queue", "preview", "nightly", "--hours", "4", "--json")
    none = cli(server.url, "work-queue", "preview", "gpu")
    assert [r["deployment"] for r in one_hour] == ["etl/nightly"]
    times = [r["scheduled_time"] for r in four_hours.json()]
    assert len(times) == 2 and times == sorted(times)
    assert none.code == 0 and "no runs for gpu" in none.stdout
    assert_user_error(cli(server.url, "work-queue", "preview", "nope"), "not found")
