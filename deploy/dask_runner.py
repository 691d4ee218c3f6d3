"""`DaskTaskRunner`: a flow's submitted tasks run on a Dask cluster (`pip install ostinato[dask]`).

For tasks that outgrow one machine. Each task run's life — waiting for upstream futures,
retries, its records — stays in the flow's process, on a thread; only the attempts travel: the
task function and its arguments go to a Dask worker, and its result, exception (with the
worker's traceback as a note) and log records come back. The records are replayed here, inside
the task run, so they are attributed to it like any other task's. With no address a local
cluster is started for the flow call and closed after it.

Functions travel with cloudpickle: modules from the flow's own folder (the bundle) are sent by
value, so workers need only ostinato and the flow's installed dependencies, not its files.
"""

from __future__ import annotations

import contextvars
import copy
import logging
import os
import pickle
import sys
import threading
import traceback
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ostinato.deploy.task_runners import TaskRunner, TaskTimeout

T = TypeVar("T")


class DaskTaskRunner(TaskRunner):
    """Task attempts on the Dask scheduler at `address`, or on a local cluster made with
    `cluster_kwargs` (e.g. `{"n_workers": 2, "threads_per_worker": 4}`). `max_waiting` bounds
    the task runs in flight at once (each waits for its attempt on a thread here)."""

    def __init__(self, address: str | None = None, *, cluster_kwargs: dict[str, Any] | None = None,
                 max_waiting: int = 64) -> None:
        self.address = address
        self.cluster_kwargs = dict(cluster_kwargs or {})
        self.max_waiting = max_waiting
        self._client: Any = None
        self._cluster: Any = None
        self._waiting: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def open(self) -> DaskTaskRunner:
        return DaskTaskRunner(self.address, cluster_kwargs=copy.deepcopy(self.cluster_kwargs),
                              max_waiting=self.max_waiting)

    def submit(self, life: Callable[[], T]) -> Future[T]:
        with self._lock:
            if self._waiting is None:
                self._waiting = ThreadPoolExecutor(self.max_waiting, "ostinato-dask")
        return self._waiting.submit(contextvars.copy_context().run, life)

    def invoke(self, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any], *,
               timeout: float | None, name: str) -> T:
        future = self._connected().submit(attempt_on_worker, fn, args, kwargs, pure=False,
                                          key=f"{name}-{uuid.uuid4().hex}")
        try:
            outcome: Outcome = future.result(timeout=timeout)
        except TimeoutError:
            future.cancel()
            raise TaskTimeout(f"task {name!r} ran longer than its timeout of {timeout:g} s"
                              ) from None
        return outcome.unwrap()  # type: ignore[no-any-return]

    def close(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, None
            client, cluster, self._client, self._cluster = self._client, self._cluster, None, None
        if waiting is not None:
            waiting.shutdown(wait=True)
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()

    def _connected(self) -> Any:
        with self._lock:
            if self._client is None:
                from distributed import Client, LocalCluster

                _send_bundle_by_value()
                if self.address is None:
                    self._cluster = LocalCluster(  # type: ignore[no-untyped-call]
                        **self.cluster_kwargs)
                self._client = Client(  # type: ignore[no-untyped-call]
                    self.address or self._cluster)
            return self._client

    def __repr__(self) -> str:
        return f"DaskTaskRunner(address={self.address!r})"


def _send_bundle_by_value() -> None:
    """Let cloudpickle send the flow's own modules (those under the working directory, outside
    any installed environment) by value: a worker cannot import them."""
    import cloudpickle

    root = os.getcwd() + os.sep
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None) or ""
        if (path.startswith(root) and not module.__name__.startswith("ostinato.")
                and "site-packages" not in path and "dist-packages" not in path):
            try:
                cloudpickle.register_pickle_by_value(module)
            except ValueError:  # not importable by its name: pickled with its objects anyway
                pass


@dataclass
class Outcome:
    """What one attempt on a worker came to: its value or exception, and its log records."""

    value: Any = None
    error: BaseException | None = None
    remote_traceback: str = ""
    records: list[logging.LogRecord] = field(default_factory=list)

    def unwrap(self) -> Any:
        for record in self.records:  # inside the task run here: attributed to it
            logging.getLogger(record.name).handle(record)
        if self.error is not None:
            self.error.add_note(f"on the Dask worker:\n{self.remote_traceback}")
            raise self.error
        return self.value


class _Collect(logging.Handler):
    """The log records of one worker thread, made picklable."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.thread = threading.get_ident()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread != self.thread:
            return
        record.msg, record.args = self.format(record), None
        record.exc_info = record.exc_text = None
        self.records.append(record)


def attempt_on_worker(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
                      ) -> Outcome:
    """Runs on the worker: one attempt, its logs collected for the flow's process."""
    collect = _Collect()
    root = logging.getLogger()
    root.addHandler(collect)
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        return Outcome(value=fn(*args, **kwargs), records=collect.records)
    except Exception as exc:
        below = exc.__traceback__.tb_next if exc.__traceback__ else None  # this frame: not news
        shown = traceback.format_exception(type(exc), exc, below)
        return Outcome(error=_picklable(exc), remote_traceback="".join(shown),
                       records=collect.records)
    finally:
        root.removeHandler(collect)


def _picklable(exc: Exception) -> Exception:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 (any exception may fail to pickle in any way)
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc
