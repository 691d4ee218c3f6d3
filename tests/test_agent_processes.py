"""`ostinato agent start` as a real process against a real server: a cancelled run leaves no
process of its tree behind, SIGTERM drains the agent and it exits 0 in time, and a run that
cannot start ends with a clear reason while the same agent keeps serving."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from sqlalchemy import update

from ostinato.deploy.bundles import sha256_hex
from ostinato.deploy.client import Client
from ostinato.deploy.registration import register_file
from ostinato.deploy.settings import Settings
from ostinato.queues import bundles as stored_bundles
from ostinato.queues.database import Database
from ostinato.queues.tables import bundles
from tests.agents import ended, start_run, until_state
from tests.conftest import RunningServer, free_port, serving

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

AGENT = "proc-agent"
GRACE = 2.0  # SIGTERM to SIGKILL, on the server (cancel orders) and in the agent (drain)
LEASE = 6.0  # the agent heartbeats every third of it, so it learns of a cancel within 2 s
HEARTBEAT = LEASE / 3
DRAIN = 5.0
MARGIN = 1.5  # process start-up, reports and polling on a loaded 2-core machine

FLOWS = textwrap.dedent("""
    import signal
    import subprocess
    import sys
    import time
    from typing import Annotated

    from pydantic import Field

    from ostinato.deploy import Deployment, flow


    @flow(name="add")
    def add(a: int, b: int = 1) -> int:
        return a + b


    @flow(name="positive")
    def positive(n: Annotated[int, Field(gt=0)]) -> int:
        return n


    @flow(name="nap")
    def nap(seconds: float) -> None:
        time.sleep(seconds)


    @flow(name="tree")
    def tree(marker: str, deaf: bool = False) -> None:
        subprocess.Popen([sys.executable, "spawner.py", marker])
        if deaf:  # only SIGKILL ends the flow now (its child was started before)
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(300)


    add_d = Deployment(add, "d")
    positive_d = Deployment(positive, "d")
    nap_d = Deployment(nap, "d")
    tree_d = Deployment(tree, "d")
""")

SPAWNER = textwrap.dedent("""
    # The flow's child: starts two grandchildren, one deaf to SIGTERM, then writes the pids of
    # the whole tree to the file named by argv[1] (atomically) and sleeps.
    import json
    import os
    import subprocess
    import sys
    import time

    DEAF = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('deaf', flush=True); time.sleep(300)")
    sleeper = subprocess.Popen(["sleep", "300"])
    deaf = subprocess.Popen([sys.executable, "-c", DEAF], stdout=subprocess.PIPE)
    deaf.stdout.readline()  # it ignores SIGTERM from now on
    pids = {"flow": os.getppid(), "child": os.getpid(), "sleeper": sleeper.pid,
            "deaf": deaf.pid}
    with open(sys.argv[1] + ".tmp", "w") as out:
        json.dump(pids, out)
    os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    time.sleep(300)
""")


@pytest.fixture
def server(database: Database, tmp_path: Path) -> Iterator[RunningServer]:
    """A server without its scheduling loops, with a cancel grace short enough to wait for."""
    settings = Settings(home=tmp_path / "server", port=free_port(), run_scheduler=False,
                        cancel_grace_seconds=GRACE, lease_seconds=LEASE)
    with serving(database, settings) as running:
        yield running
        running.app.state.notifier.close()  # long polls of killed agents answer, as at shutdown


@pytest.fixture
def project(server: RunningServer, tmp_path: Path) -> str:
    """FLOWS registered as `deployment create` does (bundled, with parameter schemas), and the
    `default` queue; the bundle's sha256."""
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "flows.py").write_text(FLOWS)
    (folder / "spawner.py").write_text(SPAWNER)
    with Client(server.url, "") as client:
        register_file(client, folder / "flows.py")
        client.post("/work-queues", {"name": "default"})
        sha: str = client.get("/deployments/add/d")["bundle"]
    return sha


