"""`@task`: a unit of work inside a flow, recorded as a task run each time it is called.

Calling a task runs it in the calling thread; `.submit()` hands it to the flow's task runner and
returns a future at once; `.map()` submits one call per element. Outside a flow a task is its
function with retries and a timeout, and records nothing (ostinato.deploy.engine).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from ostinato.deploy import engine
from ostinato.deploy.engine import TaskFuture

P = ParamSpec("P")
R = TypeVar("R")
TAG = re.compile(r"[^\s,\x00]{1,100}")  # as the server's tags
MAX_TAGS, MAX_KEY = 50, 255


class unmapped:  # noqa: N801 (reads as a marker in calls: task.map(xs, unmapped(config)))
    """An argument `.map()` passes whole to every call instead of iterating over it."""

    def __init__(self, value: Any) -> None:
        self.value = value


def check_tags(owner: str, tags: Iterable[str]) -> tuple[str, ...]:
    """The tags, or ValueError naming the first the server would refuse."""
    checked = tuple(tags)
    for tag in checked:
        if not isinstance(tag, str) or not TAG.fullmatch(tag):
            raise ValueError(f"{owner}: tag {tag!r} must be 1–100 characters without spaces "
                             f"or commas")
    if len(checked) > MAX_TAGS:
        raise ValueError(f"{owner}: at most {MAX_TAGS} tags, not {len(checked)}")
    return checked


def check_policy(owner: str, retries: int, retry_delay: float, timeout: float | None) -> None:
    """ValueError, naming the option, for a retry or timeout policy that cannot work."""
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        raise ValueError(f"{owner}: retries must be a whole number ≥ 0, not {retries!r}")
    if not isinstance(retry_delay, int | float) or retry_delay < 0:
        raise ValueError(f"{owner}: retry_delay must be seconds ≥ 0, not {retry_delay!r}")
    if timeout is not None and (not isinstance(timeout, int | float) or timeout <= 0):
        raise ValueError(f"{owner}: timeout must be seconds > 0 or None, not {timeout!r}")


class Task(Generic[P, R]):
    """A task: a function plus its retry policy, timeout and tags."""

    def __init__(self, fn: Callable[P, R], *, name: str | None = None, retries: int = 0,
                 retry_delay: float = 0.0, timeout: float | None = None,
                 tags: Iterable[str] = ()) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        check_policy(f"task {self.name!r}", retries, retry_delay, timeout)
        self.retries = retries
        self.retry_delay = float(retry_delay)
        self.timeout = timeout
        self.tags = check_tags(f"task {self.name!r}", tags)
        self.key = f"{fn.__module__}.{fn.__qualname__}"[:MAX_KEY]
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return engine.call_task(self, args, kwargs)

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> TaskFuture[R]:
        """Run the task on the flow's task runner; returns its future at once."""
        return engine.submit_task(self, args, kwargs)

    def map(self, *args: Any, **kwargs: Any) -> list[TaskFuture[R]]:
        """One `.submit()` per element of the iterable arguments (all of the same length);
        other arguments, and those wrapped in `unmapped()`, are passed whole to every call. A
        future is waited for and its result mapped over; every call depends on it."""
        upstream = [value.task_run_id for value in [*args, *kwargs.values()]
                    if isinstance(value, TaskFuture)]
        positional = [_mappable(value) for value in args]
        named = {key: _mappable(value) for key, value in kwargs.items()}
        lengths = {len(value) for value in [*positional, *named.values()]
                   if isinstance(value, list)}
        if len(lengths) > 1:
            raise ValueError(f"task {self.name!r}: .map() needs iterables of one length, "
                             f"got lengths {sorted(lengths)}")
        count = lengths.pop() if lengths else 0
        return [engine.submit_task(self, tuple(_nth(value, i) for value in positional),
                                   {key: _nth(value, i) for key, value in named.items()},
                                   upstream=upstream)
                for i in range(count)]

    def __repr__(self) -> str:
        return f"Task({self.name!r})"


def _mappable(value: Any) -> list[Any] | unmapped:
    """A list to map over, or an `unmapped` to pass whole."""
    if isinstance(value, TaskFuture):
        value = value.result()
    if isinstance(value, unmapped):
        return value
    if isinstance(value, str | bytes | dict) or not isinstance(value, Iterable):
        return unmapped(value)
    return list(value)


def _nth(value: Any, index: int) -> Any:
    if isinstance(value, unmapped):
        return value.value
    return value[index]


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...
@overload
def task(*, name: str | None = None, retries: int = 0, retry_delay: float = 0.0,
         timeout: float | None = None, tags: Iterable[str] = ()
         ) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
    """Make a function a task: `@task` or `@task(retries=…, retry_delay=…, timeout=…, tags=…)`."""
    if fn is not None:
        return Task(fn, **options)
    return lambda f: Task(f, **options)
