"""The agent loop (DESIGN.md §6): register, heartbeat, claim with long polls while slots are
free, and run each claimed run to its end, reporting every state with the claim's fencing token.

Threads, not asyncio: the work is waiting on children and on HTTP, and each run gets a
supervisor thread that owns it from claim to report. The heartbeat thread renews the leases of
the runs held and carries out cancel orders; a run the server says is lost is killed and never
reported (another agent may own it now).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ostinato.agent.cache import BundleCache
from ostinato.agent.launcher import Outcome, RunProcess
from ostinato.deploy.client import Client
from ostinato.deploy.errors import Conflict, OstinatoError

log = logging.getLogger(__name__)



def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class AgentOptions:
    queues: list[str]
    name: str = field(default_factory=default_name)
    limit: int = 4
    prefetch: float = 0.0
    cancel_grace: float = 30.0  # SIGTERM to SIGKILL when a run is cancelled or times out
    heartbeat_seconds: float = 10.0
    claim_wait: float = 30.0  # how long a claim long-polls; also how long stopping may wait
    drain_timeout: float = 60.0  # after stop(), running runs may finish this long, then stop


@dataclass
class _Held:
    """A claimed run this agent owns until it reports its end."""

    run: dict[str, Any]
    process: RunProcess | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    stop_reason: str | None = None  # set when it is being stopped: "cancelled", "timeout", "lost"

    @property
    def token(self) -> int:
        return int(self.run["fencing_token"])


class Agent:
    def __init__(self, client: Client, options: AgentOptions, cache: BundleCache) -> None:
        self.client = client
        self.options = options
        self.cache = cache
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self.agent_id: str | None = None

    # --- the loops ---------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> None:
        """Serve until `stop()`; with `once`, claim one batch, run it, and return."""
        self.agent_id = self.client.post("/agents", {
            "name": self.options.name, "host": socket.gethostname(),
            "queues": self.options.queues})["id"]
        beating = threading.Thread(target=self._heartbeat_loop, daemon=True)
        beating.start()
        while not self._stopping.is_set():
            free = self._wait_for_a_slot()
            claimed = self._claim(free, wait=0 if once else self.options.claim_wait)
            for run in claimed:
                if self._stopping.is_set():
                    self._give_back(run)
                else:
                    self._start(run)
            if once:
                break
        self._wait_for_runs()
        self._stopping.set()

    def stop(self) -> None:
        """Stop claiming; hand back claimed runs that have not started; let running ones finish
        within the drain timeout, then stop them (idempotent)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._slot_freed:
            self._slot_freed.notify_all()
        drain = threading.Timer(self.options.drain_timeout, self._stop_all, args=("drained",))
        drain.daemon = True
        drain.start()

    def _stop_all(self, reason: str) -> None:
        with self._lock:
            running = list(self._held)
        for run_id in running:
            self._stop_run(run_id, reason, self.options.cancel_grace)

    def _wait_for_a_slot(self) -> int:
        with self._slot_freed:
            while len(self._held) >= self.options.limit and not self._stopping.is_set():
                self._slot_freed.wait(timeout=1)
            return self.options.limit - len(self._held)

    def _claim(self, free: int, *, wait: float) -> list[dict[str, Any]]:
        if free <= 0:
            return []
        try:
            claimed: list[dict[str, Any]] = self.client.post("/claims", {
                "agent_id": self.agent_id, "queues": self.options.queues, "limit": free,
                "wait_seconds": wait, "prefetch_seconds": self.options.prefetch})
        except OstinatoError as exc:
            log.warning("claim failed (%s); retrying", exc)
            self._stopping.wait(1.0)
            return []
        return claimed

    def _give_back(self, run: dict[str, Any]) -> None:
        """A run claimed as the agent was stopping goes straight back to its queue."""
        self._report(_Held(run), "SCHEDULED", "agent_stopping", "the agent stopped first")

    def _wait_for_runs(self) -> None:
        with self._slot_freed:
            while self._held:
                self._slot_freed.wait(timeout=1)

    def _heartbeat_loop(self) -> None:
        while not self._stopping.wait(self.options.heartbeat_seconds):
            self.heartbeat()

    def heartbeat(self) -> None:
        with self._lock:
            held = [{"id": run_id, "fencing_token": h.token} for run_id, h in self._held.items()]
        try:
            reply = self.client.post(f"/agents/{self.agent_id}/heartbeat", {"runs": held})
        except OstinatoError as exc:
            log.warning("heartbeat failed (%s)", exc)
            return
        for order in reply["cancel"]:
            self._stop_run(order["id"], "cancelled", order["grace_seconds"])
        for run_id in reply["lost"]:
            self._stop_run(run_id, "lost", 0)

    # --- one run -----------------------------------------------------------------------------

    def _start(self, run: dict[str, Any]) -> None:
        with self._lock:
            self._held[run["id"]] = _Held(run)
        threading.Thread(target=self._supervise, args=(run["id"],), daemon=True).start()

    def _supervise(self, run_id: str) -> None:
        held = self._held[run_id]
        try:
            self._until(datetime.fromisoformat(held.run["scheduled_time"]))
            if self._stopping.is_set():
                self._give_back(held.run)
                return
            outcome = self._execute(held)
            if held.stop_reason != "lost":
                self._report(held, *_final_state(held, outcome))
        except Exception as exc:  # a run the agent could not even start: the infrastructure
            log.exception("run %s could not be launched", run_id)
            self._report(held, "CRASHED", "launch_failed", str(exc))
        finally:
            with self._slot_freed:
                self._held.pop(run_id, None)
                self._slot_freed.notify_all()
            self._prune_cache()

    def _prune_cache(self) -> None:
        try:
            self.cache.prune()
        except OSError:
            log.warning("could not prune the bundle cache", exc_info=True)

    def _until(self, moment: datetime) -> None:
        """A run claimed early (prefetch) starts at its scheduled instant."""
        delay = (moment - datetime.now(UTC)).total_seconds()
        if delay > 0:
            self._stopping.wait(delay)

    def _execute(self, held: _Held) -> Outcome:
        run = held.run
        self._report(held, "RUNNING")
        spec = {"flow_run_id": run["id"], "name": run["name"], "deployment": run["deployment"],
                "scheduled_time": run["scheduled_time"], "attempt": run["attempt"],
                "parameters": run["parameters"], "entrypoint": run["entrypoint"],
                "agent": self.options.name}
        env = {**os.environ, **run["env"], "OSTINATO_FLOW_RUN_ID": run["id"]}
        env.pop("OSTINATO_API_KEY", None)  # flow code never sees the agent's credentials
        with self._folder(run) as folder:
            held.process = RunProcess(spec, cwd=folder, env=env, on_event=held.events.append,
                                      on_output=lambda stream, line: log.info(
                                          "%s %s: %s", run["name"], stream, line))
            held.process.start()
            outcome = held.process.wait(timeout=run["timeout"])
            if outcome is None:  # over its deployment's timeout
                held.stop_reason = "timeout"
                outcome = held.process.stop(self.options.cancel_grace)
        return outcome

    @contextmanager
    def _folder(self, run: dict[str, Any]) -> Iterator[Path]:
        """Where a run executes: its deployment's bundle (held in the cache while it runs), or
        the path the deployment names on this host."""
        if not run["bundle"]:
            yield Path(run["path"])
            return
        with self.cache.use(run["bundle"]) as folder:
            yield folder

    def _stop_run(self, run_id: str, reason: str, grace: float) -> None:
        with self._lock:
            held = self._held.get(run_id)
        if held is None or held.stop_reason:
            return
        held.stop_reason = reason
        if held.process is not None:
            threading.Thread(target=held.process.stop, args=(grace,), daemon=True).start()

    def _report(self, held: _Held, state: str, reason: str | None = None,
                message: str | None = None) -> None:
        body = {"state": state, "fencing_token": held.token, "reason": reason,
                "message": message}
        try:
            self.client.post(f"/flow-runs/{held.run['id']}/state", body)
        except Conflict as exc:  # taken back and perhaps claimed elsewhere: no longer ours
            log.warning("report %s for run %s refused: %s", state, held.run["id"], exc)
            held.stop_reason = "lost"


def _final_state(held: _Held, outcome: Outcome) -> tuple[str, str | None, str | None]:
    """(state, reason, message) of a run from how it was stopped, its events and its exit."""
    if held.stop_reason == "timeout":
        return "FAILED", "timeout", "exceeded the deployment's timeout"
    if held.stop_reason == "cancelled":
        return "CANCELLED", None, "stopped on request"
    if held.stop_reason == "drained":
        return "CANCELLED", "agent_stopping", "the agent stopped before the run finished"
    last = next((e for e in reversed(held.events) if e.get("event") in ("completed", "failed")),
                None)
    if last and last["event"] == "completed" and outcome.exit_code == 0:
        return "COMPLETED", "success", None
    if last and last["event"] == "failed":
        return "FAILED", last.get("reason", "exception"), f"{last.get('type')}: " \
                                                           f"{last.get('message')}"
    if outcome.signal is not None:
        return "CRASHED", "signal", f"killed by signal {outcome.signal}"
    return "CRASHED", "exit_code", f"exited with code {outcome.exit_code} without a result"

