"""The agent's bundle cache: one extracted folder per sha256, shared by every agent on the host.

Layout under `root` (the agent passes `$OSTINATO_HOME/bundles`):

    <sha256>/                   a complete, verified bundle; the run's working directory
    .pins/<sha256>-<pid>-<tok>  one lease per `use()`: the bundle is in use, prune must keep it
    .lock                       flock: shared while pinning, exclusive while pruning
    .<sha256>.tmp-*             safe_extract's staging folder while a download is unpacked

Why it is safe for several agent processes at once:

- A folder named by a sha256 only ever appears by `safe_extract`'s atomic rename of a finished,
  verified tree, so `is_dir()` means complete. Two agents fetching the same bundle both download
  and unpack it; the rename of the second fails against the first's folder and its copy is dropped.
  Same bytes, same result: the race costs a download, never a wrong run.
- Prune removes a folder by renaming it away first, so nobody sees a half-deleted one as complete.
- A pin is created under the shared lock before the folder is looked at, and prune decides under the
  exclusive lock; so either prune sees the pin and keeps the bundle, or the pinner finds the folder
  gone and fetches it again. Pins of dead processes are ignored and removed.

Least-recently used means the folder's mtime, set each time `path_for` returns and when a `use()`
ends. Markers live outside the bundle folder so flow code never sees them.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from ostinato.deploy.bundles import safe_extract
from ostinato.deploy.errors import InvalidInput

if TYPE_CHECKING:  # the agent brings its Client; importing the cache need not load httpx
    from ostinato.deploy.client import Client

__all__ = ["BundleCache"]

_GB = 1024 * 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STALE_STAGING_SECONDS = 3600  # an unpack that old belongs to a process that died mid-way


class BundleCache:
    """Bundles fetched by sha256, verified, unpacked once per host, pruned least-recently-used."""

    def __init__(self, root: Path, client: Client, *, max_bytes: int = 2 * _GB,
                 keep: int = 50) -> None:
        self.root = root
        self.client = client
        self.max_bytes = max_bytes
        self.keep = keep
        self._pins = root / ".pins"
        self._pins.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        """The extracted folder of a bundle, downloaded and unpacked only if not cached yet.

        Raises InvalidInput (and caches nothing) if the bytes do not hash to `sha256` or the
        archive is hostile or over a cap. Alone this does not hold the bundle against `prune()`;
        a run should go through `use()`.
        """
        sha = _checked(sha256)
        folder = self.root / sha
        if not folder.is_dir():
            safe_extract(self.client.download_bundle(sha), folder, expected_sha256=sha)
        os.utime(folder)
        return folder

    @contextmanager
    def use(self, sha256: str) -> Iterator[Path]:
        """Hold a bundle for the length of a run: prune keeps it until the block exits."""
        pin = self._acquire_pin(_checked(sha256))
        try:
            folder = self.path_for(sha256)
            try:
                yield folder
            finally:
                with suppress(FileNotFoundError):  # removed behind our back: the run is over anyway
                    os.utime(folder)
        finally:
            pin.unlink(missing_ok=True)

    def prune(self) -> list[str]:
        """Remove least-recently-used bundles beyond `keep` or `max_bytes`, never a pinned one.

        Newest first, a bundle is kept while both budgets allow it; pinned bundles are always kept
        and count against the budgets. Also clears dead pins and what crashed processes left.
        Returns the sha256 of every bundle removed.
        """
        with self._locked(exclusive=True):
            pinned = self._live_pins()
            victims = self._victims(pinned)
            for sha in victims:
                _remove(self.root / sha, self.root)
            self._sweep_leftovers()
        return victims

    def _acquire_pin(self, sha: str) -> Path:
        pin = self._pins / f"{sha}-{os.getpid()}-{secrets.token_hex(4)}"
        with self._locked(exclusive=False):
            pin.touch()
        return pin

    def _live_pins(self) -> set[str]:
        """The sha256 of every bundle some live process holds; pins of dead processes go away."""
        pinned: set[str] = set()
        for pin in self._pins.iterdir():
            if _pin_alive(pin):
                pinned.add(pin.name.split("-")[0])
            else:
                pin.unlink(missing_ok=True)
        return pinned

    def _victims(self, pinned: set[str]) -> list[str]:
        folders = sorted(self._bundles(), key=lambda f: f.stat().st_mtime, reverse=True)
        count = total = 0
        victims: list[str] = []
        for folder in folders:
            size = _tree_size(folder)
            if folder.name in pinned or (count < self.keep and total + size <= self.max_bytes):
                count, total = count + 1, total + size
            else:
                victims.append(folder.name)
        return victims

    def _bundles(self) -> Iterator[Path]:
        return (p for p in self.root.iterdir() if _SHA256.fullmatch(p.name) and p.is_dir())

    def _sweep_leftovers(self) -> None:
        """Trash of a prune that crashed, and staging folders of unpacks that died long ago."""
        for path in self.root.glob(".*"):
            if path.name.startswith(".trash-") or _stale_staging(path):
                shutil.rmtree(path, ignore_errors=True)

    @contextmanager
    def _locked(self, *, exclusive: bool) -> Iterator[None]:
        with open(self.root / ".lock", "ab") as handle:  # closing the file releases the lock
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield


def _checked(sha256: str) -> str:
    """A sha256 as the server names bundles; anything else could also name a path outside root."""
    sha = sha256.strip().lower()
    if not _SHA256.fullmatch(sha):
        raise InvalidInput(f"not a bundle sha256: {sha256!r} (expected 64 hex digits)")
    return sha


def _pin_alive(pin: Path) -> bool:
    """Whether the pin's process still runs: a process started after the pin only reuses its pid."""
    try:
        process = psutil.Process(int(pin.name.split("-")[1]))
        return process.create_time() <= pin.stat().st_mtime + 1
    except psutil.AccessDenied:
        return True
    except (IndexError, ValueError, psutil.NoSuchProcess, FileNotFoundError):
        return False


def _stale_staging(path: Path) -> bool:
    """A safe_extract staging folder (`.<sha256>.tmp-*`) too old to be an unpack in progress."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:  # published or cleaned up meanwhile
        return False
    return ".tmp-" in path.name and age > _STALE_STAGING_SECONDS


def _remove(folder: Path, root: Path) -> None:
    """Rename away, then delete, so a half-deleted tree never sits under a sha256 name."""
    trash = root / f".trash-{secrets.token_hex(8)}"
    os.rename(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _tree_size(folder: Path) -> int:
    return sum(
        os.lstat(os.path.join(parent, name)).st_size
        for parent, _, files in os.walk(folder)
        for name in files
    )
