"""The faults scenarios inject, each recorded in the cluster's report with when it happened.

- `kill_agent`, `kill_flow`, `kill`: SIGKILL (kill -9) of one process, nothing it could catch or
  clean up after: an agent while it runs flows, a flow's own process, any server or scheduler.
  `restart` starts a killed process again (as a supervisor would); a killed agent's runs are the
  reaper's.
- `partition`: an agent cut off from its server (tests/netns.py: packets dropped both ways, or
  its link down), then let back on.
- `skewed_clock`: an agent whose wall clock is off (and its flows': they inherit it), through a
  Python start-up hook (skew/sitecustomize.py, which says why not libfaketime). CLOCK_MONOTONIC
  is left alone, so waits and timeouts keep working and the flows' markers stay on the one true
  clock; only what the agent believes the time of day to be moves, as on a host whose NTP broke.
- `PrivatePostgres`: a throwaway PostgreSQL cluster of the scenario's own (initdb in a temporary
  folder, a free port), so it can be crashed and restarted while other tests keep using the
  shared server.
- `Tmpfs`: a small tmpfs mounted for the scenario (root only), to fill while SQLite writes to it.

Each kind of fault that needs something of the machine has an `…_unavailable()` saying why it
cannot run here (None: it can), for `pytest.skip`; partitions need `Cluster.isolated`.
"""

from __future__ import annotations

import functools
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from tests.benchmarks.harness import free_port
from tests.netns import Outage
from tests.system.harness import Agent, Cluster, Process, Server, wait_until
from tests.system.invariants import Marker
from tests.system.workload import running_markers

SKEW_HOOK = Path(__file__).with_name("skew")  # its sitecustomize.py skews the clock
POSTGRES_BINARIES = "/usr/lib/postgresql/*/bin"


def running_flows(cluster: Cluster, markers: Path, agent: Agent | None = None,
                  deployment: str = "", timeout: float = 20) -> list[Marker]:
    """Flows running now (of `agent`, of deployments whose name has `deployment` in it);
    waits up to `timeout` for one."""
    def found() -> list[Marker]:
        return [m for m in running_markers(markers) if deployment in m.deployment
                and (agent is None or m.agent == agent.name)]

    waited: list[Marker] = wait_until(found, timeout, f"a running flow ({agent}, "
                                      f"{deployment!r})", cluster.tail, poll=0.05)
    return waited


def kill_agent(cluster: Cluster, agent: Agent, markers: Path) -> None:
    """kill -9 `agent` while it runs at least one flow."""
    running = running_flows(cluster, markers, agent)
    agent.process.kill()
    cluster.record("kill -9 agent", target=agent.name, running=[m.run_id for m in running])


def kill_flow(cluster: Cluster, markers: Path, deployment: str = "") -> None:
    """kill -9 one flow's process while it runs (one of `deployment`'s if given); its agent
    lives on. A flow that ends between its marker's reading and the kill is passed over."""
    while True:
        victim = running_flows(cluster, markers, deployment=deployment)[0]
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        break
    cluster.record("kill -9 flow", target=victim.run_id, attempt=victim.attempt,
                   deployment=victim.deployment, agent=victim.agent)


def kill(cluster: Cluster, process: Process) -> None:
    """kill -9 a process of the cluster, whatever it is doing."""
    process.kill()
    cluster.record(f"kill -9 {process.name.split('-')[0]}", target=process.name)


def restart(cluster: Cluster, target: Server | Process) -> None:
    """Start a killed process again: a server on its port (waiting until it answers), a
    scheduler, an agent (in its namespace, under its name)."""
    target.start()
    name = target.process.name if isinstance(target, Server) else target.name
    cluster.record("restart", target=name)


def partition(cluster: Cluster, agent: Agent, seconds: float, outage: Outage = "drop") -> None:
    """Cut `agent` off from every server for `seconds`, then let it back on."""
    assert agent.namespace is not None, f"{agent.name} has no namespace: {cluster.isolation}"
    agent.namespace.link_down(outage)
    cluster.record("partition", target=agent.name, seconds=seconds, outage=outage)
    try:
        time.sleep(seconds)
    finally:
        agent.namespace.link_up()


# --- a skewed clock --------------------------------------------------------------------------


