"""What every command shares: settings and the client, option parsers, tables, `--json`, errors.

Conventions (DESIGN.md §9): stdout carries the result — a rich table for people, or with `--json`
exactly the API's JSON for scripts; stderr carries `error: <one line>` and, only when it is a
terminal, progress notes. Times in tables are UTC, `YYYY-MM-DD HH:MM:SS`.

Only typer is imported at module level: rich, httpx and pydantic load inside the functions that
need them, so `ostinato --help` stays fast.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from ostinato.deploy.client import Client
    from ostinato.deploy.settings import Settings

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], str]]
"""A table column: its header and how to get the cell's text from one API object."""

JsonFlag = Annotated[
    bool, typer.Option("--json", help="Print the API's JSON (for scripts) instead of a table.")
]
Limit = Annotated[int | None, typer.Option(
    min=1, max=1000, metavar="N", show_default=False,
    help="At most this many (server default 100).")]
Offset = Annotated[int | None, typer.Option(
    min=0, metavar="N", show_default=False, help="Skip this many first.")]


def new_app(help_text: str) -> typer.Typer:
    """A noun's Typer. Help and usage errors are plain click text: rich help costs ~0.1 s."""
    return typer.Typer(help=help_text, no_args_is_help=True, rich_markup_mode=None,
                       pretty_exceptions_enable=False, add_completion=False,
                       context_settings={"help_option_names": ["-h", "--help"]})


# --- settings and the client ---------------------------------------------------------------------


def load_settings(**overrides: Any) -> Settings:
    """Settings from flags (`overrides`), then OSTINATO_* variables; a bad value is one line."""
    from pydantic import ValidationError

    from ostinato.deploy.errors import InvalidInput
    from ostinato.deploy.settings import Settings

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise InvalidInput(f"invalid setting {field!r} (flag or OSTINATO_{field.upper()}): "
                           f"{error['msg']}") from None


def client() -> Client:
    """The API client for OSTINATO_API_URL (with OSTINATO_API_KEY and OSTINATO_CA_BUNDLE); use
    it as a context manager."""
    settings = load_settings()
    with _hidden(_UNUSED_EXTRAS):
        from ostinato.deploy.client import Client

        # "" means no key; None would make Client read the settings a second time.
        return Client(settings.api_url, settings.api_key or "", ca_bundle=settings.ca_bundle)


_UNUSED_EXTRAS = ("click", "trio")
"""Optional packages httpx and httpcore import eagerly when installed, for features the CLI does
not use: click (with rich and pygments) for httpx's own command line, trio for async clients
under trio. Loading them costs ~0.1 s of every command's start-up."""


@contextmanager
def _hidden(names: Sequence[str]) -> Iterator[None]:
    """While httpx and httpcore first load, `import NAME` fails for these names.

    They are hidden only for that moment (an import already done is left alone), so a flow file
    that `deployment create` imports may still use them.
    """
    hide = [name for name in names if name not in sys.modules]
    if "httpcore" in sys.modules:
        hide = []
    for name in hide:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises ImportError
    try:
        yield
    finally:
        for name in hide:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


def request(method: str, path: str, *, done: str) -> None:
    """Send one request whose answer is not shown (pause, delete…), then print `done`."""
    with client() as api:
        api.request(method, path)
    print(done)


# --- option values -------------------------------------------------------------------------------

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def log_to_stderr(level: str) -> None:
    """Log records of long-running commands (agents) with their time and level, so an outage
    can be read back from the log."""
    import logging

    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # a line per loop pass is noise
    # httpx logs every request's URL at INFO: noise for agents, and a webhook's URL is often
    # its secret (Slack and the like put the token in the path).
    logging.getLogger("httpx").setLevel(logging.WARNING)


def on_stop_signals(stop: Callable[[], None]) -> None:
    """Ctrl-C (SIGINT) and SIGTERM call `stop`, which ends the command gracefully (exit 0)."""
    import signal

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop())


