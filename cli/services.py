"""`ostinato agent install-service`: the agent's systemd unit, installed and enabled on this host.

It installs `deploy/services/ostinato-agent@.service` as shipped, with two things made to fit
the host: `ExecStart=` runs the `ostinato` that is running this command (the template assumes
/opt/ostinato/bin/ostinato), and `EnvironmentFile=` names `--env-file`. The template passes the
instance name to the agent with `%i`, which systemd leaves as written (only `%I` unescapes), so a
work-queue name (letters, digits, `_`, `.`, `-`) is the instance name as it is.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from importlib.resources import files
from pathlib import Path
from typing import Annotated

import typer

from ostinato.cli import output

TEMPLATE = "ostinato-agent@.service"
TEMPLATE_SCRIPT = "/opt/ostinato/bin/ostinato"  # what the template's ExecStart= runs
TEMPLATE_ENV_FILE = Path("/etc/ostinato/ostinato.env")
HIDDEN_FROM_THE_UNIT = ("/home", "/root", "/run/user")  # the template has ProtectHome=yes


def install_service(
    queue: Annotated[list[str], typer.Option(
        "-q", "--queue", metavar="QUEUE", show_default=False,
        help="A work queue; each gets its own instance, ostinato-agent@QUEUE (repeatable).")],
    unit_dir: Annotated[Path, typer.Option(
        metavar="DIR", help="Where to write the unit.")] = Path("/etc/systemd/system"),
    env_file: Annotated[Path, typer.Option(
        metavar="FILE", help="The OSTINATO_* settings the agents read (an absolute path).")
    ] = TEMPLATE_ENV_FILE,
    enable: Annotated[bool, typer.Option(
        "--enable/--no-enable",
        help="Then run `systemctl daemon-reload` and `systemctl enable --now` each instance.")
    ] = True,
    print_unit: Annotated[bool, typer.Option(
        "--print", help="Print the unit it would write, and change nothing.")] = False,
) -> None:
    """Install the systemd unit for agents on this host, and enable and start one agent per
    queue (run as root).

    The unit runs the agents as user `ostinato`, with OSTINATO_HOME=/var/lib/ostinato and the
    settings in --env-file (start from deploy/services/ostinato.env.example); see
    docs/operations.md, "Running on VMs".
    """
    _check_queue_names(queue)
    if not env_file.is_absolute():
        raise output.usage_error("--env-file", "must be an absolute path (systemd needs one)")
    command = exec_command()
    unit = render_unit(command, env_file)
    if print_unit:
        print(unit, end="")
        return
    if enable:
        _check_can_enable(Path(command[0]), unit, env_file)
    path = _write(unit_dir / TEMPLATE, unit)
    print(f"installed {path}")
    if enable:
        _enable([instance(name) for name in queue], path)


def instance(queue: str) -> str:
    """The unit that runs an agent for `queue`."""
    return TEMPLATE.replace("@.", f"@{queue}.")


def exec_command() -> list[str]:
    """The `ostinato` running now, as the program and first arguments of `ExecStart=`: this
    script if it is one, else the script installed next to this interpreter, else
    `python -m ostinato.cli.main`."""
    script = Path(sys.argv[0])
    if script.name == "ostinato" and script.is_file():
        return [str(script.absolute())]
    found = shutil.which("ostinato", path=sysconfig.get_path("scripts"))
    return [str(Path(found).absolute())] if found else [sys.executable, "-m", "ostinato.cli.main"]


def render_unit(command: list[str], env_file: Path) -> str:
    """The template with `command` in `ExecStart=` and `env_file` (and `agent-%i.env` beside
    it) in `EnvironmentFile=`."""
    text = (files("ostinato.deploy") / "services" / TEMPLATE).read_text()
    words = " ".join(_exec_word(word) for word in command)
    text = text.replace(f"\nExecStart={TEMPLATE_SCRIPT} ", f"\nExecStart={words} ")
    text = text.replace(f"\nEnvironmentFile={TEMPLATE_ENV_FILE}\n",
                        f"\nEnvironmentFile={_unit_path(env_file)}\n")
    return text.replace(f"\nEnvironmentFile=-{TEMPLATE_ENV_FILE.parent}/agent-%i.env\n",
                        f"\nEnvironmentFile=-{_unit_path(env_file.parent / 'agent-')}%i.env\n")


def _unit_path(path: Path) -> str:
    """A path as a unit file's setting takes it: whole, spaces and all, `%` escaped."""
    return str(path).replace("%", "%%")


