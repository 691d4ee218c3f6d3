"""`ostinato scheduler start`: the scheduling loops alone, without the API."""

from __future__ import annotations

from typing import Annotated

import typer

from ostinato.cli import output

app = output.new_app("Run the scheduling loops on their own (the server also runs them).")


@app.command()
def start(
    interval: Annotated[float | None, typer.Option(
        min=0.05, metavar="SECONDS", show_default=False,
        help="Seconds between passes (default: OSTINATO_SCHEDULER_INTERVAL_SECONDS, else 2).",
    )] = None,
    once: Annotated[bool, typer.Option(
        "--once", help="Make one pass of every loop, print what each did, exit.",
    )] = False,
) -> None:
    """Turn schedules into runs until Ctrl-C or SIGTERM.

    Any number of schedulers — and servers — may run against one database: a run's identity is
    unique, so none is ever created twice. Uses OSTINATO_DATABASE_URL (or SQLite in
    OSTINATO_HOME) and upgrades its schema first.
    """
    given = {"scheduler_interval_seconds": interval}
    settings = output.load_settings(**{k: v for k, v in given.items() if v is not None})
    import signal

    from ostinato.queues.database import connect
    from ostinato.queues.migrate import upgrade
    from ostinato.queues.retention import Retention
    from ostinato.scheduler.loops import SchedulerLoops
    from ostinato.scheduler.webhooks import WebhookPolicy

    database = connect(settings.effective_database_url)
    upgrade(database)
    webhooks = WebhookPolicy.from_settings(settings)
    retention = Retention.from_settings(settings)
    if once:
        for line in SchedulerLoops(database, webhooks=webhooks, retention=retention).run_once():
            print(line)
        return
    loops = SchedulerLoops(database, interval=settings.scheduler_interval_seconds,
                           webhooks=webhooks, retention=retention)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: loops.stop())
    loops.start()
    output.note("scheduler running; Ctrl-C to stop")
    while not loops.wait(timeout=1):
        pass
    database.dispose()
