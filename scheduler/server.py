"""Running the server: uvicorn serving the app, on a thread the command line stops.

uvicorn runs off the main thread so the command line keeps the signals (uvicorn installs its
handlers only on the main thread, and re-raises the signal once it has stopped) and decides what
stops first: `ostinato up` stops its agent before the server.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from ostinato.deploy.errors import OstinatoError
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
        self.app = create_app(settings)
        super().__init__(uvicorn.Config(
            self.app, host=settings.host, port=settings.port, log_level=settings.log_level,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS, access_log=False,
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
