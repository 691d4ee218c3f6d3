"""`Deployment` and its schedules: what a flow file declares at module level.

Every run of a flow imports its file again in a fresh process and never reads what is declared
here, so declaring costs nothing: schedules and deployments are checked only when `deployment
create` registers them (`Deployment.to_spec`). Until then neither croniter and dateutil nor the
pydantic models of ostinato.deploy.schedules and ostinato.deploy.schemas are imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import TypeAdapter, ValidationError

from ostinato.deploy.errors import InvalidInput
from ostinato.deploy.flows import Flow

if TYPE_CHECKING:
    from ostinato.deploy.schedules import Schedule
    from ostinato.deploy.schemas import DeploymentSpec


class DeclaredSchedule:
    """A schedule's arguments as given, built into an ostinato.deploy.schedules model on demand.

    The first positional argument sets the kind's defining field; the keywords are the other
    fields of that model (`timezone`, `slug`, `start`, `end`, `parameters`, ...).
    """

    kind: ClassVar[str]
    definition: ClassVar[str]

    def __init__(self, value: Any = None, /, **fields: Any) -> None:
        self.fields = fields if value is None else {self.definition: value, **fields}

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.fields.items())
        return f"{type(self).__name__}({arguments})"

    def build(self) -> Schedule:
        """The checked schedule; InvalidInput with one line if it is not valid."""
        from ostinato.deploy.schedules import parse_schedule

        return parse_schedule({**self.fields, "kind": self.kind})


class Cron(DeclaredSchedule):
    """`Cron("0 2 * * *", timezone="Europe/Paris")`: see ostinato.deploy.schedules.Cron."""

    kind = definition = "cron"


class Interval(DeclaredSchedule):
    """`Interval(3600)` or `Interval(timedelta(days=1))`: see ostinato.deploy.schedules.Interval."""

    kind, definition = "interval", "every"


class RRule(DeclaredSchedule):
    """`RRule("FREQ=WEEKLY;BYDAY=MO")`: see ostinato.deploy.schedules.RRule."""

    kind = definition = "rrule"


class Deployment:
    """A named registration of one flow with schedules, parameters, tags and policies.

    Policies left out come from the flow (`retries`, `retry_delay`, `timeout`) or from the
    defaults of DESIGN.md (`overlap="allow"`, `catchup="latest"`). Schedules may be declared
    (`Cron(...)`) or already built (the flags of `deployment create`).
    """

    def __init__(self, flow: Flow[..., Any], name: str, *,
                 schedules: Sequence[DeclaredSchedule | Schedule] = (),
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
        """The wire form, schedules checked and parameters checked against the flow's signature.

        Raises InvalidInput with one line naming the deployment and the problem.
        """
        from ostinato.deploy.schemas import DeploymentSpec

        try:
            schedules = [s.build() if isinstance(s, DeclaredSchedule) else s
                         for s in self.schedules]
            return DeploymentSpec(
                flow=self.flow.name, name=self.name, entrypoint=entrypoint, bundle=bundle,
                path=path, parameters=self._checked_parameters(schedules),
                parameter_schema=self.flow.parameter_schema(), tags=self.tags,
                schedules=schedules, **self.policies,
            )
        except InvalidInput as exc:
            raise InvalidInput(f"deployment {self.full_name}: {exc.message}") from exc
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(part) for part in error["loc"])
            message = str(error["msg"]).removeprefix("Value error, ")
            raise InvalidInput(f"deployment {self.full_name}: {where}: {message}") from exc

    def _checked_parameters(self, schedules: list[Schedule]) -> dict[str, Any]:
        """The deployment's parameters as the flow will receive them (coerced, JSON-ready)."""
        for schedule in schedules:
            self.flow.validate_parameters({**self.parameters, **schedule.parameters})
        coerced = self.flow.validate_parameters(self.parameters, complete=False)
        return dict(TypeAdapter(dict[str, Any]).dump_python(coerced, mode="json"))
