"""Run states (DESIGN.md §2): the one enum every side shares."""

from __future__ import annotations

from enum import StrEnum


class StateType(StrEnum):
    SCHEDULED = "SCHEDULED"
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CRASHED = "CRASHED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def display_name(self) -> str:
        return self.value.capitalize()


TERMINAL_STATES = frozenset(
    {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED,
     StateType.SKIPPED}
)
# States in which a run holds a claim: it counts against limits and its lease must be renewed.
CLAIMED_STATES = frozenset({StateType.PENDING, StateType.RUNNING, StateType.CANCELLING})

LATE_NAME = "Late"


class Reason(StrEnum):
    """Machine-readable reasons carried by terminal (and some other) states."""

    EXCEPTION = "exception"
    EXIT_CODE = "exit_code"
    SIGNAL = "signal"
    LEASE_EXPIRED = "lease_expired"
    TIMEOUT = "timeout"
    CANCELLED_BY_USER = "cancelled_by_user"
    OVERLAP_SKIP = "overlap_skip"
    OVERLAP_CANCEL = "overlap_cancel"  # cancel_other: stopped for a newer run, with grace
    OVERLAP_TERMINATE = "overlap_terminate"  # terminate_other: killed at once for a newer run
    CATCHUP_MISSED = "catchup_missed"
    SUPERSEDED = "superseded"
    PAUSED = "paused"
    DEPLOYMENT_DELETED = "deployment_deleted"
    SUCCESS = "success"
