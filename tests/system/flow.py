"""The flow every system scenario deploys. tests/system/harness.py copies this file into the
scenario's folder and registers it by path; agents run it like any user's flow.

It runs for `seconds` and keeps a marker file of its launch in `folder` — run id, attempt,
deployment, slot, agent, pid, start, last sign of life, end — so the harness counts launches and
their overlaps from what really ran, not from what the database says ran. A marker without an
end is a process that died first.

Times are CLOCK_MONOTONIC seconds: one clock for every process on this machine, which the
clock-skew fault (skew/sitecustomize.py) leaves alone while it moves the wall clock of an agent
and of the flows it starts.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from ostinato.deploy import flow, get_run_context

ALIVE_EVERY = 0.2  # seconds between signs of life; invariants.ALIVE_WITHIN is larger


@flow(name="marked")
def marked(folder: str, seconds: float = 1.0) -> int:
    """Sleep `seconds`, keeping this launch's marker up to date; the pid that ran."""
    context = get_run_context()
    if context is None:
        raise RuntimeError("the marked flow only runs as a deployment's run")
    marker = Path(folder) / f"{context.id}-{context.attempt}-{os.getpid()}.json"
    record: dict[str, Any] = {
        "run_id": context.id, "attempt": context.attempt, "deployment": context.deployment,
        "name": context.name, "scheduled_time": context.scheduled_time.isoformat(),
        "agent": context.agent, "host": socket.gethostname(), "pid": os.getpid(),
        "start": time.monotonic(), "end": None}
    finish = record["start"] + seconds
    while (now := time.monotonic()) < finish:
        _write(marker, {**record, "alive": now})
        time.sleep(min(ALIVE_EVERY, finish - now))
    _write(marker, {**record, "alive": now, "end": now})
    return os.getpid()


def _write(path: Path, record: dict[str, Any]) -> None:
    """Replace the marker whole, so a reader (or a kill) never leaves half of one."""
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(record))
    os.replace(part, path)