def _exec_word(word: str) -> str:
    """One word of a command line in a unit: `%` and `$` escaped, quoted if it holds a space."""
    word = word.replace("%", "%%").replace("$", "$$")
    return f'"{word}"' if re.search(r"\s", word) else word


def _check_queue_names(queues: list[str]) -> None:
    from ostinato.deploy.errors import InvalidInput
    from ostinato.deploy.schemas import NAME_PATTERN

    for name in queues:
        if not re.fullmatch(NAME_PATTERN, name):
            raise InvalidInput(f"{name!r} is not a work-queue name (a letter or digit, then "
                               "letters, digits, '_', '.' or '-'; at most 100)")


def _check_can_enable(program: Path, unit: str, env_file: Path) -> None:
    """What would make the agents fail once started, said now: `systemctl enable --now` reports
    success for a simple service whose program cannot even start."""
    from ostinato.deploy.errors import OstinatoError

    if shutil.which("systemctl") is None:
        raise OstinatoError("systemctl not found: this host does not run systemd; run "
                            "`ostinato agent start -q QUEUE` under your own supervisor instead")
    problem = _hidden(program) or _missing(env_file) or _missing_user(unit)
    if problem:
        raise OstinatoError(f"{problem}; or pass --no-enable to only write the unit")


def _hidden(program: Path) -> str | None:
    if not any(program.is_relative_to(folder) for folder in HIDDEN_FROM_THE_UNIT):
        return None
    return (f"the unit cannot run {program}: it hides /home, /root and /run/user "
            "(ProtectHome=yes); install ostinato elsewhere, e.g. in a venv at /opt/ostinato, "
            "and run this command with that one")


def _missing(env_file: Path) -> str | None:
    if env_file.is_file():
        return None
    return (f"{env_file} does not exist: create it from deploy/services/ostinato.env.example "
            "(see docs/operations.md), or pass --env-file")


def _missing_user(unit: str) -> str | None:
    import pwd

    found = re.search(r"^User=(\S+)$", unit, re.MULTILINE)
    user = found.group(1) if found else "root"
    try:
        pwd.getpwnam(user)
    except KeyError:
        return (f"the unit runs as user {user!r}, which does not exist: sudo useradd --system "
                f"--user-group --home-dir /var/lib/ostinato --shell /usr/sbin/nologin {user}")
    return None


def _write(path: Path, text: str) -> Path:
    from ostinato.deploy.errors import OstinatoError

    try:
        path.write_text(text)
    except OSError as exc:
        hint = ("run it as root (sudo)" if isinstance(exc, PermissionError)
                else "pass --unit-dir with an existing directory")
        raise OstinatoError(f"cannot write {path}: {exc.strerror}; {hint}, or --print the "
                            "unit and install it by hand") from None
    return path


def _enable(units: list[str], path: Path) -> None:
    _systemctl(["daemon-reload"], path, units)
    for unit in units:
        _systemctl(["enable", "--now", unit], path, units)
        print(f"enabled and started {unit}")


def _systemctl(args: list[str], path: Path, units: list[str]) -> None:
    from ostinato.deploy.errors import OstinatoError

    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        reason = (done.stderr.strip() or f"exit status {done.returncode}").splitlines()[0]
        raise OstinatoError(f"`systemctl {' '.join(args)}` failed ({reason}); {path} is "
                            "installed: fix that, then run `systemctl daemon-reload && "
                            f"systemctl enable --now {' '.join(units)}`")
