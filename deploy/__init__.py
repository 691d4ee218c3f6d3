"""What users write: `from ostinato.deploy import flow, task, Deployment, Cron, get_run_logger`.

Names are loaded on first use (PEP 562), so importing one submodule — the CLI's error types, the
runner's context — does not pay for the rest. `Cron`, `Interval` and `RRule` here are declarations
(ostinato.deploy.deployment), built into the models of ostinato.deploy.schedules at registration.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "flow": "flows", "Flow": "flows", "task": "tasks", "Task": "tasks", "unmapped": "tasks",
    "TaskFuture": "engine", "TaskRunner": "task_runners", "SequentialTaskRunner": "task_runners",
    "ThreadPoolTaskRunner": "task_runners", "TaskTimeout": "task_runners",
    "DaskTaskRunner": "dask_runner",
    "Deployment": "deployment", "Cron": "deployment", "Interval": "deployment",
    "RRule": "deployment",
    "get_run_logger": "context", "get_run_context": "context",
    "StateType": "states",
}

__all__ = [
    "Cron", "DaskTaskRunner", "Deployment", "Flow", "Interval", "RRule", "SequentialTaskRunner",
    "StateType", "Task", "TaskFuture", "TaskRunner", "TaskTimeout", "ThreadPoolTaskRunner",
    "flow", "get_run_context", "get_run_logger", "task", "unmapped",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'ostinato.deploy' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ostinato.deploy.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from ostinato.deploy.context import get_run_context, get_run_logger
    from ostinato.deploy.dask_runner import DaskTaskRunner
    from ostinato.deploy.deployment import Cron, Deployment, Interval, RRule
    from ostinato.deploy.engine import TaskFuture
    from ostinato.deploy.flows import Flow, flow
    from ostinato.deploy.states import StateType
    from ostinato.deploy.task_runners import (
        SequentialTaskRunner,
        TaskRunner,
        TaskTimeout,
        ThreadPoolTaskRunner,
    )
    from ostinato.deploy.tasks import Task, task, unmapped
