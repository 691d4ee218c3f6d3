"""The operators' files under deploy/services: the systemd units pass `systemd-analyze verify`,
compose.yaml passes `docker compose config`, and every command they run is a real `ostinato`
command with real options and real OSTINATO_* settings."""

from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sysconfig
from functools import cache
from pathlib import Path

import pytest

from ostinato.cli import agents
from ostinato.deploy.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SERVICES = ROOT / "deploy" / "services"
UNITS = ("ostinato-server.service", "ostinato-agent@.service")
INSTALLED = "/opt/ostinato/bin/ostinato"  # where the units expect the script (docs/operations.md)
SERVICE_FILES = (*UNITS, "ostinato.env.example", "Dockerfile", "compose.yaml")
COMPOSE_SERVICES = {"postgres", "server", "agent-1", "agent-2"}


def _ostinato() -> str:
    """The installed `ostinato` script: this interpreter's own first, then any on PATH."""
    found = (shutil.which("ostinato", path=sysconfig.get_path("scripts"))
             or shutil.which("ostinato"))
    assert found, "the `ostinato` script is not installed (pip install -e .)"
    return found


def _text(name: str) -> str:
    return (SERVICES / name).read_text()


def _seconds(value: str) -> float:
    """`90s`, `90` or `1min 30s` (the spellings systemd and compose accept, as used here)."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts, f"not a duration: {value!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


def _unit_setting(unit: str, key: str) -> str:
    values: list[str] = re.findall(rf"^{key}=(.*)$", _text(unit), re.MULTILINE)
    assert len(values) == 1, f"{unit}: expected one {key}=, found {values}"
    return values[0].strip()


# --- (1) systemd-analyze verify ---------------------------------------------------------------


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    text = _text(unit)
    assert f"ExecStart={INSTALLED} " in text
    (tmp_path / unit).write_text(text.replace(INSTALLED, _ostinato()))  # verify checks it exists
    instance = unit.replace("@.", "@default.")  # a template is verified through an instance
    done = subprocess.run([analyze, "verify", f"./{instance}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=30)
    ours = [line for line in done.stderr.splitlines() if "ostinato" in line]
    assert done.returncode == 0, done.stderr
    assert ours == [], "\n".join(ours)


# --- (2) docker compose config ----------------------------------------------------------------


@cache
def _docker_compose() -> str | None:
    """Why `docker compose` cannot run here, or None if it can."""
    docker = shutil.which("docker")
    if docker is None:
        return "docker is not installed on this machine"
    done = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                          timeout=30)
    if done.returncode != 0:
        return f"the docker compose plugin is missing: {done.stderr.strip().splitlines()[0]}"
    return None


def test_compose_file_passes_docker_compose_config() -> None:
    reason = _docker_compose()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "POSTGRES_PASSWORD": "test", "OSTINATO_ADMIN_KEY": "k" * 32}
    command = ["docker", "compose", "-f", str(SERVICES / "compose.yaml"), "config"]
    done = subprocess.run([*command, "--services"], capture_output=True, text=True, env=env,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == COMPOSE_SERVICES


# --- (3) structure: real commands, options and settings ----------------------------------------


@cache
def _help(group: str, command: str) -> str:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    done = subprocess.run([_ostinato(), group, command, "--help"], capture_output=True,
                          text=True, env=env, timeout=30)
    assert done.returncode == 0, f"`ostinato {group} {command}` is not a command: {done.stderr}"
    return done.stdout


def _unit_commands() -> list[list[str]]:
    commands = []
    for unit in UNITS:
        for line in re.findall(r"^ExecStart=(.*)$", _text(unit), re.MULTILINE):
            binary, *args = line.split()
            assert binary == INSTALLED, f"{unit}: ExecStart runs {binary}"
            commands.append(args)
    return commands


def _dockerfile_command() -> list[str]:
    found = re.search(r"^CMD (\[.*\])$", _text("Dockerfile"), re.MULTILINE)
    assert found, "the Dockerfile has no CMD in exec form"
    argv: list[str] = json.loads(found.group(1))
    assert argv[0] == "ostinato"
    return argv[1:]


def _compose_commands() -> dict[str, list[str]]:
    """Each compose service's `command: [...]` (flow style, as the file writes them)."""
    found = re.findall(r"^  ([\w-]+):\n(?:    .*\n)*?    command: (\[[^]]*\])",
                       _text("compose.yaml"), re.MULTILINE)
    commands = {service: json.loads(argv) for service, argv in found}
    assert all(argv[0] == "ostinato" for argv in commands.values()), commands
    return {service: argv[1:] for service, argv in commands.items()}


def _all_commands() -> list[list[str]]:
    return [*_unit_commands(), _dockerfile_command(), *_compose_commands().values()]


def test_compose_runs_the_server_and_two_agents_on_queue_default() -> None:
    commands = _compose_commands()
    assert set(commands) == {"server", "agent-1", "agent-2"}
    assert commands["server"][:2] == ["server", "start"]
    for agent in ("agent-1", "agent-2"):
        argv = commands[agent]
        assert argv[:2] == ["agent", "start"] and argv[argv.index("-q") + 1] == "default"