def skewed_clock(seconds: float) -> dict[str, str]:
    """The environment that moves a Python process's wall clock by `seconds` (and its
    children's: they inherit it), leaving CLOCK_MONOTONIC alone; see skew/sitecustomize.py."""
    path = [str(SKEW_HOOK), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {"PYTHONPATH": os.pathsep.join(path), "OSTINATO_TEST_CLOCK_SKEW": f"{seconds:g}"}


# --- a PostgreSQL of the scenario's own ------------------------------------------------------


def _postgres_bin() -> Path | None:
    found = sorted(glob.glob(POSTGRES_BINARIES), key=lambda p: int(Path(p).parent.name))
    return Path(found[-1]) if found and Path(found[-1], "initdb").exists() else None


def postgres_unavailable() -> str | None:
    if _postgres_bin() is None:
        return f"no PostgreSQL server binaries in {POSTGRES_BINARIES}"
    if os.geteuid() == 0 and not _postgres_user():
        return "running as root and there is no `postgres` user to run PostgreSQL as"
    return None


@functools.cache
def _postgres_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


class PrivatePostgres:
    """A PostgreSQL cluster in a temporary folder, on a free port of 127.0.0.1, trusted
    without a password; as root it runs as `postgres`. Use as a context manager."""

    def __init__(self) -> None:
        self.bin = _postgres_bin()
        assert self.bin is not None, postgres_unavailable()
        self.port = free_port()
        # Not under pytest's tmp_path: only root may enter that, and PostgreSQL runs as postgres.
        self.folder = Path(tempfile.mkdtemp(prefix="ostinato-pg-"))
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def __enter__(self) -> PrivatePostgres:
        user = _postgres_user() if os.geteuid() == 0 else None
        if user is not None:
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        try:
            self._pg("initdb", "-D", str(self.folder / "data"), "-A", "trust", "-U", "postgres",
                     "--no-sync")
            self.start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if (self.folder / "data" / "postmaster.pid").exists():
            self.crash()
        shutil.rmtree(self.folder, ignore_errors=True)

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c shared_buffers=16MB -c max_connections=200")
        self._pg("pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "log"),
                 "-o", options, "-w", "start")

    def crash(self) -> None:
        """Stop at once, as a crash would: no checkpoint, clients cut off mid-transaction."""
        self._pg("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")

    def restart(self, cluster: Cluster, down_for: float) -> None:
        """Crash it, and start it again `down_for` seconds later (crash recovery runs)."""
        self.crash()
        cluster.record("postgres crash", down_for=down_for)
        time.sleep(down_for)
        self.start()

    def _pg(self, program: str, *args: str) -> None:
        assert self.bin is not None
        argv = [str(self.bin / program), *args]
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{' '.join(argv)}: {done.stdout}{done.stderr}"


# --- a small disk ----------------------------------------------------------------------------


@functools.cache
def tmpfs_unavailable() -> str | None:
    """None if this process can mount a tmpfs (tried once, for real), else why not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    try:
        with Tmpfs(Path(tempfile.mkdtemp(prefix="ostinato-tmpfs-")), 1):
            return None
    except (OSError, subprocess.SubprocessError, AssertionError) as exc:
        return f"cannot mount a tmpfs here: {exc}"


class Tmpfs:
    """A tmpfs of `megabytes` mounted on `folder` (created), unmounted and removed after."""

    def __init__(self, folder: Path, megabytes: int) -> None:
        self.folder, self.megabytes = folder, megabytes
        self.filler = folder / "filler"

    def __enter__(self) -> Tmpfs:
        self.folder.mkdir(parents=True, exist_ok=True)
        _run("mount", "-t", "tmpfs", "-o", f"size={self.megabytes}m", "tmpfs", str(self.folder))
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        _run("umount", "--lazy", str(self.folder))
        shutil.rmtree(self.folder, ignore_errors=True)

    def fill(self, cluster: Cluster) -> None:
        """Take every free byte, so the next write that needs a new block fails (ENOSPC)."""
        written = 0
        with self.filler.open("ab", buffering=0) as out:
            try:
                while True:
                    written += out.write(b"\0" * 65536) or 0
            except OSError:  # ENOSPC: full
                pass
        cluster.record("disk full", target=str(self.folder), filled_bytes=written)

    def free(self, cluster: Cluster) -> None:
        self.filler.unlink()
        cluster.record("disk freed", target=str(self.folder))


def _run(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr.strip()}"
