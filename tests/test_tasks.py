"""Tasks inside a flow, in process: upstream links, retries, timeouts, concurrency, map,
subflows, log attribution, and what a failing flow leaves. The records are those an agent's run
would send; here a recorder keeps them in memory."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ostinato.deploy import (
    SequentialTaskRunner,
    TaskTimeout,
    ThreadPoolTaskRunner,
    engine,
    flow,
    get_run_logger,
    task,
    unmapped,
)
from ostinato.deploy.records import FlowRunRecord, TaskRunRecord

ROOT = "00000000-0000-4000-8000-000000000001"


class Recorded:
    """Every snapshot, and the newest record of each task run and subflow run."""

    def __init__(self) -> None:
        self.tasks: dict[str, TaskRunRecord] = {}
        self.flows: dict[str, FlowRunRecord] = {}
        self.snapshots = 0
        self._lock = threading.Lock()

    def task_run(self, record: TaskRunRecord) -> None:
        with self._lock:
            self.tasks[record["id"]] = copy.deepcopy(record)
            self.snapshots += 1

    def flow_run(self, record: FlowRunRecord) -> None:
        with self._lock:
            self.flows[record["id"]] = copy.deepcopy(record)

    def named(self, name: str) -> TaskRunRecord:
        (record,) = [r for r in self.tasks.values() if r["name"] == name]
        return record

    def edges(self) -> set[tuple[str, str]]:
        return {(self.tasks[up]["name"], r["name"]) for r in self.tasks.values()
                for up in r["upstream"]}


def run(a_flow: Any, **parameters: Any) -> tuple[Any, Recorded]:
    recorded = Recorded()
    return engine.run_root(a_flow, ROOT, recorded, parameters), recorded


def times(record: TaskRunRecord) -> tuple[datetime, datetime]:
    assert record["start_time"] and record["end_time"]
    return (datetime.fromisoformat(record["start_time"]),
            datetime.fromisoformat(record["end_time"]))


@task
def source() -> list[int]:
    return [100, 200, 300]


@task
def total(numbers: list[int]) -> int:
    return sum(numbers)


@task
def count(numbers: list[int]) -> int:
    return len(numbers) * 1000


@task
def add(x: int, y: int) -> int:
    return x + y


@pytest.mark.parametrize("submitted", [True, False], ids=["futures", "results"])
def test_a_diamond_records_exactly_its_four_edges(submitted: bool) -> None:
    @flow
    def diamond() -> int:
        numbers = source()
        if submitted:
            return add(total.submit(numbers), count.submit(numbers))  # type: ignore[arg-type]
        return add(total(numbers), count(numbers))

    result, recorded = run(diamond)
    assert result == 3600  # not small ints: those are shared objects, linked only as futures
    assert recorded.edges() == {("source-0", "total-0"), ("source-0", "count-0"),
                                ("total-0", "add-0"), ("count-0", "add-0")}
    assert {r["state"] for r in recorded.tasks.values()} == {"COMPLETED"}
    assert {r["flow_run_id"] for r in recorded.tasks.values()} == {ROOT}
    assert recorded.named("add-0")["result"] == 3600


def test_a_value_equal_to_a_result_but_not_it_is_no_edge() -> None:
    @flow
    def unrelated() -> int:
        source()
        return total([100, 200, 300])

    _, recorded = run(unrelated)
    assert recorded.edges() == set()


def test_retries_make_that_many_attempts_waiting_the_delay_between_them() -> None:
    calls: list[float] = []

    @task(retries=2, retry_delay=0.2)
    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError(f"attempt {len(calls)} failed")
        return "ok"

    @flow
    def retrying() -> str:
        return flaky()

    result, recorded = run(retrying)
    assert result == "ok"
    gaps = [later - earlier for earlier, later in zip(calls, calls[1:], strict=False)]
    assert len(gaps) == 2 and min(gaps) >= 0.2
    record = recorded.named("flaky-0")
    assert record["attempt"] == 3
    assert [(h["name"], h["attempt"]) for h in record["history"]] == [
        ("Running", 1), ("AwaitingRetry", 1), ("Running", 2), ("AwaitingRetry", 2),
        ("Running", 3), ("Completed", 3)]
    assert record["history"][1]["message"] == "ConnectionError: attempt 1 failed"


def test_a_task_out_of_retries_fails_with_its_traceback() -> None:
    @task(retries=1)
    def broken() -> None:
        raise KeyError("missing")

    @flow
    def failing() -> None:
        broken()

    with pytest.raises(KeyError) as raised:
        run(failing)
    assert any(frame.name == "broken" for frame in raised.traceback)
    recorded = Recorded()
    with pytest.raises(KeyError):
        engine.run_root(failing, ROOT, recorded, {})
    record = recorded.named("broken-0")
    assert (record["state"], record["state_name"], record["attempt"]) == ("FAILED", "Failed", 2)
    assert record["error"] is not None
    assert record["error"].startswith("Traceback") and "in broken" in record["error"]
    assert "engine.py" not in record["error"]


def test_a_task_past_its_timeout_fails_then_and_may_retry() -> None:
    @task(timeout=0.3, retries=1)
    def stuck() -> None:
        time.sleep(5)

    @flow
    def waiting() -> None:
        stuck()

    recorded = Recorded()
    started = time.monotonic()
    with pytest.raises(TaskTimeout, match="stuck-0.*timeout of 0.3 s"):
        engine.run_root(waiting, ROOT, recorded, {})
    assert time.monotonic() - started < 2.0  # two attempts of 0.3 s, not 5 s
    record = recorded.named("stuck-0")
    assert (record["state"], record["state_name"], record["attempt"]) == \
        ("FAILED", "TimedOut", 2)


def test_submitted_tasks_overlap_and_sequential_ones_do_not() -> None:
    @task
    def nap(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def spans(runner: Any) -> list[tuple[datetime, datetime]]:
        @flow(task_runner=runner)
        def naps() -> list[float]:
            return [future.result() for future in [nap.submit(0.3) for _ in range(4)]]

        result, recorded = run(naps)
        assert result == [0.3] * 4
        return sorted(times(r) for r in recorded.tasks.values())

    parallel = spans(ThreadPoolTaskRunner(max_workers=4))
    assert max(start for start, _ in parallel) < min(end for _, end in parallel)
    one_by_one = spans(SequentialTaskRunner())
    pairs = zip(one_by_one, one_by_one[1:], strict=False)
    assert all(end <= start for (_, end), (start, _) in pairs)


def test_map_submits_one_run_per_element_and_passes_unmapped_arguments_whole() -> None:
    @flow
    def mapped() -> tuple[list[int], list[int]]:
        sums = add.map([1, 2, 3], unmapped(10))
        doubled = add.map(source.submit(), y=[1, 1, 1])  # over what the future returns
        return [f.result() for f in sums], [f.result() for f in doubled]

    result, recorded = run(mapped)
    assert result == ([11, 12, 13], [101, 201, 301])
    assert sorted(recorded.tasks[r]["name"] for r in recorded.tasks) == [
        "add-0", "add-1", "add-2", "add-3", "add-4", "add-5", "source-0"]
    assert recorded.edges() == {("source-0", f"add-{n}") for n in (3, 4, 5)}


def test_map_refuses_iterables_of_different_lengths() -> None:
    @flow
    def uneven() -> None:
        add.map([1, 2], [1, 2, 3])

    with pytest.raises(ValueError, match=r"one length, got lengths \[2, 3\]"):
        run(uneven)


def test_nested_subflows_are_child_runs_with_their_own_task_runs() -> None:
    @flow
    def grandchild(n: int) -> int:
        return add(n, 1)

    @flow(name="child-flow")
    def child(n: int, factor: int = 2) -> int:
        return grandchild(n * factor)

    @flow
    def parent() -> int:
        return child(total(source()))

    result, recorded = run(parent)
    assert result == 1201
    (child_run,) = [r for r in recorded.flows.values() if r["flow"] == "child-flow"]
    (grandchild_run,) = [r for r in recorded.flows.values() if r["flow"] == "grandchild"]
    assert child_run["parent_run_id"] == ROOT
    assert grandchild_run["parent_run_id"] == child_run["id"]
    assert child_run["parameters"] == {"n": 600, "factor": 2}
    assert (child_run["state"], child_run["result"]) == ("COMPLETED", 1201)
    assert [h["type"] for h in grandchild_run["history"]] == ["RUNNING", "COMPLETED"]
    assert recorded.named("add-0")["flow_run_id"] == grandchild_run["id"]
    assert recorded.named("total-0")["flow_run_id"] == ROOT


def test_a_failing_subflow_is_recorded_failed_and_raises_in_its_parent() -> None:
    @flow
    def child() -> None:
        raise RuntimeError("child broke")

    @flow
    def parent() -> str:
        try:
            child()
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    result, recorded = run(parent)
    assert result == "child broke"
    (child_run,) = recorded.flows.values()
    assert (child_run["state"], child_run["message"]) == ("FAILED", "RuntimeError: child broke")


def test_logs_from_worker_threads_belong_to_the_task_that_wrote_them() -> None:
    seen: list[tuple[str, str | None, str | None]] = []

    class Attribution(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append((record.getMessage(), *engine.current_ids()))

    @task
    def speak(word: str) -> str:
        for _ in range(20):
            get_run_logger().info(word)
            time.sleep(0.001)
        return word

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=4))
    def chorus() -> None:
        get_run_logger().info("flow")
        for future in speak.map(["a", "b", "c", "d"]):
            future.result()

    handler = Attribution()
    logger = get_run_logger()
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        _, recorded = run(chorus)
    finally:
        logger.removeHandler(handler)
    ids = {r["name"]: r["id"] for r in recorded.tasks.values()}
    assert ("flow", ROOT, None) in seen
    for n, word in enumerate("abcd"):
        assert {entry for entry in seen if entry[0] == word} == {(word, ROOT, ids[f"speak-{n}"])}


def test_an_upstream_failure_fails_its_downstream_without_running_it() -> None:
    ran: list[int] = []

    @task
    def broken() -> int:
        raise ValueError("no data")

    @task
    def downstream(x: int) -> None:
        ran.append(x)

    @flow
    def chain() -> None:
        failing = broken.submit()
        assert failing.wait(timeout=5) and failing.done()  # waits without raising
        downstream.submit(failing).result()

    recorded = Recorded()
    with pytest.raises(ValueError, match="no data"):
        engine.run_root(chain, ROOT, recorded, {})
    assert ran == []
    record = recorded.named("downstream-0")
    assert (record["state"], record["state_name"]) == ("FAILED", "UpstreamFailed")
    assert recorded.edges() == {("broken-0", "downstream-0")}


def test_a_failing_flow_cancels_the_tasks_it_submitted_that_have_not_started() -> None:
    release = threading.Event()

    @task
    def blocker() -> None:
        release.wait(5)

    @flow(task_runner=ThreadPoolTaskRunner(max_workers=1))
    def impatient() -> None:
        blocker.submit()
        blocker.submit()
        release.set()
        raise RuntimeError("gave up")

    recorded = Recorded()
    with pytest.raises(RuntimeError):
        engine.run_root(impatient, ROOT, recorded, {})
    states = {r["name"]: r["state"] for r in recorded.tasks.values()}
    assert states == {"blocker-0": "COMPLETED", "blocker-1": "CANCELLED"}


def test_results_are_stored_as_json_or_as_a_cut_repr() -> None:
    @task
    def opaque() -> object:
        return {1, 2}

    @task
    def huge() -> str:
        return "x" * 100_000

    @flow
    def results() -> None:
        opaque()
        huge()

    _, recorded = run(results)
    assert recorded.named("opaque-0")["result"] == "{1, 2}"
    cut = recorded.named("huge-0")["result"]
    assert isinstance(cut, str) and cut.endswith("…") and len(cut) == 8 * 1024


def test_a_flow_called_directly_runs_and_logs_to_the_console(tmp_path: Path) -> None:
    script = tmp_path / "local.py"
    script.write_text(textwrap.dedent("""
        from ostinato.deploy import flow, get_run_logger, task

        @task
        def add(x, y):
            return x + y

        @flow
        def local(x):
            get_run_logger().info("working on %d", x)
            return add(x, add.submit(1, 1).result())

        print(local(5))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout == "7\n"
    assert done.stderr.rstrip().endswith("INFO working on 5")


def test_a_task_called_outside_a_flow_is_its_function_with_retries() -> None:
    attempts: list[int] = []

    @task(retries=1)
    def once_flaky() -> int:
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("first")
        return len(attempts)

    assert once_flaky() == 2
    assert once_flaky.submit().result() == 3


@pytest.mark.parametrize(("options", "message"), [
    ({"retries": -1}, "task 'f': retries must be a whole number ≥ 0, not -1"),
    ({"retry_delay": "soon"}, "task 'f': retry_delay must be seconds ≥ 0, not 'soon'"),
    ({"timeout": 0}, "task 'f': timeout must be seconds > 0 or None, not 0"),
    ({"tags": ["a b"]}, "task 'f': tag 'a b' must be 1–100 characters without spaces or commas"),
])
def test_impossible_task_policies_are_refused_when_decorating(options: dict[str, Any],
                                                              message: str) -> None:
    with pytest.raises(ValueError) as raised:
        task(name="f", **options)(lambda: None)
    assert str(raised.value) == message
