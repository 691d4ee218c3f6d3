"""Dependency direction (STYLE.md): agents and users' flow code never load the server's stack."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER_STACK = ("sqlalchemy", "fastapi", "alembic", "uvicorn", "starlette", "apscheduler")

# Which of our packages each package may import (STYLE.md's table).
ALLOWED = {
    "deploy": set(),
    "queues": {"deploy"},
    "scheduler": {"deploy", "queues"},
    "agent": {"deploy"},
    "cli": {"deploy", "queues", "scheduler", "agent"},
}


def _loaded_modules(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return {name.split(".")[0] for name in json.loads(out.stdout)}


@pytest.mark.parametrize("statement", [
    "import ostinato.deploy",
    "import ostinato.agent",
    "from ostinato.deploy import flow, task, Deployment, Cron, Interval, RRule, get_run_logger",
    "import ostinato.deploy.client, ostinato.deploy.registration",
])
def test_user_and_agent_side_never_load_the_server_stack(statement: str) -> None:
    loaded = _loaded_modules(statement)
    assert not loaded & set(SERVER_STACK), sorted(loaded & set(SERVER_STACK))


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {n.split(".")[1] for n in names if n.startswith("ostinato.") and n.count(".") >= 1}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_imports_follow_the_layout(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        forbidden = _imported_packages(path) - ALLOWED[package] - {package}
        assert not forbidden, f"{path.relative_to(ROOT)} imports ostinato.{sorted(forbidden)}"
