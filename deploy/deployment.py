"""`Deployment`: what a flow file declares at module level for `ostinato deployment create`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ostinato.deploy.errors import InvalidInput
from ostinato.deploy.flows import Flow
from ostinato.deploy.schedules import Cron, Interval, RRule
from ostinato.deploy.schemas import DeploymentSpec


class Deployment:
    """A named registration of one flow with schedules, parameters, tags and policies.

    Policies left out come from the flow (`retries`, `retry_delay`, `timeout`) or from the
    defaults of DESIGN.md (`overlap="allow"`, `catchup="latest"`).
    """

    def __init__(self, flow: Flow[..., Any], name: str, *,
                 schedules: Sequence[Cron | Interval | RRule] = (),
                 parameters: dict[str, Any] | None = None, tags: Sequence[str] = (),
                 **policies: Any) -> None:
        if not isinstance(flow, Flow):
            raise InvalidInput(f"Deployment {name!r}: {flow!r} is not a @flow")
        self.flow = flow
        self.name = name
        self.schedules = list(schedules)
        self.parameters = dict(parameters or {})
        self.tags = list(tags)
        self.policies = {"retries": flow.retries, "retry_delay": flow.retry_delay,
                         "timeout": flow.timeout, "description": flow.description, **policies}

    @property
    def full_name(self) -> str:
        return f"{self.flow.name}/{self.name}"

    def __repr__(self) -> str:
        return f"Deployment({self.full_name!r})"

    def to_spec(self, *, entrypoint: str, bundle: str | None = None, path: str | None = None
                ) -> DeploymentSpec:
        """The wire form, with parameters checked against the flow's signature.

        Raises InvalidInput with one line naming the deployment and the problem.
        """
        try:
            parameters = self._checked_parameters()
            return DeploymentSpec(
                flow=self.flow.name, name=self.name, entrypoint=entrypoint, bundle=bundle,
                path=path, parameters=parameters,
                parameter_schema=self.flow.parameter_schema(), tags=self.tags,
                schedules=self.schedules, **self.policies,
            )
        except InvalidInput as exc:
            raise InvalidInput(f"deployment {self.full_name}: {exc.message}") from exc
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            raise InvalidInput(f"deployment {self.full_name}: {where}: {message}") from exc

    def _checked_parameters(self) -> dict[str, Any]:
        """The deployment's parameters as the flow will receive them (coerced, JSON-ready)."""
        for schedule in self.schedules:
            self.flow.validate_parameters({**self.parameters, **schedule.parameters})
        coerced = self.flow.validate_parameters(self.parameters, complete=False)
        return dict(TypeAdapter(dict[str, Any]).dump_python(coerced, mode="json"))
