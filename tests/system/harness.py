"""A small Ostinato cluster of real processes, for fault-injection scenarios: `ostinato server
start` processes (API only, or with the scheduling loops), `ostinato scheduler start` processes
and `ostinato agent start` processes, all on one database, all in one folder of the scenario's.

Agents run in network namespaces of their own (tests/netns.py) where this process can make them,
so a scenario can cut one off from its server; elsewhere they run as plain processes, and
`Cluster.isolation` says why. Servers then listen on every address, and each agent reaches its
server over its own veth link. Servers need the cluster's admin key (ADMIN_KEY) from every
client; each agent gets an agent key for its queues, as agents on other machines do.

Every process can be killed (SIGKILL, nothing it could catch) and started again with the same
command, port and home. `Cluster.record` keeps what was done when, for the scenario's report.
Leaving the cluster stops every process (SIGTERM, then SIGKILL) and removes the namespaces.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.benchmarks.harness import SERVER, free_port, stop_all, wait_healthy
from tests.netns import NetworkNamespace, available

CLI = (sys.executable, "-m", "ostinato.cli.main")
ADMIN_KEY = "system-scenarios-admin-key-" + "0" * 16
LEASE = 5.0  # seconds: short, so a dead agent's runs come back within a scenario
INTERVAL = 0.5  # seconds between passes of the scheduling loops (the reaper among them)
CANCEL_GRACE = 2.0
DRAIN = 3.0  # an agent's --drain-timeout
OWN_SETTINGS = ("OSTINATO_DATABASE_URL", "OSTINATO_HOME", "OSTINATO_API_URL", "OSTINATO_API_KEY",
                "OSTINATO_ADMIN_KEY", "OSTINATO_RUN_SCHEDULER")  # never inherited from ours


@dataclass
class Process:
    """One process of the cluster: started, killed and started again with the same command,
    its output appended to one log."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.popen = subprocess.Popen(self.argv, env=self.env, stdout=out,
                                          stderr=subprocess.STDOUT)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    def kill(self) -> None:
        """kill -9, then reap it."""
        assert self.popen is not None, f"{self.name} was never started"
        self.popen.kill()
        self.popen.wait(timeout=10)

    def tracebacks(self) -> int:
        return self.log.read_text(errors="replace").count("Traceback") if self.log.exists() else 0


@dataclass
class Server:
    process: Process
    port: int

    @property
    def url(self) -> str:
        """The API as the test and plain-process agents reach it."""
        return f"http://127.0.0.1:{self.port}/api"

    def start(self) -> None:
        """Start it (again) and wait until it answers."""
        self.process.start()
        assert self.process.popen is not None
        wait_healthy(self.url, self.process.popen)


@dataclass
class Agent:
    process: Process
    namespace: NetworkNamespace | None  # None: a plain process on the host's network

    @property
    def name(self) -> str:
        return self.process.name