def parse_duration(text: str) -> float:
    """Seconds in `90`, `30s`, `10m`, `2h`, `1d` or `1h30m` (typer parser: bad text is exit 2)."""
    compact = text.strip().lower()
    if _NUMBER.fullmatch(compact):
        return float(compact)
    if compact and _DURATION_PART.sub("", compact) == "":
        return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(compact))
    raise typer.BadParameter(f"{text!r} is not a duration such as 90, 30s, 10m, 2h or 1h30m")


def parse_time(text: str) -> datetime:
    """An ISO 8601 time; without an offset it is taken as UTC (typer parser: bad is exit 2)."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is not an ISO 8601 time such as 2030-01-31T02:00 or 2030-01-31T02:00+01:00"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def usage_error(option: str, message: str) -> typer.BadParameter:
    """A usage error (exit 2) about `option`, for combinations a single parser cannot see."""
    return typer.BadParameter(message, param_hint=f"'{option}'")


# --- printing ------------------------------------------------------------------------------------


def print_json(data: Any) -> None:
    """The API's JSON as it came, indented."""
    import json

    print(json.dumps(data, indent=2))


def print_error(message: str) -> None:
    """`error: <message>` on stderr, always on one line."""
    print("error: " + " ".join(message.splitlines()), file=sys.stderr)


def note(message: str) -> None:
    """A progress note on stderr, shown only when stderr is a terminal (quiet in scripts)."""
    console = _console(stderr=True)
    if console.is_terminal:
        console.print(message, style="dim", markup=False, highlight=False)


def print_listing(rows: Sequence[Row], columns: Sequence[Column], *, as_json: bool, empty: str
                  ) -> None:
    """A listing command's output: the API's JSON for scripts, else a table."""
    if as_json:
        print_json(rows)
    else:
        print_table(rows, columns, empty=empty)


def print_table(rows: Sequence[Row], columns: Sequence[Column], *, empty: str) -> None:
    """One row per API object; `empty` is printed instead of a table with no rows."""
    if not rows:
        print(empty)
        return
    table = _table(show_header=True)
    for index, (header, _) in enumerate(columns):
        table.add_column(header, overflow="fold", no_wrap=index == 0)  # the key stays whole
    for row in rows:
        table.add_row(*(_text(cell(row)) for _, cell in columns))
    _console().print(table)


def print_fields(pairs: Sequence[tuple[str, str]]) -> None:
    """`label  value` lines, for inspecting one object."""
    table = _table(show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for label, value in pairs:
        table.add_row(_text(label), _text(value))
    _console().print(table)


def heading(title: str) -> None:
    print()
    _console().print(title, style="bold underline", markup=False, highlight=False)


# --- cell formats --------------------------------------------------------------------------------


def utc(value: str | None) -> str:
    """An API time as compact UTC (`2030-01-31 02:00:00`); `-` for none."""
    if not value:
        return "-"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def listing(values: Sequence[Any] | None) -> str:
    return ", ".join(str(v) for v in values) if values else "-"


def compact_json(value: Any) -> str:
    import json

    return json.dumps(value, separators=(", ", ": ")) if value else "-"


def maybe(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


# --- rich, loaded on first use -------------------------------------------------------------------


def _console(*, stderr: bool = False) -> Console:
    """A terminal's width for people; unbounded lines (no wrapping) for pipes and files."""
    from rich.console import Console

    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal:
        console.width = 10_000
    return console


def _table(*, show_header: bool) -> Table:
    from rich import box
    from rich.table import Table

    return Table(box=box.SIMPLE_HEAD if show_header else None, show_header=show_header,
                 header_style="bold", pad_edge=False, show_edge=False)


def _text(value: str) -> Any:
    """Cell text taken literally (a tag like `[etl]` is not rich markup)."""
    from rich.text import Text

    return Text(value)
