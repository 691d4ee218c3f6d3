"""A run's log lines on their way to the server, held in a file until the server has them.

Task-run and subflow records travel the same way, in order with the lines (`{"task_run": …}`,
`{"flow_run": …}`), so a batch never names a subflow before the server has heard of it.

The file, not memory, holds what an outage holds back, so a chatty flow cut off from the server
for minutes costs the agent disk, not RAM. The backlog is capped: lines past the cap are counted,
not kept, and the count reaches the server as one line of its own. Once the server has every
line, the file is emptied, so the cap bounds the backlog, not the run's whole output.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ostinato.deploy.limits import MAX_BATCH_BYTES, MAX_LOG_BATCH

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DROPPED_LOGGER = "ostinato.agent"


class RunLog:
    """The unsent log lines of one run. Readers of the child's streams `append`; the run's
    supervisor takes a `batch`, sends it, and confirms it with `sent`."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._max_bytes = max_bytes
        self._file = path.open("w+b")
        self._lock = threading.Lock()
        self._size = 0  # bytes written since the file was last emptied
        self._sent = 0  # of which the server has this many
        self._dropped = 0  # lines refused since the cap was reached, not yet reported
        self._noted = 0  # of which the last batch reported this many
        self.full = False  # the last batch stopped at a cap: lines were left for the next

    def append(self, line: dict[str, Any]) -> None:
        data = json.dumps(line).encode() + b"\n"
        with self._lock:
            if self._file.closed:  # a stream read after the run was over
                return
            if self._size + len(data) > self._max_bytes:
                self._dropped += 1
                return
            self._file.seek(0, 2)
            self._file.write(data)
            self._size += len(data)

    def batch(self) -> tuple[list[dict[str, Any]], int]:
        """Up to one API batch of unsent lines, and the position to confirm with `sent`.

        A batch holds at most MAX_LOG_BATCH lines and stops growing once it passes
        MAX_BATCH_BYTES, so it stays far below the server's cap on an event batch's body."""
        with self._lock:
            self._file.flush()
            self._file.seek(self._sent)
            lines: list[dict[str, Any]] = []
            size = 0
            while (len(lines) < MAX_LOG_BATCH and size < MAX_BATCH_BYTES
                   and (raw := self._file.readline())):
                lines.append(json.loads(raw))
                size += len(raw)
            position = self._file.tell()
            self.full = position < self._size
            self._noted = self._dropped if position == self._size else 0
            if self._noted and len(lines) < MAX_LOG_BATCH:
                lines.append(self._dropped_note())
            elif self._noted:
                self._noted = 0
        return lines, position

    def sent(self, position: int) -> None:
        """The server has every line before `position`; empty the file once it has them all."""
        with self._lock:
            self._sent = position
            self._dropped -= self._noted
            self._noted = 0
            if position == self._size and not self._dropped:
                self._file.seek(0)
                self._file.truncate()
                self._size = self._sent = 0

    @property
    def pending(self) -> bool:
        with self._lock:
            return self._sent < self._size or self._dropped > 0

    def close(self) -> None:
        """Forget the lines (the run is over, or no longer this agent's) and remove the file."""
        with self._lock:
            self._file.close()
            self.path.unlink(missing_ok=True)

    def _dropped_note(self) -> dict[str, Any]:
        return {"timestamp": datetime.now(UTC).isoformat(), "level": logging.WARNING,
                "logger": DROPPED_LOGGER,
                "message": f"{self._dropped} log lines were dropped: the agent could not reach "
                           f"the server and its backlog for this run reached "
                           f"{self._max_bytes // 2**20} MiB"}