@dataclass
class AgentProcess:
    process: subprocess.Popen[bytes]
    home: Path

    def output(self) -> str:
        return (self.home / "agent.log").read_text(errors="replace")


@contextmanager
def agent_process(server: RunningServer, home: Path, *options: str) -> Iterator[AgentProcess]:
    """`ostinato agent start` on the `default` queue; killed after if it is still running."""
    home.mkdir(exist_ok=True)
    env = {**os.environ, "OSTINATO_API_URL": server.url, "OSTINATO_HOME": str(home),
           "OSTINATO_CANCEL_GRACE_SECONDS": str(GRACE)}
    with open(home / "agent.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ostinato.cli.main", "agent", "start", "-q", "default",
             "--name", AGENT, *options], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield AgentProcess(process, home)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


# --- cancelling a run whose flow started grandchildren ------------------------------------------


def _pids(marker: Path, timeout: float = 30) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert time.monotonic() < deadline, f"the flow's process tree never wrote {marker}"
        time.sleep(0.02)
    pids: dict[str, int] = json.loads(marker.read_text())
    return pids


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _deaths(pids: dict[str, int], timeout: float) -> dict[str, float]:
    """When each process was first seen gone (monotonic), for those gone within `timeout`."""
    deaths: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(deaths) < len(pids) and time.monotonic() < deadline:
        now = time.monotonic()
        deaths.update({name: now for name, pid in pids.items()
                       if name not in deaths and not _alive(pid)})
        time.sleep(0.02)
    return deaths


def _kill(pids: dict[str, int]) -> None:
    """Leave nothing running behind a failed test."""
    for pid in pids.values():
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def _cancel(server: RunningServer, run_id: str) -> str:
    done = subprocess.run([sys.executable, "-m", "ostinato.cli.main", "flow-run", "cancel", run_id],
                          env={**os.environ, "OSTINATO_API_URL": server.url},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("deaf", [False, True], ids=["flow-obeys-sigterm", "flow-ignores-sigterm"])
def test_cancelling_a_run_ends_its_whole_process_tree(server: RunningServer, project: str,
                                                      tmp_path: Path, deaf: bool) -> None:
    marker = tmp_path / "tree.json"
    run_id = start_run(server, "tree/d", marker=str(marker), deaf=deaf)
    with agent_process(server, tmp_path / "agent") as agent:
        pids = _pids(marker)
        try:
            assert "cancelling" in _cancel(server, run_id)
            cancelled = time.monotonic()
            deaths = _deaths(pids, timeout=HEARTBEAT + GRACE + MARGIN)
        finally:
            _kill(pids)
        run = ended(server, run_id, timeout=5)
        output = agent.output()
    survivors = sorted(set(pids) - set(deaths))
    assert survivors == [], f"{survivors} outlived the cancel by {HEARTBEAT + GRACE + MARGIN} s" \
                            f"\n{output}"
    assert (run["state"], run["reason"]) == ("CANCELLED", "cancelled_by_user"), output
    assert run["history"][-3:] == ["RUNNING", "CANCELLING", "CANCELLED"]
    sigterm_to_sigkill = deaths["deaf"] - deaths["sleeper"]
    # The group's SIGTERM ended the sleeper; the rest waited for SIGKILL. Deaths are seen by
    # polling, late on a loaded machine: half the grace tells a wait from an immediate kill.
    if deaf:
        assert sigterm_to_sigkill >= GRACE / 2, f"SIGKILL came {sigterm_to_sigkill:.2f} s " \
                                                f"after SIGTERM, before the {GRACE} s grace"
    print(f"tree gone {max(deaths.values()) - cancelled:.2f} s after the cancel; "
          f"SIGTERM to last death {sigterm_to_sigkill:.2f} s")


# --- SIGTERM: hand back, drain, exit 0 ----------------------------------------------------------


def _exit_code(agent: AgentProcess, timeout: float) -> int:
    try:
        return agent.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the agent still ran {timeout} s after SIGTERM\n{agent.output()}")


def _states(server: RunningServer, *run_ids: str) -> list[str]:
    with server.client() as client:
        return [client.get(f"/flow-runs/{run_id}").json()["state"] for run_id in run_ids]


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(3), ids=lambda i: f"try{i}")
@pytest.mark.parametrize(("seconds", "state", "reason"), [
    pytest.param(60, "CANCELLED", "agent_stopping", id="cancelled-at-drain"),
    pytest.param(1, "COMPLETED", "success", id="finished-within-drain"),
])
def test_sigterm_hands_back_drains_and_exits_0_in_time(
        server: RunningServer, project: str, tmp_path: Path, seconds: float, state: str,
        reason: str, attempt: int) -> None:
    running_id = start_run(server, "nap/d", seconds=seconds)
    waiting_id = start_run(server, "add/d", start_in=20, a=1)  # claimed early, not started
    with agent_process(server, tmp_path / "agent", "--limit", "2", "--prefetch", "30",
                       "--drain-timeout", str(DRAIN)) as agent:
        until_state(server, running_id, "RUNNING")
        until_state(server, waiting_id, "PENDING")
        stopped = time.monotonic()
        agent.process.send_signal(signal.SIGTERM)
        handed_back = until_state(server, waiting_id, "SCHEDULED", timeout=5) - stopped
        run = ended(server, running_id, timeout=DRAIN + GRACE + 10)
        run_ended = time.monotonic() - stopped
        code = _exit_code(agent, timeout=DRAIN + GRACE + 10)
        exited = time.monotonic() - stopped
        output = agent.output()
    assert handed_back < 1, f"handed back {handed_back:.2f} s after SIGTERM"
    assert (run["state"], run["reason"]) == (state, reason), output
    assert run_ended < DRAIN, f"the running run ended {run_ended:.2f} s after SIGTERM " \
                              f"(drain timeout {DRAIN} s)"
    assert code == 0, output
    assert exited < DRAIN + MARGIN, f"the agent exited {exited:.2f} s after SIGTERM " \
                                    f"(drain timeout {DRAIN} s)\n{output}"
    assert _states(server, running_id, waiting_id) == [state, "SCHEDULED"]
    print(f"handed back {handed_back:.2f} s, {state} {run_ended:.2f} s, exited {exited:.2f} s "
          "after SIGTERM")


