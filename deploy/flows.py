"""`@flow`: a function that deployments run, and that other flows call as subflows.

Calling a flow runs it in-process, like any function (ostinato.deploy.engine records what it
does when it is part of a run). The decorator adds a name, the retry and timeout policies its
deployments start from, the task runner for its submitted tasks, and a parameter model built
from the signature, which validates parameters and produces the JSON schema stored with a
deployment.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError, create_model

from ostinato.deploy import engine
from ostinato.deploy.errors import InvalidInput
from ostinato.deploy.task_runners import TaskRunner, ThreadPoolTaskRunner
from ostinato.deploy.tasks import check_policy

P = ParamSpec("P")
R = TypeVar("R")


class Flow(Generic[P, R]):
    """A flow: a function plus the policies a deployment of it starts from."""

    def __init__(self, fn: Callable[P, R], *, name: str | None = None, retries: int = 0,
                 retry_delay: float = 0.0, timeout: float | None = None,
                 description: str | None = None, task_runner: TaskRunner | None = None
                 ) -> None:
        self.fn = fn
        self.name = name or fn.__name__
        check_policy(f"flow {self.name!r}", retries, retry_delay, timeout)
        self.retries = retries
        self.retry_delay = retry_delay
        self.timeout = timeout
        self.description = description if description is not None else inspect.getdoc(fn) or ""
        self.task_runner = task_runner or ThreadPoolTaskRunner()
        functools.update_wrapper(self, fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return engine.call_flow(self, args, kwargs)

    def bind_parameters(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """The call's arguments by parameter name, defaults included (as a subflow run shows
        them); TypeError, as from the call itself, if they do not fit the signature."""
        bound = inspect.signature(self.fn).bind(*args, **kwargs)
        bound.apply_defaults()
        return dict(bound.arguments)

    def __repr__(self) -> str:
        return f"Flow({self.name!r})"

    @functools.cached_property
    def parameter_model(self) -> type[BaseModel]:
        return _parameter_model(self.fn, self.name)

    def parameter_schema(self) -> dict[str, Any]:
        """JSON schema of the flow's parameters, as stored with its deployments."""
        try:
            return self.parameter_model.model_json_schema()
        except Exception:  # a type pydantic cannot describe: keep the names, drop the types
            names = list(self.parameter_model.model_fields)
            return {"type": "object", "properties": {n: {} for n in names}}

    def validate_parameters(self, parameters: dict[str, Any], *, complete: bool = True
                            ) -> dict[str, Any]:
        """Validated, coerced parameters; InvalidInput names the first bad one.

        With `complete=False` only the given values are checked: required parameters may still
        come later (from a schedule or a manual run).
        """
        fields = self.parameter_model.model_fields
        unknown = sorted(set(parameters) - set(fields))
        if unknown:
            known = ", ".join(fields) or "none"
            raise InvalidInput(f"flow {self.name!r} has no parameter {unknown[0]!r} "
                               f"(it takes: {known})")
        if complete:
            try:
                return self.parameter_model.model_validate(parameters).model_dump()
            except ValidationError as exc:
                raise self._invalid(exc) from exc
        checked: dict[str, Any] = {}
        for name, value in parameters.items():
            try:
                checked[name] = TypeAdapter(fields[name].annotation).validate_python(value)
            except ValidationError as exc:
                raise self._invalid(exc, name) from exc
        return checked

    def _invalid(self, exc: ValidationError, name: str = "") -> InvalidInput:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in (name, *error["loc"]) if part != "")
        return InvalidInput(f"parameter {where!r} of flow {self.name!r}: {error['msg']}")


_CONFIG = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


def _parameter_model(fn: Callable[..., Any], name: str) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for parameter in inspect.signature(fn).parameters.values():
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        annotation = Any if parameter.annotation is parameter.empty else parameter.annotation
        default = ... if parameter.default is parameter.empty else parameter.default
        fields[parameter.name] = (annotation, default)
    model_name = "".join(part.capitalize() for part in name.replace("-", "_").split("_"))
    return create_model(f"{model_name}Parameters", __config__=_CONFIG, **fields)


@overload
def flow(fn: Callable[P, R], /) -> Flow[P, R]: ...
@overload
def flow(*, name: str | None = None, retries: int = 0, retry_delay: float = 0.0,
         timeout: float | None = None, description: str | None = None,
         task_runner: TaskRunner | None = None) -> Callable[[Callable[P, R]], Flow[P, R]]: ...


def flow(fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
    """Make a function a flow: `@flow` or `@flow(name=…, retries=…, timeout=…, task_runner=…)`."""
    if fn is not None:
        return Flow(fn, **options)
    return lambda f: Flow(f, **options)
