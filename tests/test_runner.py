"""The runner as the agent starts it: a real `python -m ostinato.agent.runner SPEC` child process,
cwd = a bundle folder, events read from a pipe passed with `pass_fds`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ostinato.agent.events import parse_event
from ostinato.deploy.limits import MAX_RESULT_CHARS

DEADLINE = 30.0


@dataclass
class Finished:
    code: int
    events: list[dict[str, Any]]
    stderr: str
    seconds: float  # until the events pipe closed

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1]

    def logs(self) -> list[tuple[str, int, str]]:
        return [(e["logger"], e["level"], e["message"]) for e in self.events if e["event"] == "log"]


def write_bundle(root: Path, files: dict[str, str]) -> Path:
    bundle = root / "bundle"
    for name, source in files.items():
        (bundle / name).parent.mkdir(parents=True, exist_ok=True)
        (bundle / name).write_text(source)
    return bundle


def run_spec(tmp_path: Path, bundle: Path, **spec: Any) -> Finished:
    read_fd, write_fd = os.pipe()
    spec = {"flow_run_id": "run-1", "name": "crimson-otter", "deployment": "main/nightly",
            "scheduled_time": "2024-03-01T02:00:00Z", "attempt": 2, "parameters": {},
            "entrypoint": "flow.py:main", "agent": "agent-a", "events_fd": write_fd, **spec}
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    env = {k: v for k, v in os.environ.items() if k != "OSTINATO_FLOW_RUN_ID"}
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "ostinato.agent.runner", str(spec_file)], cwd=bundle, env=env,
        pass_fds=(write_fd,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    os.close(write_fd)
    lines: list[bytes] = []
    reader = threading.Thread(target=lambda: lines.extend(os.fdopen(read_fd, "rb")), daemon=True)
    reader.start()
    reader.join(DEADLINE)
    seconds = time.monotonic() - started
    _, stderr = process.communicate(timeout=DEADLINE)
    assert not reader.is_alive(), "the events pipe never closed"
    events = [dict(parse_event(line)) for line in lines]
    return Finished(process.returncode, events, stderr, seconds)


def run_flow(tmp_path: Path, source: str, **spec: Any) -> Finished:
    return run_spec(tmp_path, write_bundle(tmp_path, {"flow.py": source}), **spec)


HEADER = "from ostinato.deploy import flow, get_run_logger, get_run_context\n"


def flow_source(body: str) -> str:
    return HEADER + textwrap.dedent(body)


def test_parameters_are_coerced_and_the_run_context_is_set(tmp_path: Path) -> None:
    source = flow_source("""
    import datetime, os, pydantic

    class Window(pydantic.BaseModel):
        days: int

    @flow
    def main(n: int, day: datetime.date, window: Window, label: str = "x"):
        c = get_run_context()
        return {"n": n, "types": [type(v).__name__ for v in (n, day, window, label)],
                "id": c.id, "name": c.name, "deployment": c.deployment, "attempt": c.attempt,
                "scheduled": c.scheduled_time.isoformat(), "agent": c.agent,
                "parameters": repr(c.parameters), "env": os.environ["OSTINATO_FLOW_RUN_ID"]}
    """)
    done = run_flow(tmp_path, source,
                    parameters={"n": "5", "day": "2024-03-01", "window": {"days": "7"}})
    assert (done.code, [e["event"] for e in done.events]) == (0, ["started", "completed"])
    assert done.last["result"] == {
        "n": 5, "types": ["int", "date", "Window", "str"], "id": "run-1", "name": "crimson-otter",
        "deployment": "main/nightly", "attempt": 2, "scheduled": "2024-03-01T02:00:00+00:00",
        "agent": "agent-a", "env": "run-1",
        "parameters": "{'n': 5, 'day': datetime.date(2024, 3, 1), 'window': Window(days=7), "
                      "'label': 'x'}",
    }


def test_print_and_logging_become_log_events_in_order(tmp_path: Path) -> None:
    source = flow_source("""
    import logging, sys
    print("importing")

    @flow
    def main():
        print("one\\ntwo")
        get_run_logger().info("three %d", 3)
        logging.getLogger("lib").debug("hidden: below INFO")
        logging.getLogger("lib").warning("four")
        print("five", file=sys.stderr)
        sys.stdout.write("six, without a newline")
    """)
    done = run_flow(tmp_path, source)
    assert [e["event"] for e in done.events] == ["log", "started", *["log"] * 6, "completed"]
    assert done.logs() == [
        ("stdout", 20, "importing"), ("stdout", 20, "one"), ("stdout", 20, "two"),
        ("ostinato.flow_run", 20, "three 3"), ("lib", 30, "four"), ("stderr", 30, "five"),
        ("stdout", 20, "six, without a newline"),
    ]


def test_an_exception_fails_the_run_with_its_traceback(tmp_path: Path) -> None:
    source = flow_source("""
    def helper(n):
        raise ValueError(f"bad n: {n}")

    @flow
    def main():
        helper(3)
    """)
    done = run_flow(tmp_path, source)
    assert done.code == 1
    assert {k: done.last[k] for k in ("event", "reason", "type", "message")} == {
        "event": "failed", "reason": "exception", "type": "ValueError", "message": "bad n: 3"}
    trace = done.last["traceback"]
    assert trace.startswith("Traceback") and "runner.py" not in trace
    assert 'flow.py", line 4, in helper' in trace and 'flow.py", line 8, in main' in trace


@pytest.mark.parametrize(("statement", "kind", "message"), [
    ("sys.exit(3)", "SystemExit", "the flow called sys.exit(3)"),
    ("raise KeyboardInterrupt", "KeyboardInterrupt", "interrupted"),
])
def test_exiting_or_interrupting_fails_the_run(tmp_path: Path, statement: str, kind: str,
                                               message: str) -> None:
    done = run_flow(tmp_path, HEADER + f"import sys\n@flow\ndef main():\n    {statement}\n")
    assert (done.code, done.last["event"], done.last["reason"]) == (1, "failed", "exception")
    assert done.last["type"] == kind and message in done.last["message"]


FLOW = HEADER + "@flow\ndef main(n: int):\n    return n\n"


@pytest.mark.parametrize(("source", "spec", "reason", "kind", "message"), [
    (FLOW, {"entrypoint": "missing.py:main"}, "bad_entrypoint", "FileNotFoundError",
     "missing.py: no such file"),
    (FLOW, {"entrypoint": "flow.py:nope"}, "bad_entrypoint", "AttributeError",
     "flow.py has no attribute 'nope'"),
    ("def main(n):\n    return n\n", {}, "bad_entrypoint", "TypeError",
     "flow.py:main is a function, not a @flow"),
    ("def main(:\n", {}, "bad_entrypoint", "SyntaxError", "line 1"),
    ("import not_installed_anywhere\n", {}, "bad_entrypoint", "ModuleNotFoundError",
     "not_installed_anywhere"),
    (FLOW, {"parameters": {"n": "five"}}, "bad_parameters", "InvalidInput",
     "parameter 'n' of flow 'main'"),
    (FLOW, {"parameters": {"n": 1, "m": 2}}, "bad_parameters", "InvalidInput",
     "has no parameter 'm'"),
    (FLOW, {"parameters": {}}, "bad_parameters", "InvalidInput", "parameter 'n'"),
], ids=["missing-file", "missing-attribute", "not-a-flow", "syntax-error", "import-error",
        "bad-parameter", "unknown-parameter", "missing-parameter"])
def test_a_run_that_cannot_start_fails_with_exit_2(
        tmp_path: Path, source: str, spec: dict[str, Any], reason: str, kind: str,
        message: str) -> None:
    done = run_flow(tmp_path, source, **{"parameters": {"n": 1}, **spec})
    assert (done.code, [e["event"] for e in done.events]) == (2, ["failed"])
    assert (done.last["reason"], done.last["type"]) == (reason, kind)
    assert message in done.last["message"]


def test_a_syntax_error_shows_the_offending_line(tmp_path: Path) -> None:
    done = run_flow(tmp_path, "x = 1\ndef main(:\n")
    assert 'flow.py", line 2' in done.last["traceback"]
    assert "def main(:" in done.last["traceback"]


def test_the_flow_imports_modules_from_the_bundle(tmp_path: Path) -> None:
    bundle = write_bundle(tmp_path, {
        "helpers.py": "ROOT = 'root helper'\n",
        "flows/sibling.py": "NEAR = 'sibling helper'\n",
        "flows/etl.py": flow_source("""
        import helpers, sibling
        @flow
        def main():
            return [helpers.ROOT, sibling.NEAR, __name__]
        """),
    })
    done = run_spec(tmp_path, bundle, entrypoint="flows/etl.py:main")
    assert done.last["result"] == ["root helper", "sibling helper", "flows.etl"]


def test_a_result_json_cannot_hold_becomes_its_repr(tmp_path: Path) -> None:
    done = run_flow(tmp_path, HEADER + "@flow\ndef main():\n    return {1, 2}, float('nan')\n")
    assert (done.code, done.last["result"]) == (0, "({1, 2}, nan)")


@pytest.mark.parametrize(("returned", "kept"), [
    ("'a\\x00b'", "'a\\x00b'"),  # the server cannot store NUL: its repr, escaped
    ("{'deep': " + "[" * 40 + "1" + "]" * 40 + "}", None),  # deeper than the server keeps
    ("'x' * (64 * 1024)", None),  # over the size cap
])
def test_a_result_the_server_cannot_store_becomes_its_repr_cut_to_the_cap(
        tmp_path: Path, returned: str, kept: str | None) -> None:
    done = run_flow(tmp_path, HEADER + f"@flow\ndef main():\n    return {returned}\n")
    result = done.last["result"]
    assert done.code == 0 and isinstance(result, str)
    assert len(result) <= MAX_RESULT_CHARS
    if kept is not None:
        assert result == kept


def test_grandchildren_and_leftover_threads_do_not_hold_the_run_open(tmp_path: Path) -> None:
    source = flow_source("""
    import subprocess, sys, threading, time
    @flow
    def main():
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(20)"], close_fds=False,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        threading.Thread(target=time.sleep, args=(20,)).start()
        return "done"
    """)
    done = run_flow(tmp_path, source)
    assert (done.code, done.last["result"]) == (0, "done")
    assert done.seconds < 10


def test_a_bad_spec_exits_2_saying_why(tmp_path: Path) -> None:
    (tmp_path / "spec.json").write_text(json.dumps({"flow_run_id": "run-1"}))
    result = subprocess.run([sys.executable, "-m", "ostinato.agent.runner", "spec.json"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 2
    assert "bad run spec spec.json: 'name' is missing or not str" in result.stderr
