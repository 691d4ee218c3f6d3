"""`ostinato server …`: the server process (REST API, UI, metrics, scheduler loops)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ostinato.cli import output

if TYPE_CHECKING:
    from ostinato.deploy.settings import Settings

app = output.new_app("Run the Ostinato server (API and scheduler).")

Host = Annotated[str | None, typer.Option(
    metavar="HOST", help="Interface to listen on (default: OSTINATO_HOST, else 127.0.0.1).",
    show_default=False)]


def listening_settings(host: str | None, port: int | None, **flags: Any) -> Settings:
    """Settings with the host, port and other flags that were given over the configured ones."""
    given = {"host": host, "port": port, **flags}
    return output.load_settings(**{k: v for k, v in given.items() if v is not None})


@app.command()
def start(
    host: Host = None,
    port: Annotated[int | None, typer.Option(
        min=0, max=65535, metavar="PORT", show_default=False,
        help="Port to listen on (default: OSTINATO_PORT, else 4200).")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(
        metavar="FILE", show_default=False,
        help="Serve HTTPS with this certificate chain, PEM (default: OSTINATO_SSL_CERTFILE).")
    ] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(
        metavar="FILE", show_default=False,
        help="The certificate's private key, PEM, unencrypted (default: OSTINATO_SSL_KEYFILE).")
    ] = None,
) -> None:
    """Serve the REST API under /api (docs at /api/docs) until Ctrl-C or SIGTERM.

    The database is OSTINATO_DATABASE_URL, or SQLite at $OSTINATO_HOME/ostinato.db; its schema
    is upgraded at start-up. With a certificate and its key it serves HTTPS only.
    """
    from ostinato.scheduler.server import ApiServer

    settings = listening_settings(host, port, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    output.log_to_stderr(settings.log_level)
    server = ApiServer(settings)
    output.on_stop_signals(server.stop)
    server.start()
    server.join()
