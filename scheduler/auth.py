"""Who is calling, and may they (DESIGN.md §8)?

Every route of the app passes `authorize`, an app-wide dependency, unless marked `Public` (the
health probe). The rule is safe by default: reading (GET) needs a `read` or `admin` key,
anything else an `admin` key. A route that agents call says so by depending on `agent_caller`
(or `AgentsAllowed`); an `agent` key may call those routes only, and the route checks that what
it touches is in the key's queues. `AdminOnly` keeps a read route (the key list, webhook rules)
from `read` keys. The OpenAPI document and its page are not routes of ours: they need no key.

A server with no key configured — none in the database and no `OSTINATO_ADMIN_KEY` — serves
clients on its own host only, as admins, and refuses everyone else.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Request
from fastapi.routing import APIRoute

from ostinato.deploy.errors import Forbidden, TooManyRequests, Unauthorized
from ostinato.deploy.schemas import Scope
from ostinato.deploy.settings import Settings
from ostinato.queues.api_keys import any_active_key, verify_key
from ostinato.queues.database import Database

log = logging.getLogger(__name__)
READ_METHODS = frozenset({"GET", "HEAD"})
NEEDS_A_KEY = ("this server needs an API key: set OSTINATO_API_KEY "
               "(an admin makes one with `ostinato token create`)")
LOOPBACK_ONLY = ("this server has no API keys yet and serves only clients on its own host; "
                 "there, run `ostinato token create --scope admin` and set OSTINATO_API_KEY")


@dataclass(frozen=True)
class Caller:
    scope: Scope
    queues: frozenset[str] = frozenset()
    key_id: str | None = None  # None: a loopback client of a keyless server, or the admin key

    @property
    def limited_to_queues(self) -> bool:
        return self.scope is Scope.AGENT

    def require_queues(self, queues: Iterable[str | None]) -> None:
        """Refuse an agent key anything outside its queues (None: a run no queue claimed)."""
        if not self.limited_to_queues:
            return
        outside = sorted(str(queue) for queue in set(queues) - self.queues)
        if outside:
            raise Forbidden(f"this agent key is not for the work queue(s) {', '.join(outside)}")


LOCAL_ADMIN = Caller(Scope.ADMIN)


@dataclass
class FailedAuthentications:
    """Addresses that sent `limit` bad keys within `window` seconds are refused until the
    oldest of those failures is `window` old: guessing keys is slow, and costs no queries."""

    limit: int = 20
    window: float = 60.0
    max_addresses: int = 10_000
    _failures: dict[str, deque[float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, address: str) -> None:
        with self._lock:
            failures = self._failures.get(address)
            if failures is None or len(failures) < self.limit:
                return
            wait = failures[0] + self.window - time.monotonic()
        if wait > 0:
            raise TooManyRequests(f"too many failed authentications from {address}; "
                                  f"retry in {wait:.0f} s")

    def record(self, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) >= self.max_addresses:
                self._forget_before(now - self.window)
            failures = self._failures.setdefault(address, deque(maxlen=self.limit))
            failures.append(now)

    def _forget_before(self, moment: float) -> None:
        stale = [a for a, times in self._failures.items() if times[-1] < moment]
        for address in stale or list(self._failures)[: self.max_addresses // 2]:
            del self._failures[address]


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def keys_configured(database: Database, settings: Settings) -> bool:
    if settings.admin_key is not None:
        return True
    with database.read() as conn:
        return any_active_key(conn, datetime.now(UTC))


KEY_COOKIE = "ostinato_key"  # the web UI's key: HTTP-only, same-site (see scheduler.ui.pages)


def _presented_key(request: Request) -> str | None:
    """The bearer token, else the UI's cookie: a browser sends the cookie only with requests
    from the UI's own pages (SameSite=Strict), so other sites cannot act with it."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.cookies.get(KEY_COOKIE) or None


def _authenticate(request: Request) -> Caller:
    key = _presented_key(request)
    if key is not None:
        return authenticate_key(request, key)
    if keys_configured(request.app.state.database, request.app.state.settings):
        raise Unauthorized(NEEDS_A_KEY)
    if not is_loopback(_address(request)):
        raise Unauthorized(LOOPBACK_ONLY)
    return LOCAL_ADMIN


def _address(request: Request) -> str:
    return request.client.host if request.client else ""


def authenticate_key(request: Request, key: str) -> Caller:
    """The caller a key stands for; Unauthorized (counted against the address) if none."""
    settings: Settings = request.app.state.settings
    failures: FailedAuthentications = request.app.state.failed_authentications
    address = _address(request)
    failures.check(address)
    admin_key = settings.admin_key
    if admin_key is not None and hmac.compare_digest(key, admin_key.get_secret_value()):
        return LOCAL_ADMIN
    database: Database = request.app.state.database
    with database.read() as conn:
        row = verify_key(conn, key, datetime.now(UTC))
    if row is None:
        failures.record(address)
        log.warning("refused an unknown, expired or revoked API key from %s", address)
        raise Unauthorized("the API key is unknown, expired or revoked")
    return Caller(Scope(row.scope), frozenset(row.queues), row.id)


def agent_caller(request: Request) -> Caller:
    """The caller of a route agents may use (declaring this dependency is what allows them)."""
    caller: Caller = request.state.caller
    return caller


def admin_only() -> None:
    """Marks a read route that `read` keys may not use (the list of keys)."""


def public() -> None:
    """Marks a route anyone may call, without a key (the health probe)."""


AgentCaller = Annotated[Caller, Depends(agent_caller)]
AgentsAllowed = Depends(agent_caller)
AdminOnly = Depends(admin_only)
Public = Depends(public)


def _route_marks(request: Request) -> set[object]:
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return set()
    return {dependency.call for dependency in route.dependant.dependencies}


def authorize(request: Request) -> None:
    """Authenticate the caller and check its scope against the route (see the module doc)."""
    marks = _route_marks(request)
    if public in marks:
        return
    caller = _authenticate(request)
    request.state.caller = caller
    if caller.scope is Scope.ADMIN:
        return
    if caller.scope is Scope.AGENT and agent_caller in marks:
        return
    if caller.scope is Scope.READ and request.method in READ_METHODS and admin_only not in marks:
        return
    raise Forbidden(f"a {caller.scope} key may not {request.method} {request.url.path}")


def announce(database: Database, settings: Settings) -> None:
    """Say at start-up who the server will serve."""
    if keys_configured(database, settings):
        log.info("API keys are required of every client")
    elif is_loopback(settings.host):
        log.warning("no API keys: serving clients on this host only (make one with "
                    "`ostinato token create --scope admin`)")
    else:
        log.warning("no API keys: listening on %s but refusing every client not on this host "
                    "until an admin key exists (`ostinato token create --scope admin` here)",
                    settings.host)


Authorized = Depends(authorize)
