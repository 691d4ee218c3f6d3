"""Task runners: where a flow's submitted tasks run, and how one attempt of a task is made.

`@flow(task_runner=…)` takes one of these as a template; every call of the flow works with its
own copy (`open`), so a flow called from several threads at once shares no executor. A runner
has two jobs: `submit` runs a task run's whole life (waiting for its upstream futures, attempts,
retries, records) somewhere and returns a future of it; `invoke` makes one attempt of the task
function within a time limit. The threads runner does both in this process; the Dask runner
(ostinato.deploy.dask_runner) keeps the life here and sends each attempt to a cluster.
"""

from __future__ import annotations

import contextvars
import copy
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class TaskTimeout(TimeoutError):
    """A task attempt ran past its `timeout`."""


class TaskRunner:
    """Runs every task at once in the calling thread: `submit` returns a finished future."""

    def open(self) -> TaskRunner:
        """A copy for one flow call, with nothing started yet."""
        return copy.copy(self)

    def submit(self, life: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        future.set_running_or_notify_cancel()
        try:
            future.set_result(life())
        except BaseException as exc:  # noqa: BLE001 (the future holds whatever the task raised)
            future.set_exception(exc)
        return future

    def invoke(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], *,
               timeout: float | None, name: str) -> T:
        """One attempt: `fn(*args, **kwargs)`, or TaskTimeout once `timeout` seconds pass."""
        return call_with_timeout(fn, args, kwargs, timeout=timeout, name=name)

    def close(self) -> None:
        """The flow call is over: free what `submit` started."""


class SequentialTaskRunner(TaskRunner):
    """Submitted tasks run one after the other, at once, in the flow's own thread."""

    def __repr__(self) -> str:
        return "SequentialTaskRunner()"


class ThreadPoolTaskRunner(TaskRunner):
    """Submitted tasks run concurrently on a pool of threads (the default): right for tasks
    that wait on I/O, databases or subprocesses."""

    def __init__(self, max_workers: int | None = None) -> None:
        if max_workers is not None and max_workers < 1:
            raise ValueError(f"max_workers must be at least 1, not {max_workers}")
        self.max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def open(self) -> ThreadPoolTaskRunner:
        return ThreadPoolTaskRunner(self.max_workers)

    def submit(self, life: Callable[[], T]) -> Future[T]:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.max_workers, "ostinato-task")
        # The worker sees the submitting thread's context: the flow call and the run context.
        return self._executor.submit(contextvars.copy_context().run, life)

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    def __repr__(self) -> str:
        return f"ThreadPoolTaskRunner(max_workers={self.max_workers})"


def call_with_timeout(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], *,
                      timeout: float | None, name: str) -> T:
    """`fn(*args, **kwargs)` in this thread, or in a helper thread it waits for at most
    `timeout` seconds. A thread cannot be killed: on timeout the helper gets TaskTimeout raised
    at its next Python instruction (a blocking call returns first) and is left to end."""
    if timeout is None:
        return fn(*args, **kwargs)
    outcome: Future[T] = Future()
    context = contextvars.copy_context()

    def attempt() -> None:
        try:
            outcome.set_result(context.run(fn, *args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 (handed to the waiting thread)
            if not outcome.done():
                outcome.set_exception(exc)

    helper = threading.Thread(target=attempt, name=f"ostinato-task-{name}", daemon=True)
    helper.start()
    helper.join(timeout)
    if helper.is_alive():
        _interrupt(helper)
        raise TaskTimeout(f"task {name!r} ran longer than its timeout of {timeout:g} s")
    return outcome.result()


def _interrupt(thread: threading.Thread) -> None:
    import ctypes  # only a timed-out task pays for it

    if thread.ident is not None:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident),
                                                   ctypes.py_object(TaskTimeout))
