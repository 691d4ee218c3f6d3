"""The HTTP client every Ostinato command (and agent) uses to talk to the server.

Thin on purpose: it knows the base URL, the API key, the CAs an https:// server's certificate
must chain to, and how to turn an error response, an unreachable server or an untrusted
certificate into the matching OstinatoError with a one-line message. The transport is
injectable, so tests can run it against the ASGI app in-process as well as over real sockets.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx

from ostinato.deploy.errors import InvalidInput, NotFound, ServerUnreachable, error_for_status


class Client:
    def __init__(self, api_url: str | None = None, api_key: str | None = None, *,
                 ca_bundle: Path | None = None, transport: httpx.BaseTransport | None = None,
                 timeout: float = 30.0) -> None:
        if api_url is None or api_key is None:
            from ostinato.deploy.settings import Settings  # pydantic-settings only when needed

            settings = Settings()
            api_url = api_url or settings.api_url
            api_key = api_key or settings.api_key
            ca_bundle = ca_bundle or settings.ca_bundle
        self.api_url = api_url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=self.api_url, headers=headers, timeout=timeout,
                                  transport=transport, verify=_verify(self.api_url, ca_bundle))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; errors come back as OstinatoError subclasses, never as httpx ones."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.status_code >= 400:
            raise error_for_status(response.status_code, _detail(response))
        return response

    def _unreachable(self, exc: httpx.TransportError) -> ServerUnreachable:
        """Transient, so agents retry: a certificate may be fixed on either side meanwhile."""
        untrusted = _certificate_failure(exc)
        if untrusted:
            return ServerUnreachable(
                f"the server's certificate at {self.api_url} failed verification ({untrusted}); "
                "if a private CA signed it, set OSTINATO_CA_BUNDLE to that CA's certificate "
                "(a PEM file)")
        return ServerUnreachable(
            f"cannot reach the Ostinato server at {self.api_url} ({_reason(exc)}); "
            "is it running? (ostinato server start, or set OSTINATO_API_URL)")

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None and v != []}
        return self.request("GET", path, params=clean).json()

    def post(self, path: str, body: Any = None, *, timeout: float | None = None) -> Any:
        """POST `body` as JSON; `timeout` overrides the client's (a long poll needs more)."""
        extra = {} if timeout is None else {"timeout": timeout}
        return _json(self.request("POST", path, json=body, **extra))

    def put(self, path: str, body: Any = None) -> Any:
        return _json(self.request("PUT", path, json=body))

    def patch(self, path: str, body: Any) -> Any:
        return _json(self.request("PATCH", path, json=body))

    def delete(self, path: str) -> None:
        self.request("DELETE", path)

    def has_bundle(self, sha256: str) -> bool:
        try:
            self.request("GET", f"/bundles/{sha256}/info")
        except NotFound:
            return False
        return True

    def upload_bundle(self, sha256: str, data: bytes) -> None:
        self.request("PUT", f"/bundles/{sha256}", content=data,
                     headers={"Content-Type": "application/octet-stream"})

    def download_bundle(self, sha256: str) -> bytes:
        """The stored bytes of a bundle, unverified: the caller checks them against `sha256`."""
        return self.request("GET", f"/bundles/{sha256}").content


def _verify(api_url: str, ca_bundle: Path | None) -> ssl.SSLContext | bool:
    """httpx's `verify`: nothing to check over plain HTTP (loading the CA certificates costs
    ~50 ms a client), else the server's certificate against `ca_bundle` or the default CAs."""
    if not api_url.startswith("https://"):
        return False
    if ca_bundle is None:
        return True
    try:
        return ssl.create_default_context(cafile=ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInput(f"cannot load the CA bundle {ca_bundle} (OSTINATO_CA_BUNDLE): "
                           f"{exc.strerror or exc}") from None


def _certificate_failure(exc: BaseException) -> str | None:
    """Why the server's certificate was refused, if that is what `exc` comes from."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return str(cause.verify_message or cause)
        cause = cause.__cause__ or cause.__context__
    return None


def _json(response: httpx.Response) -> Any:
    return response.json() if response.content else None


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    text = detail if isinstance(detail, str) else response.text or response.reason_phrase
    return text.splitlines()[0] if text else f"HTTP {response.status_code}"


def _reason(exc: httpx.TransportError) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]
