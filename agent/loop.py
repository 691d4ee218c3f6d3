"""The agent loop (DESIGN.md §6): register, heartbeat, claim with long polls while slots are
free, and run each claimed run to its end, reporting every state with the claim's fencing token.

Threads, not asyncio: the work is waiting on children and on HTTP, and each run gets a
supervisor thread that owns it from claim to report: it starts the child at the scheduled
instant, ships its log lines and task-run records every half second, and reports how it ended.
The heartbeat thread renews the leases of the runs held and carries out cancel orders.

Network loss: children keep running while the server cannot be reached. Log lines and records
wait on disk (agent/spool.py); heartbeats, claims, log batches and reports are retried with
jittered exponential back-off. On return the server reconciles: a run its reaper gave away
meanwhile is named `lost` in the heartbeat reply, or its report is refused with 409 — the agent
kills it and never reports it. A run is never started before the server has accepted RUNNING,
so a run taken back during an outage cannot be launched twice.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ostinato.agent import events
from ostinato.agent.cache import BundleCache
from ostinato.agent.forkserver import ForkServer
from ostinato.agent.launcher import Outcome, RunProcess
from ostinato.agent.spool import RunLog
from ostinato.deploy.client import Client
from ostinato.deploy.errors import (
    TRANSIENT_ERRORS,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    OstinatoError,
)
from ostinato.deploy.limits import MAX_LOG_MESSAGE

log = logging.getLogger(__name__)

CONTROL_TIMEOUT = 5.0  # heartbeats, reports, log batches: fail fast on a dead link, then retry
CLAIM_TIMEOUT_MARGIN = 5.0  # a long poll may take its wait plus this long to answer
SHIP_SECONDS = 0.5  # how often a running run's new log lines go to the server
RETRY_FIRST, RETRY_MAX = 0.5, 10.0  # back-off bounds, in seconds
REPORT_MARGIN = 1.0  # of the drain timeout, kept for the final reports
DEFAULT_LEASE_SECONDS = 30.0


def default_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def backoff(attempt: int, cap: float = RETRY_MAX) -> float:
    """Seconds to wait before retry number `attempt` (0-based): exponential, capped, and
    jittered so agents cut off together do not come back in step."""
    return min(cap, RETRY_FIRST * 2.0 ** min(attempt, 16)) * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class AgentOptions:
    queues: list[str]
    name: str = field(default_factory=default_name)
    limit: int = 4
    prefetch: float = 0.0
    cancel_grace: float = 30.0  # SIGTERM to SIGKILL when a run is cancelled or times out
    heartbeat_seconds: float = 10.0
    claim_wait: float = 30.0  # how long a claim long-polls
    drain_timeout: float = 60.0  # after stop(), everything ends within this long
    spool_root: Path | None = None  # unsent log lines go in a folder per agent name in here


class GaveUp(Exception):
    """The agent stopped retrying a request the server could not be reached for."""


@dataclass
class _Held:
    """A claimed run this agent owns until it reports its end."""

    run: dict[str, Any]
    log: RunLog
    process: RunProcess | None = None
    ending: dict[str, Any] | None = None  # the runner's `completed` or `failed` event
    stop_reason: str | None = None  # "cancelled", "timeout", "drained" or "lost"
    ship_failures: int = 0
    next_ship: float = 0.0  # monotonic time before which no log batch is sent
    backlog: bool = False  # the last batch sent was full: more may be waiting

    @property
    def token(self) -> int:
        return int(self.run["fencing_token"])

    @property
    def path(self) -> str:
        return f"/flow-runs/{self.run['id']}"


class Agent:
    def __init__(self, client: Client, options: AgentOptions, cache: BundleCache) -> None:
        self.client = client
        self.options = options
        self.cache = cache
        spool_root = options.spool_root or Path(tempfile.gettempdir()) / "ostinato-spool"
        self.spool = spool_root / quote(options.name, safe="")
        self._held: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self._slot_freed = threading.Condition(self._lock)
        self._stopping = threading.Event()  # no more claims; unstarted runs go back
        self._done = threading.Event()  # run() has returned: no more heartbeats or retries
        self._deadline: float | None = None  # monotonic time by which stopping must be over
        self._claim_failures = 0
        self._lease_seconds = DEFAULT_LEASE_SECONDS  # until a heartbeat reply says
        self.agent_id: str | None = None
        self.fork_server = ForkServer()  # one for all runs, started by the first launch

    # --- the loops ---------------------------------------------------------------------------

    def run(self, *, once: bool = False) -> None:
        """Serve until `stop()`; with `once`, claim one batch, run it, and return."""
        shutil.rmtree(self.spool, ignore_errors=True)  # left by an earlier agent of this name
        try:
            self.agent_id = self._retrying(self._register, until=self._stopping,
                                           what="registering")
        except GaveUp:
            return
        threading.Thread(target=self._heartbeat_loop, daemon=True).start()
        # Claims run in a thread of their own: a stop must not wait for a long poll to answer.
        # Leaving one in flight is safe: the server claims nothing for a poll whose client has
        # gone, and a claim answered after the stop goes straight back.
        claimer = threading.Thread(target=self._claim_loop, args=(once,), daemon=True)
        claimer.start()
        try:
            while claimer.is_alive() and not self._stopping.wait(0.2):
                pass
            self._wait_for_runs()
        finally:
            self._done.set()
            self.fork_server.close()

    def _claim_loop(self, once: bool) -> None:
        while not self._stopping.is_set():
            free = self._wait_for_a_slot()
            for run in self._claim(free, wait=0 if once else self.options.claim_wait):
                self._start(run)
            if once:
                return

    def stop(self) -> None:
        """Stop claiming; hand back claimed runs that have not started; let running ones finish
        within the drain timeout, then stop them so that all is over by then (idempotent)."""
        if self._stopping.is_set():
            return
        drain = self.options.drain_timeout
        self._deadline = time.monotonic() + drain
        self._stopping.set()
        with self._slot_freed:
            self._slot_freed.notify_all()
        grace = min(self.options.cancel_grace, drain / 4)
        stop_at = max(0.0, drain - grace - min(REPORT_MARGIN, drain / 10))
        timer = threading.Timer(stop_at, self._stop_all, args=("drained", grace))
        timer.daemon = True
        timer.start()

    def _register(self) -> str:
        agent: dict[str, Any] = self.client.post("/agents", {
            "name": self.options.name, "host": socket.gethostname(),
            "queues": self.options.queues}, timeout=CONTROL_TIMEOUT)
        return str(agent["id"])

    def _stop_all(self, reason: str, grace: float) -> None:
        with self._lock:
            running = list(self._held)
        for run_id in running:
            self._stop_run(run_id, reason, grace)

    def _wait_for_a_slot(self) -> int:
        with self._slot_freed:
            while len(self._held) >= self.options.limit and not self._stopping.is_set():
                self._slot_freed.wait(timeout=1)
            return self.options.limit - len(self._held)

    def _claim(self, free: int, *, wait: float) -> list[dict[str, Any]]:
        if free <= 0 or self._stopping.is_set():
            return []
        try:
            claimed: list[dict[str, Any]] = self.client.post("/claims", {
                "agent_id": self.agent_id, "queues": self.options.queues, "limit": free,
                "wait_seconds": wait, "prefetch_seconds": self.options.prefetch},
                timeout=wait + CLAIM_TIMEOUT_MARGIN)
        except OstinatoError as exc:  # a claim that fails changed nothing: just try again
            delay = backoff(self._claim_failures)
            self._claim_failures += 1
            log.warning("claim failed (%s); retrying in %.1f s", exc, delay)
            self._stopping.wait(delay)
            return []
        self._claim_failures = 0
        return claimed

    def _wait_for_runs(self) -> None:
        """Until every run has ended and been reported, or the drain deadline has passed (runs
        still unreported then are the reaper's: their leases expire)."""
        with self._slot_freed:
            while self._held:
                if self._deadline is not None and time.monotonic() >= self._deadline:
                    log.warning("drain timeout: %d runs not reported", len(self._held))
                    return
                self._slot_freed.wait(timeout=0.2)

    def _heartbeat_loop(self) -> None:
        """Beat at once (the reply says how long leases last), then every heartbeat interval
        or a third of the lease, whichever is shorter; after a failure, sooner."""
        failures = 0
        while True:
            failures = 0 if self.heartbeat() else failures + 1
            interval = min(self.options.heartbeat_seconds, self._lease_seconds / 3)
            if self._done.wait(backoff(failures - 1, cap=interval) if failures else interval):
                return

    def heartbeat(self) -> bool:
        """Renew the leases of the runs held and act on the reply; False if it did not go
        through (the caller retries sooner than the next regular beat)."""
        with self._lock:
            held = [{"id": run_id, "fencing_token": h.token} for run_id, h in self._held.items()]
        try:
            reply = self.client.post(f"/agents/{self.agent_id}/heartbeat", {"runs": held},
                                     timeout=CONTROL_TIMEOUT)
        except OstinatoError as exc:
            log.warning("heartbeat failed (%s)", exc)
            return False
        self._lease_seconds = float(reply["lease_seconds"])
        for order in reply["cancel"]:
            self._stop_run(order["id"], "cancelled", order["grace_seconds"])
        for run_id in reply["lost"]:
            self._stop_run(run_id, "lost", 0)
        return True

    def _retrying(self, send: Callable[[], Any], *, until: threading.Event, what: str) -> Any:
        """`send()`'s answer, sent again with back-off while the server cannot be reached;
        GaveUp once `until` is set. Refusals (4xx) are raised at once."""
        attempt = 0
        while True:
            try:
                return send()
            except TRANSIENT_ERRORS as exc:
                delay = backoff(attempt)
                log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
                if until.wait(delay):
                    raise GaveUp(what) from exc
                attempt += 1

    # --- one run -----------------------------------------------------------------------------

    def _start(self, run: dict[str, Any]) -> None:
        spool = self.spool / f"{run['id']}-{run['fencing_token']}.jsonl"
        with self._lock:
            self._held[run["id"]] = _Held(run, RunLog(spool))
        threading.Thread(target=self._supervise, args=(run["id"],), daemon=True).start()

    def _supervise(self, run_id: str) -> None:
        held = self._held[run_id]
        try:
            self._until(datetime.fromisoformat(held.run["scheduled_time"]))
            if self._stopping.is_set():
                self._report(held, "SCHEDULED", "agent_stopping", "the agent stopped first")
            else:
                self._launch(held)
        except Exception as exc:  # a run the agent could not even start: the infrastructure
            log.exception("run %s could not be launched", run_id)
            self._report(held, "CRASHED", "launch_failed", str(exc))
        finally:
            held.log.close()
            with self._slot_freed:
                self._held.pop(run_id, None)
                self._slot_freed.notify_all()
            self._prune_cache()

    def _launch(self, held: _Held) -> None:
        """Run it from its folder — found first, so a run whose bundle cannot be had never
        shows as RUNNING — once the server has accepted RUNNING; then report its end."""
        with self._folder(held.run) as folder:
            if not self._accepted_running(held):
                return
            outcome = self._execute(held, folder)
        ended_at = datetime.now(UTC)  # the report may wait for an outage to end
        if held.stop_reason != "lost":  # a lost run's lines would mix with its next attempt's
            self._ship_all(held)
            self._report_end(held, outcome, ended_at)

    def _accepted_running(self, held: _Held) -> bool:
        """Whether the server accepted RUNNING, so the run may start. A run asked to stop while
        it was claimed is reported CANCELLED instead."""
        if held.stop_reason is None:
            reply = self._report(held, "RUNNING", until=self._stopping)
            if reply is None or reply["state"] != "CANCELLING":
                return reply is not None
            held.stop_reason = "cancelled"
        if held.stop_reason == "cancelled":
            self._report(held, "CANCELLED", None, "stopped on request before it started")
        return False

    def _prune_cache(self) -> None:
        try:
            self.cache.prune()
        except OSError:
            log.warning("could not prune the bundle cache", exc_info=True)

    def _until(self, moment: datetime) -> None:
        """A run claimed early (prefetch) starts at its scheduled instant, by this host's clock,
        but never waits longer than `prefetch` after its claim: the server hands out runs due
        within `prefetch` by *its* clock, so a longer wait only means this clock is behind, and
        would start the run late by as much (holding its slot meanwhile)."""
        delay = min((moment - datetime.now(UTC)).total_seconds(), self.options.prefetch)
        if delay > 0:
            self._stopping.wait(delay)

    def _execute(self, held: _Held, folder: Path) -> Outcome:
        run = held.run
        spec = {"flow_run_id": run["id"], "name": run["name"], "deployment": run["deployment"],
                "scheduled_time": run["scheduled_time"], "attempt": run["attempt"],
                "parameters": run["parameters"], "entrypoint": run["entrypoint"],
                "agent": self.options.name}
        env = {**os.environ, **run["env"], "OSTINATO_FLOW_RUN_ID": run["id"]}
        env.pop("OSTINATO_API_KEY", None)  # flow code never sees the agent's credentials
        held.process = RunProcess(
            spec, cwd=folder, env=env, on_event=lambda event: _on_event(held, event),
            on_output=lambda stream, line: held.log.append(_output_line(stream, line)),
            fork_server=self.fork_server)
        held.process.start()
        return self._watch(held)

    def _watch(self, held: _Held) -> Outcome:
        """Wait for the run's process to end, shipping its logs meanwhile; past its
        deployment's timeout, stop it."""
        assert held.process is not None
        timeout = held.run["timeout"]
        deadline = time.monotonic() + timeout if timeout else None
        while (outcome := held.process.wait(0 if held.backlog else SHIP_SECONDS)) is None:
            self._ship(held)
            if deadline is not None and time.monotonic() >= deadline:
                self._stop_run(held.run["id"], "timeout", self.options.cancel_grace)
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

    # --- what the server hears -----------------------------------------------------------------

    def _ship(self, held: _Held) -> bool:
        """Send one batch of the run's unsent records if it is time to; False if the server
        could not be reached (they stay on disk for the next try)."""
        held.backlog = False
        if not held.log.pending or time.monotonic() < held.next_ship:
            return True
        lines, position = held.log.batch()
        try:
            self.client.post(held.path + "/events", _event_batch(lines),
                             timeout=CONTROL_TIMEOUT)
        except TRANSIENT_ERRORS as exc:
            held.next_ship = time.monotonic() + backoff(held.ship_failures)
            held.ship_failures += 1
            log.warning("sending logs of %s failed (%s)", held.run["name"], exc)
            return False
        except OstinatoError as exc:  # refused: sending the same lines again would not help
            log.warning("logs of %s refused, %d lines dropped: %s", held.run["name"],
                        len(lines), exc)
        held.log.sent(position)
        held.ship_failures = 0
        held.backlog = held.log.full
        return True

    def _ship_all(self, held: _Held) -> None:
        """Every remaining line, before the final report, so a follower sees them all."""
        while held.log.pending and not self._done.is_set():
            if not self._ship(held):
                self._done.wait(max(0.0, held.next_ship - time.monotonic()))

    def _report_end(self, held: _Held, outcome: Outcome, ended_at: datetime) -> None:
        state, reason, message = _final_state(held, outcome)
        result = held.ending.get("result") if held.ending and state == "COMPLETED" else None
        self._report(held, state, reason, message, at=ended_at, result=result,
                     exit_code=outcome.exit_code,
                     exit_signal=outcome.signal, cpu_seconds=outcome.cpu_seconds,
                     peak_rss_bytes=outcome.peak_rss_bytes)

    def _report(self, held: _Held, state: str, reason: str | None = None,
                message: str | None = None, *, at: datetime | None = None,
                until: threading.Event | None = None, **outcome: Any) -> dict[str, Any] | None:
        """Tell the server the run's new state, as of `at` (default: as each attempt goes out,
        so a RUNNING report held up by an outage, which the launch waits for, records when the
        run really started), until it has it. None if the run is no longer this agent's
        (refused: taken back, perhaps claimed elsewhere; with an agent key, a run taken back and
        retried is in no queue of the key any more, 403) or the agent gave up first."""
        body = {"state": state, "fencing_token": held.token, "reason": reason,
                "message": message, **outcome}
        if at is not None:
            body["time"] = at.isoformat()
        try:
            reply: dict[str, Any] = self._retrying(
                lambda: self.client.post(held.path + "/state", _sent_now(body),
                                         timeout=CONTROL_TIMEOUT),
                until=until or self._done, what=f"reporting {state} for {held.run['name']}")
        except (Conflict, NotFound, Forbidden) as exc:
            log.warning("report %s for %s refused: %s", state, held.run["name"], exc)
            held.stop_reason = "lost"
            return None
        except (InvalidInput, GaveUp) as exc:
            log.error("report %s for %s not delivered: %s", state, held.run["name"], exc)
            return None
        return reply


def _sent_now(report: dict[str, Any]) -> dict[str, Any]:
    """The report stamped with this clock as it goes out, so the server can correct its time
    for this clock's error (each retry is stamped anew); a report without a time of its own is
    about now."""
    sent = datetime.now(UTC).isoformat()
    return {"time": sent, **report, "sent": sent}


def _on_event(held: _Held, event: dict[str, Any]) -> None:
    kind = event.get("event")
    if kind == events.LOG:
        line = {"timestamp": event.get("time"), "level": event.get("level"),
                "logger": event.get("logger"),
                "message": str(event.get("message"))[:MAX_LOG_MESSAGE]}
        held.log.append(line | {key: event[key] for key in _LOG_IDS if key in event})
    elif kind in (events.TASK_RUN, events.FLOW_RUN):
        held.log.append({kind: event.get("record")})
    elif kind in (events.COMPLETED, events.FAILED):
        held.ending = event
        if event.get("traceback"):
            held.log.append(_line(logging.ERROR, "ostinato.runner", event["traceback"]))


_LOG_IDS = ("task_run_id", "flow_run_id")


def _event_batch(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The spooled entries as one `POST …/events` body: log lines in order, and only the
    newest record of each task run (records are whole snapshots)."""
    logs: list[dict[str, Any]] = []
    task_runs: dict[str, dict[str, Any]] = {}
    flow_runs: list[dict[str, Any]] = []
    for entry in entries:
        if events.TASK_RUN in entry:
            task_runs[entry[events.TASK_RUN]["id"]] = entry[events.TASK_RUN]
        elif events.FLOW_RUN in entry:
            flow_runs.append(entry[events.FLOW_RUN])
        else:
            logs.append(entry)
    return {"logs": logs, "task_runs": list(task_runs.values()), "flow_runs": flow_runs}


def _output_line(stream: str, line: str) -> dict[str, Any]:
    """A line the run's processes wrote to stdout or stderr outside the runner's capture
    (a subprocess, a C extension)."""
    level = events.STDERR_LEVEL if stream == "stderr" else events.STDOUT_LEVEL
    return _line(level, stream, line)


def _line(level: int, logger: str, message: str) -> dict[str, Any]:
    return {"timestamp": datetime.now(UTC).isoformat(), "level": level, "logger": logger,
            "message": message[:MAX_LOG_MESSAGE]}


def _final_state(held: _Held, outcome: Outcome) -> tuple[str, str | None, str | None]:
    """(state, reason, message) of a run from how it was stopped, its events and its exit."""
    if held.stop_reason == "timeout":
        return "FAILED", "timeout", "exceeded the deployment's timeout"
    if held.stop_reason == "cancelled":
        return "CANCELLED", None, "stopped on request"
    if held.stop_reason == "drained":
        return "CANCELLED", "agent_stopping", "the agent stopped before the run finished"
    last = held.ending
    if last and last["event"] == events.COMPLETED and outcome.exit_code == 0:
        return "COMPLETED", "success", None
    if last and last["event"] == events.FAILED:
        return "FAILED", last.get("reason", "exception"), \
            f"{last.get('type')}: {last.get('message')}"
    if outcome.signal is not None:
        return "CRASHED", "signal", f"killed by signal {outcome.signal}"
    return "CRASHED", "exit_code", f"exited with code {outcome.exit_code} without a result"
