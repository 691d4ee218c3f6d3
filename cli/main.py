"""`ostinato`: the command line, one Typer per noun (DESIGN.md §9).

Exit codes: 0 success; 1 a user error, reported as one `error: …` line on stderr with no
traceback; 2 a usage error (typer's own message). Every module here imports only typer at the
top and loads the rest inside the command that needs it, so `ostinato --help` and listings start
fast; SQLAlchemy, FastAPI and uvicorn are loaded only by `server start`, `up` and `db upgrade`.
"""

from __future__ import annotations

import sys

from ostinato.cli import (
    agents,
    concurrency_limits,
    db,
    deployments,
    flow_runs,
    notifications,
    output,
    scheduler,
    server,
    tokens,
    up,
    work_queues,
)

app = output.new_app(
    "Ostinato: deployments of Python flows, run on schedule through work queues by agents. "
    "Commands talk to the server at OSTINATO_API_URL (default http://127.0.0.1:4200/api)."
)
app.command()(up.up)
app.add_typer(server.app, name="server")
app.add_typer(scheduler.app, name="scheduler")
app.add_typer(deployments.app, name="deployment")
app.add_typer(work_queues.app, name="work-queue")
app.add_typer(agents.app, name="agent")
app.add_typer(flow_runs.app, name="flow-run")
app.add_typer(concurrency_limits.app, name="concurrency-limit")
app.add_typer(notifications.app, name="notification")
app.add_typer(tokens.app, name="token")
app.add_typer(db.app, name="db")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI with `argv` (default: sys.argv[1:]); always ends with SystemExit."""
    from ostinato.deploy.errors import OstinatoError

    try:
        app(args=argv, prog_name="ostinato", standalone_mode=True)
    except OstinatoError as exc:
        output.print_error(exc.message)
        sys.exit(1)


if __name__ == "__main__":
    main()
