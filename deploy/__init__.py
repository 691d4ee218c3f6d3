"""What users write: `from ostinato.deploy import flow, task, Deployment, Cron, get_run_logger`.

Names are loaded on first use (PEP 562), so importing one submodule — the CLI's error types, the
runner's context — does not pay for the rest. `Cron`, `Interval` and `RRule` here are declarations
(ostinato.deploy.deployment), built into the models of ostinato.deploy.schedules at registration.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "flow": "flows", "task": "flows", "Flow": "flows", "Task": "flows",
    "Deployment": "deployment", "Cron": "deployment", "Interval": "deployment",
    "RRule": "deployment",
    "get_run_logger": "context", "get_run_context": "context",
    "StateType": "states",
}

__all__ = [
    "Cron", "Deployment", "Flow", "Interval", "RRule", "StateType", "Task",
    "flow", "get_run_context", "get_run_logger", "task",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ostinato.deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ostinato.deploy.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from ostinato.deploy.context import get_run_context, get_run_logger
    from ostinato.deploy.deployment import Cron, Deployment, Interval, RRule
    from ostinato.deploy.flows import Flow, Task, flow, task
    from ostinato.deploy.states import StateType
