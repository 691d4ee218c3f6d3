"""Running the server: uvicorn serving the app, on a thread the command line stops.

uvicorn runs off the main thread so the command line keeps the signals (uvicorn installs its
handlers only on the main thread, and re-raises the signal once it has stopped) and decides what
stops first: `ostinato up` stops its agent before the server.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from pathlib import Path

import uvicorn

from ostinato.deploy.errors import InvalidInput, OstinatoError
from ostinato.deploy.settings import Settings
from ostinato.queues.notify import WorkNotifier
from ostinato.scheduler.app import create_app

GRACEFUL_SHUTDOWN_SECONDS = 10  # requests still running after this are cancelled


class ApiServer(uvicorn.Server):
    """The app served by uvicorn on the configured host and port.

    At shutdown the waiting long polls answer at once (with what they have, usually nothing):
    otherwise each would hold the shutdown up until its wait ends, up to a minute.
    """

    def __init__(self, settings: Settings) -> None:
        certfile, keyfile = tls_files(settings)
        self.app = create_app(settings)
        super().__init__(uvicorn.Config(
            self.app, host=settings.host, port=settings.port, log_level=settings.log_level,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, access_log=False,
            ssl_certfile=certfile, ssl_keyfile=keyfile,
        ))
        self._thread = threading.Thread(target=self.run, name="ostinato-api")

    def start(self) -> None:
        """Serve on a thread of its own; return once it accepts connections."""
        self._thread.start()
        while not self.started:
            if not self._thread.is_alive():
                raise OstinatoError("the server did not start (the reason is logged above)")
            time.sleep(0.02)

    def stop(self) -> None:
        """Ask it to finish: stop accepting, answer what is open, close (from any thread)."""
        self.should_exit = True

    def join(self) -> None:
        """Wait until it has finished."""
        self._thread.join()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        notifier: WorkNotifier | None = getattr(self.app.state, "notifier", None)
        if notifier is not None:  # None until the app has started: nobody is waiting yet
            notifier.close()
        await super().shutdown(sockets)


def tls_files(settings: Settings) -> tuple[str, str] | tuple[None, None]:
    """The certificate and key files uvicorn serves HTTPS with (None: plain HTTP), checked here:
    uvicorn loads them only on its own thread, where a bad file ends in a traceback instead of
    one line saying which file."""
    cert, key = settings.ssl_certfile, settings.ssl_keyfile
    if cert is None and key is None:
        return None, None
    if cert is None or key is None:
        given, missing = ("certfile", "keyfile") if key is None else ("keyfile", "certfile")
        raise InvalidInput(f"TLS needs both a certificate and its key: {_option(given)} is set "
                           f"but not {_option(missing)}")
    _check_readable("certfile", cert)
    _check_readable("keyfile", key)
    try:  # an encrypted key would make OpenSSL prompt for its password: fail instead
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            cert, key, password=lambda: b"")
    except ssl.SSLError as exc:
        raise InvalidInput(f"cannot use --ssl-certfile {cert} with --ssl-keyfile {key}: "
                           f"{exc.reason or exc} (both PEM, an unencrypted key matching the "
                           "certificate)") from None
    return str(cert), str(key)


def _check_readable(name: str, path: Path) -> None:
    try:
        path.open("rb").close()
    except OSError as exc:
        raise InvalidInput(f"cannot read {_option(name)} {path}: {exc.strerror}") from None


def _option(name: str) -> str:
    return f"--ssl-{name} (OSTINATO_SSL_{name.upper()})"