def _until_registered(server: RunningServer, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    with server.client() as client:
        while AGENT not in [a["name"] for a in client.get("/agents").json()]:
            assert time.monotonic() < deadline, f"agent {AGENT} never registered"
            time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_stops_an_idle_agent_in_time(server: RunningServer, project: str,
                                             tmp_path: Path) -> None:
    with agent_process(server, tmp_path / "agent", "--drain-timeout", str(DRAIN)) as agent:
        _until_registered(server)  # then it long-polls for runs
        stopped = time.monotonic()
        agent.process.send_signal(signal.SIGTERM)
        code = _exit_code(agent, timeout=60)
        exited = time.monotonic() - stopped
        output = agent.output()
    assert code == 0, output
    assert exited < DRAIN + MARGIN, f"the idle agent exited {exited:.2f} s after SIGTERM " \
                                    f"(drain timeout {DRAIN} s)\n{output}"


# --- runs that cannot start ---------------------------------------------------------------------


def _deploy(server: RunningServer, name: str, entrypoint: str, bundle: str) -> str:
    """A deployment of the `add` flow with its own entrypoint and bundle; its full name."""
    with Client(server.url, "") as client:
        client.put("/deployments", {"deployments": [{
            "flow": "add", "name": name, "entrypoint": entrypoint, "bundle": bundle}]})
    return f"add/{name}"


def _archive(files: dict[str, str]) -> bytes:
    """A .tar.gz with these members, names taken as they are (`../` included)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _store(server: RunningServer, data: bytes) -> str:
    """Bytes stored as a bundle under their sha256, straight into the server's database."""
    sha = sha256_hex(data)
    with server.database.write() as conn:
        stored_bundles.put(conn, sha, data, max_bytes=server.settings.max_bundle_bytes)
    return sha


def _missing_attribute(server: RunningServer, bundle: str) -> str:
    return _deploy(server, "missing-attribute", "flows.py:nothing", bundle)


def _missing_file(server: RunningServer, bundle: str) -> str:
    return _deploy(server, "missing-file", "gone.py:add", bundle)


def _constrained_parameter(server: RunningServer, bundle: str) -> str:
    return "positive/d"  # n=0 is an integer, as the server checks, but not > 0


def _tampered_bundle(server: RunningServer, bundle: str) -> str:
    sha = _store(server, _archive({"flows.py": FLOWS}))
    with server.database.write() as conn:  # the server now serves other bytes under that hash
        conn.execute(update(bundles).where(bundles.c.sha256 == sha)
                     .values(content=_archive({"flows.py": "raise SystemExit(3)\n"})))
    return _deploy(server, "tampered", "flows.py:add", sha)


def _escaping_bundle(server: RunningServer, bundle: str) -> str:
    sha = _store(server, _archive({"flows.py": FLOWS, "../evil.py": "EVIL = True\n"}))
    return _deploy(server, "escaping", "flows.py:add", sha)


@pytest.mark.slow
@pytest.mark.parametrize(("prepare", "parameters", "state", "reason", "message"), [
    pytest.param(_missing_attribute, {"a": 1}, "FAILED", "bad_entrypoint",
                 "AttributeError: flows.py has no attribute 'nothing'", id="missing-attribute"),
    pytest.param(_missing_file, {"a": 1}, "FAILED", "bad_entrypoint",
                 "FileNotFoundError: gone.py: no such file", id="missing-file"),
    pytest.param(_constrained_parameter, {"n": 0}, "FAILED", "bad_parameters",
                 "parameter 'n' of flow 'positive': Input should be greater than 0",
                 id="invalid-parameter"),
    pytest.param(_tampered_bundle, {"a": 1}, "CRASHED", "launch_failed",
                 "bundle content does not match sha256", id="hash-mismatch"),
    pytest.param(_escaping_bundle, {"a": 1}, "CRASHED", "launch_failed",
                 "bundle member '../evil.py' has a '..' component", id="dotdot-member"),
])
def test_a_run_that_cannot_start_ends_clearly_and_the_agent_serves_on(
        server: RunningServer, project: str, tmp_path: Path,
        prepare: Callable[[RunningServer, str], str], parameters: dict[str, Any], state: str,
        reason: str, message: str) -> None:
    bad_id = start_run(server, prepare(server, project), **parameters)
    with agent_process(server, tmp_path / "agent") as agent:
        bad = ended(server, bad_id)
        good = ended(server, start_run(server, "add/d", a=41))
        still_serving = agent.process.poll() is None
        output = agent.output()
    assert (bad["state"], bad["reason"], bad["agent"]) == (state, reason, AGENT), output
    assert message in (bad["message"] or ""), bad["message"]
    launched = state == "FAILED"  # the runner started and refused; a bad bundle starts nothing
    assert ("RUNNING" in bad["history"], bad["start_time"] is not None) == (launched, launched)
    assert still_serving, output
    assert (good["state"], good["agent"]) == ("COMPLETED", AGENT), output
    cache = tmp_path / "agent" / "bundles"
    assert {p.name for p in cache.iterdir()} == {".pins", ".lock", project}, \
        "only the good bundle is cached: nothing else unpacked, nothing staged left behind"
    assert list(tmp_path.rglob("evil.py")) == [], "a member was written outside its bundle"


def test_the_server_refuses_a_parameter_of_the_wrong_json_type(server: RunningServer,
                                                               project: str) -> None:
    with server.client() as client:
        response = client.post("/deployments/positive/d/runs", json={"parameters": {"n": "x"}})
    assert response.status_code == 422
    assert response.json()["detail"] == "parameter 'n' must be integer, got 'x'"
