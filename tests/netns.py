"""Network namespaces for tests that cut a process off from the network and let it back on.

A `NetworkNamespace` is a fresh namespace joined to the host by one veth pair on a private /30 of
10.213.0.0/16: the host end holds `host_address`, the namespace end `ns_address`. A process
started with `command(argv)` sees only that link and its own loopback, so a server listening on
`host_address` is reachable from it until `link_down()`, while the host (the test) keeps reaching
the server throughout, over its own address.

Two kinds of outage, because they fail differently on the far side:

- `"drop"` (the default): a `blackhole` qdisc on the egress of both veth ends. Every packet
  vanishes silently in both directions and the links stay up: requests hang until their own
  timeouts, new connections time out, established TCP connections retransmit and carry on after
  `link_up()`. This is what a dead router, Wi-Fi or VPN looks like, and the harder case for
  timeouts. It needs only `sch_blackhole` (netem and iptables are often absent from small
  kernels).
- `"carrier"`: the host end is set down, so the namespace end loses carrier: new connections
  fail within seconds with "No route to host", established ones survive a short outage. This is
  an unplugged cable next to the agent; it exercises fast failures and retry loops.

Each instance claims a slot (its namespace name, interface names and subnet) with
`ip netns add`, which fails if the name exists, so concurrent tests and processes never share
one. Teardown always runs (context manager) and removes what was made, killing any process left
in the namespace first: a namespace someone still runs in outlives its name. A process killed
outright cannot tear down, so each namespace records its owner's pid and `available()` first
removes those whose owner is gone.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal

Outage = Literal["drop", "carrier"]
OUTAGES: tuple[Outage, ...] = ("drop", "carrier")
SUBNETS = ipaddress.ip_network("10.213.0.0/16")
SLOTS = SUBNETS.num_addresses // 4  # one /30 each
PREFIX = "ostn"  # namespace ostnN, veth ends ostnNh (host) and ostnNn: under the 15-char limit
COMMAND_TIMEOUT = 10.0
OWNERS = Path("/run/ostinato-netns")  # a file per namespace made here, holding its owner's pid


class NamespaceError(RuntimeError):
    """An `ip`/`tc` command failed; the message carries the command and its stderr."""


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an iproute2 command; raise NamespaceError with its stderr if `check` and it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    if check and done.returncode != 0:
        raise NamespaceError(f"`{' '.join(argv)}` failed: {done.stderr.strip()}")
    return done


def _remove(name: str) -> list[str]:
    """Remove namespace `name` and its veth pair; what is still there after (if anything).
    Processes left inside are killed first: they would keep the namespace alive unnamed."""
    for pid in _run("ip", "netns", "pids", name, check=False).stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    link = f"{name}h"
    _run("ip", "link", "del", link, check=False)  # takes its peer with it
    _run("ip", "netns", "del", name, check=False)
    (OWNERS / name).unlink(missing_ok=True)
    left = [f"namespace {name}"] if name in _run("ip", "netns", "list").stdout.split() else []
    if _run("ip", "link", "show", link, check=False).returncode == 0:
        left.append(f"link {link}")
    return left


def remove_orphans() -> list[str]:
    """Remove the namespaces whose owner died without tearing them down (a test run killed
    by a CI timeout, say), so they do not pile up; their names."""
    orphans = [owner.name for owner in OWNERS.glob(f"{PREFIX}*") if not _alive(owner)]
    for name in orphans:
        _remove(name)
    return orphans


def _alive(owner: Path) -> bool:
    try:
        pid = int(owner.read_text())
        if pid > 0:
            os.kill(pid, 0)
    except (ProcessLookupError, ValueError, FileNotFoundError):
        return False
    except PermissionError:  # it exists, as another user
        return True
    return pid > 0


def _claim_slot() -> int:
    """A slot no other instance holds: the first `ip netns add` that succeeds from a random
    start (it refuses an existing name, so the claim is atomic across processes)."""
    start = random.randrange(SLOTS)
    for step in range(256):
        slot = (start + step) % SLOTS
        if _run("ip", "netns", "add", f"{PREFIX}{slot}", check=False).returncode == 0:
            OWNERS.mkdir(exist_ok=True)
            (OWNERS / f"{PREFIX}{slot}").write_text(str(os.getpid()))
            return slot
    raise NamespaceError("no free network namespace slot after 256 tries")


class NetworkNamespace:
    """A namespace with one veth link to the host; use as a context manager."""

    def __init__(self, outage: Outage = "drop") -> None:
        self.outage: Outage = outage
        self.name = ""
        self._down: Outage | None = None

    # --- lifetime ----------------------------------------------------------------------------

    def __enter__(self) -> NetworkNamespace:
        slot = _claim_slot()
        self.name = f"{PREFIX}{slot}"
        subnet = ipaddress.ip_network((int(SUBNETS.network_address) + 4 * slot, 30))
        self.host_address, self.ns_address = (str(subnet[1]), str(subnet[2]))
        self.host_link, self.ns_link = f"{self.name}h", f"{self.name}n"
        try:
            self._connect(subnet.prefixlen)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def _connect(self, prefix: int) -> None:
        _run("ip", "link", "del", self.host_link, check=False)  # stale, kept by a dead user
        _run("ip", "link", "add", self.host_link, "type", "veth",
             "peer", "name", self.ns_link, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_address}/{prefix}", "dev", self.host_link)
        _run("ip", "-n", self.name, "addr", "add", f"{self.ns_address}/{prefix}",
             "dev", self.ns_link)
        for namespace, link in ((None, self.host_link), (self.name, self.ns_link),
                                (self.name, "lo")):
            _run("ip", *(("-n", namespace) if namespace else ()), "link", "set", link, "up")

    def close(self) -> None:
        """Remove the namespace and the veth pair (idempotent); raise if either survived."""
        name, self.name = self.name, ""
        left = _remove(name) if name else []
        if left:
            raise NamespaceError(f"teardown left {' and '.join(left)} behind")

    # --- use ---------------------------------------------------------------------------------

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run inside the namespace (same user, environment and filesystem)."""
        return ["ip", "netns", "exec", self.name, *argv]

    @property
    def is_down(self) -> bool:
        return self._down is not None

    def link_down(self, outage: Outage | None = None) -> None:
        """Cut the namespace off from the host, both ways (see the module docstring)."""
        if self._down is not None:
            raise NamespaceError(f"{self.name} is already down ({self._down})")
        kind = outage or self.outage
        if kind == "drop":
            self._blackhole("add")
        else:
            _run("ip", "link", "set", self.host_link, "down")
        self._down = kind

    def link_up(self) -> None:
        """Undo `link_down()`; nothing to do if the link is up (so `finally` may call it)."""
        if self._down == "drop":
            self._blackhole("del")
        elif self._down == "carrier":
            _run("ip", "link", "set", self.host_link, "up")
        self._down = None

    def _blackhole(self, action: Literal["add", "del"]) -> None:
        tail = ("root", "blackhole") if action == "add" else ("root",)
        _run("tc", "qdisc", action, "dev", self.host_link, *tail)
        _run("tc", "-netns", self.name, "qdisc", action, "dev", self.ns_link, *tail)


@functools.cache
def available() -> str | None:
    """None if this process can make namespaces and both kinds of outage, else why not (for
    `pytest.skip`). Tried once per process, for real: capabilities and kernel modules vary."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in ("ip", "tc") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} (iproute2) not on PATH"
    try:
        remove_orphans()
        with NetworkNamespace() as namespace:
            for kind in OUTAGES:
                namespace.link_down(kind)
                namespace.link_up()
    except (NamespaceError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot make a network namespace here: {exc}"
    return None