@pytest.mark.parametrize("argv", _all_commands(), ids=" ".join)
def test_every_command_and_option_exists(argv: list[str]) -> None:
    group, command, *args = argv
    shown = set(re.findall(r"(?<![\w-])(--?[a-z][a-z-]*)", _help(group, command)))
    used = {arg for arg in args if arg.startswith("-")}
    assert used <= shown, f"not options of `ostinato {group} {command}`: {used - shown}"


def test_every_ostinato_variable_named_is_a_setting() -> None:
    settings = {f"OSTINATO_{name.upper()}" for name in Settings.model_fields}
    for name in SERVICE_FILES:
        named = set(re.findall(r"OSTINATO_[A-Z_]+", _text(name)))
        assert named <= settings, f"{name}: no such settings {named - settings}"


def test_agents_are_given_longer_to_stop_than_they_take_to_drain() -> None:
    default = inspect.signature(agents.start).parameters["drain_timeout"].default
    drains = [float(argv[argv.index("--drain-timeout") + 1]) for argv in _all_commands()
              if argv[:2] == ["agent", "start"]]
    assert drains and max(drains) <= default  # raising it needs the stop timeouts raised too
    assert _seconds(_unit_setting("ostinato-agent@.service", "TimeoutStopSec")) > default
    anchor = _text("compose.yaml").split("\nx-agent:")[1].split("\nservices:")[0]
    graces = re.findall(r"stop_grace_period: (\S+)", anchor)
    assert len(graces) == 1 and _seconds(graces[0]) > default


def test_units_signal_the_main_process_first_and_run_as_the_ostinato_user() -> None:
    for unit in UNITS:
        assert _unit_setting(unit, "KillMode") == "mixed"
        assert _unit_setting(unit, "User") == "ostinato"
        assert "\nEnvironmentFile=/etc/ostinato/ostinato.env\n" in _text(unit)
        assert _unit_setting(unit, "Restart") == "on-failure"


def test_the_image_healthcheck_probes_the_health_route() -> None:
    from ostinato.scheduler.app import create_app

    assert "/api/health" in create_app().openapi()["paths"]
    assert re.search(r"^HEALTHCHECK .*/api/health", _text("Dockerfile"),
                     re.MULTILINE | re.DOTALL)


# --- (4) ostinato agent install-service ---------------------------------------------------------

AGENT_UNIT = "ostinato-agent@.service"


def _install_service(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": path if path is not None else os.environ["PATH"]}
    return subprocess.run([_ostinato(), "agent", "install-service", *args], capture_output=True,
                          text=True, env=env, timeout=30)


def test_install_service_writes_the_template_running_this_ostinato(tmp_path: Path) -> None:
    done = _install_service("-q", "etl", "-q", "etl-daily", "--unit-dir", str(tmp_path),
                            "--no-enable")
    assert done.returncode == 0, done.stderr
    installed = (tmp_path / AGENT_UNIT).read_text()
    assert installed == _text(AGENT_UNIT).replace(f"ExecStart={INSTALLED} ",
                                                  f"ExecStart={_ostinato()} ")
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    # %i is the instance as written (only %I unescapes): `etl-daily` needs no systemd-escape.
    verified = subprocess.run([analyze, "verify", "./ostinato-agent@etl-daily.service"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert verified.returncode == 0, verified.stderr
    assert [line for line in verified.stderr.splitlines() if "ostinato" in line] == []


def test_install_service_print_names_the_env_file_and_changes_nothing(tmp_path: Path) -> None:
    done = _install_service("-q", "etl", "--unit-dir", str(tmp_path),
                            "--env-file", "/srv/ostinato/agents.env", "--print")
    assert done.returncode == 0, done.stderr
    assert list(tmp_path.iterdir()) == []
    assert re.findall(r"^EnvironmentFile=(.*)$", done.stdout, re.MULTILINE) == [
        "/srv/ostinato/agents.env", "-/srv/ostinato/agent-%i.env"]
    assert f"\nExecStart={_ostinato()} agent start -q %i " in done.stdout


@pytest.mark.parametrize(("queue", "unit_dir", "enable", "named"), [
    ("etl/nightly", ".", False, "not a work-queue name"),
    ("etl", "missing", False, "cannot write"),
    ("etl", ".", True, "systemctl not found"),  # the PATH given has no systemctl on it
])
def test_install_service_errors_are_one_line_and_write_nothing(
        queue: str, unit_dir: str, enable: bool, named: str, tmp_path: Path) -> None:
    done = _install_service("-q", queue, "--unit-dir", str(tmp_path / unit_dir),
                            "--enable" if enable else "--no-enable", path=str(tmp_path))
    assert done.returncode == 1, done
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], done.stderr
    assert not (tmp_path / AGENT_UNIT).exists()
