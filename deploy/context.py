"""The run context: what a flow can learn about the run it is part of.

Outside a run (a flow called directly, a test) there is no context and `get_run_context()` is None.
The runner that executes a flow run on an agent sets it before calling the flow.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

LOGGER_NAME = "ostinato.flow_run"


@dataclass(frozen=True)
class RunContext:
    id: str
    name: str
    deployment: str
    scheduled_time: datetime
    attempt: int
    parameters: dict[str, Any] = field(default_factory=dict)
    agent: str | None = None


_current: ContextVar[RunContext | None] = ContextVar("ostinato_run_context", default=None)


def get_run_context() -> RunContext | None:
    """The current flow run, or None outside one."""
    return _current.get()


def set_run_context(context: RunContext | None) -> None:
    _current.set(context)


def get_run_logger() -> logging.Logger:
    """The logger whose records become the run's logs (and go to the console outside a run)."""
    return logging.getLogger(LOGGER_NAME)
