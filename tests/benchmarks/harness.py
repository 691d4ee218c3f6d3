"""What the benchmark scripts share: a real `ostinato server start` on a free port, waited for
and stopped, and percentiles. Scripts run as `python tests/benchmarks/NAME.py`, so this folder
is on their import path."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import IO, Any

import httpx

SERVER = (sys.executable, "-m", "ostinato.cli.main", "server", "start")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int, env: Mapping[str, str], *, out: IO[Any] | int = subprocess.DEVNULL,
                 command: Sequence[str] = SERVER) -> subprocess.Popen[bytes]:
    """`ostinato server start --port PORT` with this environment, not yet waited for."""
    return subprocess.Popen([*command, "--port", str(port)], env=dict(env), stdout=out,
                            stderr=subprocess.STDOUT)


def wait_healthy(api: str, process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    """Return once `{api}/health` answers 200; fail if the server exits or takes too long."""
    deadline = time.monotonic() + seconds
    with httpx.Client(timeout=2) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode} at start-up")
            try:
                if http.get(f"{api}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.01)
    process.kill()
    raise RuntimeError(f"server did not answer {api}/health within {seconds} s")


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL if it has not exited within 30 s; its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait(timeout=10)


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted samples (0 for none)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]