@dataclass
class Cluster:
    """The processes of one scenario on `database_url`, in `folder`; use as a context manager.
    Agents get network namespaces of their own where this process can make them."""

    folder: Path
    database_url: str
    lease: float = LEASE
    servers: list[Server] = field(default_factory=list)
    schedulers: list[Process] = field(default_factory=list)
    agents: list[Agent] = field(default_factory=list)
    faults: list[dict[str, Any]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    isolation: str | None = field(default_factory=available)  # why agents share the network

    def __post_init__(self) -> None:
        if self.isolation is not None:
            warnings.warn(f"agents run as plain processes on the host's network, so they "
                          f"cannot be cut off: {self.isolation}", stacklevel=3)

    @property
    def isolated(self) -> bool:
        """Whether agents run in namespaces of their own (else `isolation` says why not)."""
        return self.isolation is None

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    # --- starting processes ------------------------------------------------------------------

    def env(self, home: Path, **settings: str) -> dict[str, str]:
        """Our environment less our own Ostinato settings, plus the given ones."""
        inherited = {k: v for k, v in os.environ.items() if k not in OWN_SETTINGS}
        return {**inherited, "OSTINATO_HOME": str(home), "OSTINATO_LOG_LEVEL": "warning",
                **settings}

    def start_server(self, *, loops: bool = False) -> Server:
        """`ostinato server start`, with the scheduling loops or without them."""
        number, port = len(self.servers), free_port()
        host = "0.0.0.0" if self.isolated else "127.0.0.1"
        env = self.env(self.folder / f"server-{number}", OSTINATO_DATABASE_URL=self.database_url,
                       OSTINATO_LEASE_SECONDS=str(self.lease), OSTINATO_ADMIN_KEY=ADMIN_KEY,
                       OSTINATO_RUN_SCHEDULER=str(loops).lower(),
                       OSTINATO_SCHEDULER_INTERVAL_SECONDS=str(INTERVAL))
        argv = [*SERVER, "--host", host, "--port", str(port)]
        server = Server(Process(f"server-{number}", argv, env,
                                self.folder / f"server-{number}.log"), port)
        self.servers.append(server)
        server.start()
        return server

    def start_scheduler(self) -> Process:
        """`ostinato scheduler start`: the scheduling loops (materialise, reap, ...) alone."""
        number = len(self.schedulers)
        env = self.env(self.folder / f"scheduler-{number}",
                       OSTINATO_DATABASE_URL=self.database_url)
        argv = [*CLI, "scheduler", "start", "--interval", str(INTERVAL)]
        scheduler = Process(f"scheduler-{number}", argv, env,
                            self.folder / f"scheduler-{number}.log")
        self.schedulers.append(scheduler)
        scheduler.start()
        return scheduler

    def start_agent(self, queues: Sequence[str], *, server: Server | None = None, limit: int = 3,
                    env: Mapping[str, str] | None = None) -> Agent:
        """`ostinato agent start` on `queues` of `server` (default: the first), in a namespace
        of its own if the cluster has them; `env` is added to its environment."""
        server = server or self.servers[0]
        name = f"agent-{len(self.agents)}"
        settings = {"OSTINATO_API_KEY": self._agent_key(name, queues),
                    "OSTINATO_CANCEL_GRACE_SECONDS": str(CANCEL_GRACE),
                    "OSTINATO_LOG_LEVEL": "info", **(env or {})}
        namespace = NetworkNamespace().__enter__() if self.isolated else None
        address = namespace.host_address if namespace else "127.0.0.1"
        argv = [*CLI, "agent", "start", *(arg for q in queues for arg in ("-q", q)),
                "--name", name, "--api", f"http://{address}:{server.port}/api",
                "--limit", str(limit), "--drain-timeout", str(DRAIN)]
        agent = Agent(Process(name, namespace.command(argv) if namespace else argv,
                              self.env(self.folder / name, **settings),
                              self.folder / f"{name}.log"), namespace)
        self.agents.append(agent)  # closed with the cluster from now on, namespace and all
        agent.process.start()
        return agent

    def _agent_key(self, name: str, queues: Sequence[str]) -> str:
        with self.http() as http:
            made = http.post("/tokens", json={"name": name, "scope": "agent",
                                              "queues": list(queues)})
        key: str = made.raise_for_status().json()["key"]
        return key

    # --- using it ----------------------------------------------------------------------------

    def http(self, server: Server | None = None) -> httpx.Client:
        """An admin client of `server` (default: the first one alive)."""
        server = server or next(s for s in self.servers if s.process.alive)
        return httpx.Client(base_url=server.url, timeout=10,
                            headers={"Authorization": f"Bearer {ADMIN_KEY}"})

    def wait_for_agents(self, timeout: float = 60) -> None:
        """Until every agent started has registered and is online."""
        names = {agent.name for agent in self.agents}

        def online() -> bool:
            with self.http() as http:
                listed = http.get("/agents").raise_for_status().json()
            return names <= {a["name"] for a in listed if a["status"] == "online"}

        wait_until(online, timeout, f"agents {sorted(names)} online", self.tail)

    def elapsed(self) -> float:
        return round(time.monotonic() - self.started, 1)

    def record(self, fault: str, **detail: Any) -> None:
        """Note a fault in the report, with when it happened (seconds since the start)."""
        self.faults.append({"fault": fault, "at": self.elapsed(), **detail})

    def processes(self) -> list[Process]:
        return ([a.process for a in self.agents] + self.schedulers
                + [s.process for s in self.servers])

    def tail(self, lines: int = 15) -> str:
        """The end of every log, for failure messages."""
        return "\n".join(f"--- {p.name} ---\n" + "\n".join(
            p.log.read_text(errors="replace").splitlines()[-lines:])
            for p in self.processes() if p.log.exists())

    def close(self) -> None:
        """Stop agents first (their namespaces then), then schedulers and servers, whatever
        fails on the way."""
        try:
            stop_all([a.process.popen for a in self.agents if a.process.popen])
            for agent in self.agents:
                if agent.namespace is not None:
                    agent.namespace.close()
        finally:
            stop_all([p.popen for p in [*self.schedulers, *(s.process for s in self.servers)]
                      if p.popen])


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               context: Callable[[], str] = lambda: "", poll: float = 0.2) -> Any:
    """`condition()` once truthy; fails saying `what` never happened, with `context()`."""
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s\n{context()}"
        time.sleep(poll)
    return found
