"""Every error Ostinato raises on purpose, in one place.

Each class refines a builtin and carries its HTTP status, so the server maps it to a response in
exactly one place and the client turns a response back into the same class. The message is the
one line a user sees: say what is wrong and, where it helps, what to do.
"""

from __future__ import annotations


class OstinatoError(Exception):
    """Base of all deliberate errors; `status_code` is the HTTP status it travels as."""

    status_code = 400

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else type(self).__name__


class NotFound(OstinatoError, LookupError):
    """A named or identified object does not exist."""

    status_code = 404


class Conflict(OstinatoError):
    """The request is well formed but clashes with the current state."""

    status_code = 409


class StaleFencingToken(Conflict):
    """A report came from a holder that lost its claim; it changes nothing."""


class InvalidInput(OstinatoError, ValueError):
    """Bad input: a schedule, a parameter, a name, a file. Nothing was changed."""

    status_code = 422


class PayloadTooLarge(InvalidInput):
    """A body, bundle or batch is over its size cap."""

    status_code = 413


class Unauthorized(OstinatoError, PermissionError):
    """Missing, unknown, expired or out-of-scope credentials."""

    status_code = 401


class Forbidden(OstinatoError, PermissionError):
    """Valid credentials that do not allow this request (its scope or queues)."""

    status_code = 403


class TooManyRequests(OstinatoError):
    """Too many failed authentications from one address: refused for a while."""

    status_code = 429


class ServerUnreachable(OstinatoError, ConnectionError):
    """The API could not be reached at all (refused, timed out, DNS)."""

    status_code = 503


class ServerError(OstinatoError):
    """The server failed to answer (5xx): nothing says the request was wrong, so it may be
    sent again."""

    status_code = 500


TRANSIENT_ERRORS = (ServerUnreachable, ServerError)  # worth retrying as they are


_BY_STATUS: dict[int, type[OstinatoError]] = {
    cls.status_code: cls
    for cls in (NotFound, Conflict, InvalidInput, PayloadTooLarge, Unauthorized, Forbidden,
                TooManyRequests)
}


def error_for_status(status_code: int, message: str) -> OstinatoError:
    """The error class a response of this status stands for (used by the HTTP client)."""
    if status_code >= 500:
        return ServerError(message)
    return _BY_STATUS.get(status_code, OstinatoError)(message)
