"""Wire schemas of notifications (DESIGN.md §8): webhook rules, their deliveries, and the
document a webhook receives.

A rule watches the states a run *ends* in, and runs that stay late; the states in between
(PENDING, RUNNING, CANCELLING) pass too quickly to be worth a message, and SKIPPED runs never
ran. A receiver gets each document at least once: the document's `id` is the same on every
retry, so a receiver that must not act twice drops the ids it has seen.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal
from urllib.parse import urlsplit
from uuid import UUID

from pydantic import AfterValidator, BaseModel, BeforeValidator, Field, model_validator

from ostinato.deploy.schemas import DeploymentName, FlowRun, Strict, Tag
from ostinato.deploy.states import StateType

WATCHED_STATES = (StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED)
MAX_URL_LENGTH = 2048
Event = Literal["state", "late"]
DeliveryStatus = Literal["pending", "delivered", "failed"]


def _watched_state(value: object) -> object:
    """A state a rule may watch, in any case; anything else is refused naming the choices."""
    name = str(value).upper()
    if name in WATCHED_STATES:
        return name
    choices = ", ".join(WATCHED_STATES)
    if name in StateType.__members__:
        raise ValueError(f"{name} cannot be watched (runs pass through it); choose among "
                         f"{choices}, or watch late runs with late_after")
    raise ValueError(f"unknown state {value!r}; choose among {choices}")


def _webhook_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or url != url.strip():
        raise ValueError(f"must be an http:// or https:// URL, not {url!r}")
    return url


WatchedState = Annotated[StateType, BeforeValidator(_watched_state)]
WebhookUrl = Annotated[str, Field(max_length=MAX_URL_LENGTH), AfterValidator(_webhook_url)]


class NotificationSpec(Strict):
    """What `notification create` sends. `late_after` is in seconds: how long a run has shown
    as Late (DESIGN.md §2) before the rule posts about it."""

    states: Annotated[list[WatchedState], Field(max_length=len(WATCHED_STATES))] = []
    late_after: Annotated[float, Field(gt=0, le=366 * 86400)] | None = None
    deployment: DeploymentName | None = None
    tag: Tag | None = None
    webhook: WebhookUrl

    @model_validator(mode="after")
    def _check(self) -> NotificationSpec:
        if self.deployment is not None and self.tag is not None:
            raise ValueError("a notification watches one deployment or one tag, not both")
        if not self.states and self.late_after is None:
            raise ValueError("a notification needs states to watch or late_after (or both)")
        self.states = sorted(set(self.states), key=WATCHED_STATES.index)
        return self


class DeliveryCounts(BaseModel):
    pending: int = 0
    delivered: int = 0
    failed: int = 0


class Notification(BaseModel):
    id: UUID
    states: list[StateType]
    late_after: float | None
    deployment: str | None  # None with tag None: runs of every deployment
    tag: str | None
    webhook: str
    created: datetime
    deliveries: DeliveryCounts


class NotificationDelivery(BaseModel):
    """One document for one run, and how sending it went; `next_attempt_at` is set while it
    is pending."""

    id: UUID
    notification_id: UUID
    flow_run_id: UUID
    event: Event
    state: StateType
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None
    created: datetime


class NotificationDocument(BaseModel):
    """The JSON body a webhook receives. `timestamp` is when the event happened: the run's
    end, or the moment it had been late for the rule's `late_after`."""

    id: UUID  # the delivery's: the same on every retry
    event: Event
    notification: UUID
    state: StateType
    state_name: str
    timestamp: datetime
    text: str  # one line for people (chat webhooks show it)
    flow_run: FlowRun
