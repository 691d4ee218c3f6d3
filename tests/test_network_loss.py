"""Network loss between an agent and its server (DESIGN.md §6), with real processes.

The server runs on the host end of a veth link, the agent (and so its flow runs) inside a network
namespace (tests/netns.py), and the test cuts the link while a run is going. An outage shorter
than the lease must cost nothing: the run completes once, with its result and every log line it
printed in the dark. An outage longer than the lease loses the run to the reaper: the agent must
kill the child once it hears so, and leave the server's verdict alone.

The harness itself is checked first, quickly: an outage blocks both directions and new
connections, established TCP connections survive it, and teardown leaves nothing behind.
"""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx
import psutil
import pytest

from tests.netns import OUTAGES, NetworkNamespace, Outage, available, remove_orphans

T = TypeVar("T")
HEARTBEAT = 10.0  # the agent's default heartbeat interval
LEASE = 30.0  # the server's default lease
OUTAGE = 20.0  # within a lease even when it starts just after a heartbeat
ADMIN_KEY = "network-loss-admin-key-" + "0" * 16
SHORT_LEASE = 6.0  # the agent beats every third of the lease the server names
QUEUE, AGENT = "net", "netagent"
ENDED = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

FLOWS = textwrap.dedent('''
    import os
    import time
    from pathlib import Path

    from ostinato.deploy import flow


    @flow(name="chatty")
    def chatty(folder: str, limit: int = 120) -> dict[str, int]:
        """A line a second, also kept in beats.log so the test knows what was printed when,
        until `stop` appears in `folder`."""
        here = Path(folder)
        (here / "pid.tmp").write_text(str(os.getpid()))
        (here / "pid.tmp").rename(here / "pid")
        beats = 0
        while beats < limit and not (here / "stop").exists():
            beats += 1
            print(f"beat {beats}", flush=True)
            with open(here / "beats.log", "a") as log:
                log.write(f"beat {beats}\\n")
            time.sleep(1)
        return {"beats": beats}
''')


@pytest.fixture
def namespaces_work() -> None:
    """Skip, saying why, where this process cannot make network namespaces."""
    reason = available()
    if reason is not None:
        pytest.skip(reason)


@pytest.fixture
def namespace(namespaces_work: None) -> Iterator[NetworkNamespace]:
    with NetworkNamespace() as created:
        yield created


# --- the harness -----------------------------------------------------------------------------

PEER = textwrap.dedent("""
    import socket, sys, threading
    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    conn.settimeout(None)
    def relay():
        for line in conn.makefile("rb"):
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
    threading.Thread(target=relay, daemon=True).start()
    for line in sys.stdin.buffer:
        conn.sendall(line)
""")  # inside the namespace: stdin lines go to the host, lines from the host to stdout
QUIET = 1.0  # how long a message must not arrive for the link to count as cut


def _lines(stream: IO[bytes]) -> queue.Queue[bytes]:
    """The lines of `stream` as they come, so a test can wait for one with a timeout."""
    lines: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    return lines


def _connects(namespace: NetworkNamespace, port: int) -> bool:
    """Whether a new TCP connection from inside the namespace reaches the host's port."""
    probe = f"import socket; socket.create_connection(('{namespace.host_address}', {port}), 2)"
    return subprocess.run(namespace.command([sys.executable, "-c", probe]),
                          capture_output=True, timeout=15).returncode == 0


@contextmanager
def _peer(namespace: NetworkNamespace, server: socket.socket
          ) -> Iterator[tuple[subprocess.Popen[bytes], socket.socket, queue.Queue[bytes]]]:
    """A PEER in the namespace connected to `server`: the process, the host's end of the
    connection, and the lines the peer received. Killed after, which ends the line reader."""
    address, port = server.getsockname()
    peer = subprocess.Popen(namespace.command([sys.executable, "-c", PEER, address, str(port)]),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert peer.stdout is not None
    try:
        conn, _ = server.accept()
        with conn:
            yield peer, conn, _lines(peer.stdout)
    finally:
        peer.kill()
        peer.wait(timeout=10)


@pytest.mark.parametrize("outage", OUTAGES)
def test_an_outage_cuts_both_ways_and_established_connections_survive_it(
        namespace: NetworkNamespace, outage: Outage) -> None:
    with socket.create_server((namespace.host_address, 0)) as server:
        server.settimeout(10)
        port = server.getsockname()[1]
        with _peer(namespace, server) as (peer, conn, from_host):
            assert peer.stdin is not None
            namespace.link_down(outage)
            conn.sendall(b"to the namespace\n")
            peer.stdin.write(b"to the host\n")
            peer.stdin.flush()
            conn.settimeout(QUIET)
            with pytest.raises(TimeoutError):
                conn.recv(100)
            with pytest.raises(queue.Empty):
                from_host.get(timeout=QUIET)
            connected_while_down = _connects(namespace, port)
            namespace.link_up()
            conn.settimeout(20)
            assert conn.recv(100) == b"to the host\n"
            assert from_host.get(timeout=20) == b"to the namespace\n"
        connects_again = _connects(namespace, port)
    assert not connected_while_down
    assert connects_again


@pytest.mark.usefixtures("namespaces_work")
def test_teardown_removes_everything_even_when_the_test_fails() -> None:
    made = NetworkNamespace()
    with pytest.raises(ValueError, match="the test failed"), made:
        straggler = subprocess.Popen(made.command(["sleep", "60"]))
        name, link = made.name, made.host_link
        raise ValueError("the test failed")
    assert straggler.wait(timeout=5) == -signal.SIGKILL, "a process in the namespace survived"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert name not in listed.split()
    assert f" {link}@" not in links


ABANDON = textwrap.dedent("""
    import os, signal
    from tests.netns import NetworkNamespace
    made = NetworkNamespace().__enter__()
    print(made.name, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")  # a process killed while it holds a namespace: no teardown runs


@pytest.mark.usefixtures("namespaces_work")
def test_namespaces_of_a_killed_process_are_removed_later() -> None:
    abandoned = subprocess.run([sys.executable, "-c", ABANDON], capture_output=True, text=True,
                               timeout=30, cwd=Path(__file__).parent.parent)
    name = abandoned.stdout.strip()
    assert abandoned.returncode == -signal.SIGKILL and name, abandoned.stderr
    assert name in remove_orphans()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert name not in listed.split()


@pytest.mark.usefixtures("namespaces_work")
def test_each_namespace_has_its_own_names_and_subnet() -> None:
    with NetworkNamespace() as first, NetworkNamespace() as second:
        ours = [(ns.name, ns.host_link, ns.host_address, ns.ns_address)
                for ns in (first, second)]
    assert len({value for values in ours for value in values}) == 8


# --- the server and the agent ----------------------------------------------------------------

@dataclass
class Setup:
    http: httpx.Client  # the server's API, reached from the host
    work: Path  # the flow's pid, beats.log and stop files
    agent: subprocess.Popen[bytes]  # `ostinato agent start` inside the namespace
    agent_log: Path

    def tail(self) -> str:
        """The end of the agent's output, for failure messages."""
        return "agent output (tail):\n" + "\n".join(
            self.agent_log.read_text(errors="replace").splitlines()[-40:])


@contextmanager
def _process(argv: list[str], log: Path, env: dict[str, str]
             ) -> Iterator[subprocess.Popen[bytes]]:
    """A process writing to `log`; terminated after (killed if it will not stop)."""
    with log.open("wb") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _wait(check: Callable[[], T | None], timeout: float, what: str,
          context: Callable[[], str] = lambda: "") -> T:
    """Poll `check` until it returns something truthy; fail saying `what` never happened, with
    `context()` as it is then (the agent's output, say)."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s\n{context()}"
        time.sleep(0.05)


def _sleep_until(moment: float) -> None:
    time.sleep(max(0.0, moment - time.monotonic()))


def _cli(*args: str) -> list[str]:
    """The `ostinato` console script, as this interpreter runs it."""
    return [sys.executable, "-m", "ostinato.cli.main", *args]


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@contextmanager
def _server(namespace: NetworkNamespace, home: Path, lease: float) -> Iterator[httpx.Client]:
    """`ostinato server start` on the host end of the link (SQLite under `home`)."""
    port = _free_port(namespace.host_address)
    env = {**os.environ, "OSTINATO_HOME": str(home), "OSTINATO_LEASE_SECONDS": str(lease),
           "OSTINATO_SCHEDULER_INTERVAL_SECONDS": "0.5", "OSTINATO_ADMIN_KEY": ADMIN_KEY}
    env.pop("OSTINATO_DATABASE_URL", None)
    home.mkdir()
    argv = _cli("server", "start", "--host", namespace.host_address, "--port", str(port))
    with _process(argv, home / "server.log", env) as server, httpx.Client(
            base_url=f"http://{namespace.host_address}:{port}/api", timeout=10,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as http:
        _wait(lambda: _answers(http, server, home / "server.log"), 60, "the server to start")
        yield http


def _answers(http: httpx.Client, server: subprocess.Popen[bytes], log: Path) -> bool:
    assert server.poll() is None, f"the server exited: {log.read_text(errors='replace')}"
    try:
        return http.get("/agents").status_code == 200
    except httpx.TransportError:
        return False


def _register(http: httpx.Client, project: Path) -> None:
    """The `chatty/net` deployment (by path) and the queue the agent serves."""
    (project / "flows.py").write_text(FLOWS)
    http.put("/deployments", json={"deployments": [{
        "flow": "chatty", "name": "net", "entrypoint": "flows.py:chatty",
        "path": str(project)}]}).raise_for_status()
    http.post("/work-queues", json={"name": QUEUE}).raise_for_status()


@contextmanager
def _deployed(namespace: NetworkNamespace, tmp_path: Path, lease: float) -> Iterator[Setup]:
    """A server on the host, the deployment, and an agent serving it from the namespace."""
    project, work, home = (tmp_path / name for name in ("project", "work", "agent"))
    project.mkdir()
    work.mkdir()
    with _server(namespace, tmp_path / "server", lease) as http:
        _register(http, project)
        # The agent is not on the server's host: it needs a key, as agents on other VMs do.
        key = http.post("/tokens", json={"name": AGENT, "scope": "agent", "queues": [QUEUE]})
        env = {**os.environ, "OSTINATO_HOME": str(home), "OSTINATO_CANCEL_GRACE_SECONDS": "2",
               "OSTINATO_API_KEY": key.raise_for_status().json()["key"]}
        argv = namespace.command(_cli("agent", "start", "-q", QUEUE, "--name", AGENT,
                                      "--api", str(http.base_url).rstrip("/"),
                                      "--drain-timeout", "1"))
        with _process(argv, tmp_path / "agent.log", env) as agent:
            yield Setup(http, work, agent, tmp_path / "agent.log")


def _start_run(setup: Setup) -> str:
    response = setup.http.post("/deployments/chatty/net/runs",
                               json={"parameters": {"folder": str(setup.work)}})
    response.raise_for_status()
    run_id: str = response.json()["id"]
    return run_id


def _run(setup: Setup, run_id: str) -> dict[str, Any]:
    run: dict[str, Any] = setup.http.get(f"/flow-runs/{run_id}").raise_for_status().json()
    return run


def _history(setup: Setup, run_id: str) -> list[str]:
    states = setup.http.get(f"/flow-runs/{run_id}/states").raise_for_status().json()
    return [state["type"] for state in states]


def _until_state(setup: Setup, run_id: str, states: tuple[str, ...], timeout: float
                 ) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        run = _run(setup, run_id)
        return run if run["state"] in states else None

    return _wait(reached, timeout, f"run {run_id} in {'/'.join(states)}", setup.tail)


def _heartbeat_after(setup: Setup, moment: datetime, timeout: float) -> None:
    """Wait until the server has a heartbeat from the agent later than `moment`. With `moment`
    now, it returns just after a lease was renewed: an outage starting then has the whole
    lease ahead of it."""
    def beaten() -> bool:
        agents = setup.http.get("/agents").raise_for_status().json()
        return any(a["name"] == AGENT and datetime.fromisoformat(a["last_heartbeat"]) > moment
                   for a in agents)

    _wait(beaten, timeout, f"a heartbeat from {AGENT} after {moment}", setup.tail)


def _beats(setup: Setup) -> list[str]:
    """The lines the flow printed so far, in order."""
    log = setup.work / "beats.log"
    return log.read_text().splitlines() if log.exists() else []


def _pid(setup: Setup) -> int | None:
    marker = setup.work / "pid"
    return int(marker.read_text()) if marker.exists() else None


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _missing_logs(setup: Setup, run_id: str, wanted: list[str], timeout: float) -> list[str]:
    """The `wanted` lines still absent from the run's logs on the server after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        response = setup.http.get(f"/flow-runs/{run_id}/logs")
        assert response.status_code == 200, \
            f"GET /flow-runs/{run_id}/logs answered {response.status_code}: {response.text}"
        stored = {record["message"].strip() for record in response.json()}
        missing = [line for line in wanted if line not in stored]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.2)


# --- the agent across an outage --------------------------------------------------------------


def _running_just_after_a_heartbeat(setup: Setup) -> tuple[str, psutil.Process]:
    """A run of the chatty flow, RUNNING, and its process; returns just after the agent's next
    heartbeat, so an outage starting now has a whole lease before the reaper acts."""
    run_id = _start_run(setup)
    _until_state(setup, run_id, ("RUNNING",), timeout=30)
    child = psutil.Process(_wait(lambda: _pid(setup), 15, "the flow's pid", setup.tail))
    _heartbeat_after(setup, datetime.now(UTC), timeout=HEARTBEAT + 5)
    return run_id, child


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_run_survives_an_outage_within_its_lease_and_completes_once(
        namespace: NetworkNamespace, tmp_path: Path) -> None:
    with _deployed(namespace, tmp_path, lease=LEASE) as setup:
        run_id, child = _running_just_after_a_heartbeat(setup)
        printed_before = len(_beats(setup))  # lines after it count as printed in the dark
        namespace.link_down()  # packets dropped silently: requests hang until they time out
        down = time.monotonic()
        try:
            _sleep_until(down + OUTAGE / 2)
            (setup.work / "stop").touch()  # the flow ends in the dark: its report must wait
            _wait(lambda: not _alive(child), 5, "the flow to end during the outage")
            _sleep_until(down + OUTAGE)
            at_link_up = _run(setup, run_id)
        finally:
            namespace.link_up()
        back = datetime.now(UTC)
        run = _until_state(setup, run_id, ENDED, timeout=LEASE)
        _heartbeat_after(setup, back, timeout=HEARTBEAT + 10)  # it beats again, too
        printed = _beats(setup)
        in_the_dark = printed[printed_before:]
        missing = _missing_logs(setup, run_id, in_the_dark, timeout=15)
        history, runs = _history(setup, run_id), setup.http.get(
            "/flow-runs", params={"deployment": "chatty/net"}).json()
        agent_exit = setup.agent.poll()
    assert at_link_up["state"] == "RUNNING", f"before the link came back: {at_link_up}"
    assert (run["state"], run["reason"]) == ("COMPLETED", "success"), f"{run}\n{setup.tail()}"
    assert history == ["SCHEDULED", "PENDING", "RUNNING", "COMPLETED"]
    assert run.get("result") == {"beats": len(printed)}, f"{run}"
    assert (run["attempt"], [r["id"] for r in runs]) == (1, [run_id])
    assert in_the_dark, "the flow printed nothing during the outage: the test proves nothing"
    assert not missing, f"lines printed during the outage never reached the server: {missing}"
    assert agent_exit is None, f"the agent exited ({agent_exit}); {setup.tail()}"


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_run_lost_to_the_reaper_in_an_outage_is_killed_and_stays_crashed(
        namespace: NetworkNamespace, tmp_path: Path) -> None:
    with _deployed(namespace, tmp_path, lease=SHORT_LEASE) as setup:
        run_id, child = _running_just_after_a_heartbeat(setup)
        namespace.link_down()
        down = time.monotonic()
        try:
            reaped = _until_state(setup, run_id, ENDED, timeout=SHORT_LEASE + 5)
            _sleep_until(down + SHORT_LEASE + SHORT_LEASE / 3)
            alive_at_link_up = _alive(child)
        finally:
            namespace.link_up()
        # Generous: a heartbeat sent in the dark may hang until its own timeout first.
        _wait(lambda: not _alive(child), 30 + HEARTBEAT, f"the agent to kill its lost run "
              f"(pid {child.pid})", setup.tail)
        _heartbeat_after(setup, datetime.now(UTC), timeout=30 + HEARTBEAT)  # time to report
        run, history = _run(setup, run_id), _history(setup, run_id)
        runs = setup.http.get("/flow-runs", params={"deployment": "chatty/net"}).json()
        agent_exit = setup.agent.poll()
    assert (reaped["state"], reaped["reason"]) == ("CRASHED", "lease_expired")
    assert alive_at_link_up, "the run was killed before the agent could know it was lost"
    assert (run["state"], run["reason"]) == ("CRASHED", "lease_expired"), f"{run}"
    assert history == ["SCHEDULED", "PENDING", "RUNNING", "CRASHED"]
    assert (run["attempt"], [r["id"] for r in runs]) == (1, [run_id])
    assert agent_exit is None, f"the agent exited ({agent_exit}); {setup.tail()}"
