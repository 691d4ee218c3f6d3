"""The agent's bundle cache against a real server: fetch once, verify, refuse hostile archives,
share one folder between agent processes, and prune least-recently-used bundles but never one in
use. The backend is irrelevant here, so every test runs on SQLite only."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx
import pytest
from sqlalchemy import update

from ostinato.agent.cache import BundleCache
from ostinato.deploy.bundles import PackedBundle, pack_directory, sha256_hex
from ostinato.deploy.client import Client
from ostinato.deploy.errors import InvalidInput
from ostinato.queues.tables import bundles
from tests.conftest import RunningServer

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
SOURCE = {"flow.py": "def main():\n    return 1\n", "lib/util.py": "X = 1\n"}
MARKERS = {".pins", ".lock"}  # what an empty cache holds


class CountingTransport(httpx.HTTPTransport):
    """A real HTTP transport that remembers the path of every request it sent."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        return super().handle_request(request)


def pack(tmp_path: Path, files: Mapping[str, str]) -> PackedBundle:
    source = tmp_path / f"src-{len(list(tmp_path.glob('src-*')))}"
    for name, content in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_text(content)
    return pack_directory(source)


def upload(server: RunningServer, data: bytes) -> str:
    sha = sha256_hex(data)
    with Client(server.url, "") as client:
        client.upload_bundle(sha, data)
    return sha


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}


def contents(root: Path) -> set[str]:
    """What the cache root holds besides its own markers."""
    return {p.name for p in root.iterdir()} - MARKERS


@pytest.fixture
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.url, "") as client:
        yield client


@SQLITE
def test_first_fetch_downloads_and_extracts_then_the_cache_serves_it(
        server: RunningServer, tmp_path: Path) -> None:
    sha = upload(server, pack(tmp_path, SOURCE).data)
    transport = CountingTransport()
    root = tmp_path / "bundles"
    with Client(server.url, "", transport=transport) as counted:
        first = BundleCache(root, counted).path_for(sha)
        assert tree(first) == SOURCE
        assert transport.paths == [f"/api/bundles/{sha}"]

        assert BundleCache(root, counted).path_for(sha) == first  # another agent, same host
        assert transport.paths == [f"/api/bundles/{sha}"]
    assert contents(root) == {sha}


@SQLITE
def test_a_download_that_does_not_match_its_hash_is_refused_and_leaves_nothing(
        server: RunningServer, client: Client, tmp_path: Path) -> None:
    sha = upload(server, pack(tmp_path, SOURCE).data)
    tampered = pack(tmp_path, {"flow.py": "import os; os.system('evil')\n"}).data
    with server.database.write() as conn:  # the server now serves other bytes under that hash
        conn.execute(update(bundles).where(bundles.c.sha256 == sha).values(content=tampered))
    cache = BundleCache(tmp_path / "bundles", client)

    with pytest.raises(InvalidInput, match=f"does not match sha256 {sha}"):
        with cache.use(sha):
            pytest.fail("a run must not start from bytes that fail verification")
    assert contents(cache.root) == set()
    assert list((cache.root / ".pins").iterdir()) == []


def hostile_archive(member: tarfile.TarInfo) -> bytes:
    """flow.py, then `member` (a file of 3 bytes, or a link)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info in (tarfile.TarInfo("flow.py"), member):
            info.size = 3 if info.isreg() else 0
            tar.addfile(info, io.BytesIO(b"x=1") if info.isreg() else None)
    return buffer.getvalue()


def link(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info


@SQLITE
@pytest.mark.parametrize(("member", "reason"), [
    (tarfile.TarInfo("../escaped.py"), r"'\.\./escaped\.py' has a '\.\.' component"),
    (link("lib", str(Path.home())), r"'lib' is a symbolic link"),
])
def test_an_archive_with_a_member_escaping_its_folder_is_refused_and_leaves_nothing(
        server: RunningServer, client: Client, tmp_path: Path, member: tarfile.TarInfo,
        reason: str) -> None:
    sha = upload(server, hostile_archive(member))
    cache = BundleCache(tmp_path / "bundles", client)

    with pytest.raises(InvalidInput, match=reason):
        cache.path_for(sha)
    assert contents(cache.root) == set()
    assert not (tmp_path / "escaped.py").exists()


@SQLITE
def test_a_malformed_sha256_is_refused_before_any_request(tmp_path: Path,
                                                          server: RunningServer) -> None:
    transport = CountingTransport()
    with Client(server.url, "", transport=transport) as counted:
        with pytest.raises(InvalidInput, match="not a bundle sha256"):
            BundleCache(tmp_path / "bundles", counted).path_for("../" + "a" * 61)
    assert transport.paths == []


FETCH = """
import sys, time
from pathlib import Path
from ostinato.agent.cache import BundleCache
from ostinato.deploy.client import Client
url, root, sha, start = sys.argv[1:]
time.sleep(max(0.0, float(start) - time.time()))
with Client(url, "") as client:
    print(BundleCache(Path(root), client).path_for(sha))
"""


@SQLITE
def test_concurrent_fetches_from_several_processes_end_with_one_complete_folder(
        server: RunningServer, tmp_path: Path) -> None:
    files = {f"pkg/m{i}.py": f"VALUE = {i}\n" * 50 for i in range(300)}
    sha = upload(server, pack(tmp_path, files).data)
    root = tmp_path / "bundles"
    start = str(time.time() + 2)  # all processes start importing now and fetch at one instant
    agents = [subprocess.Popen([sys.executable, "-c", FETCH, server.url, str(root), sha, start],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(6)]
    results = [agent.communicate(timeout=60) for agent in agents]

    assert [agent.returncode for agent in agents] == [0] * 6, [err for _, err in results]
    assert {out.strip() for out, _ in results} == {str(root / sha)}
    assert tree(root / sha) == files
    assert contents(root) == {sha}  # no staging folder left by the losers of the race


def fill(cache: BundleCache, shas: list[str]) -> None:
    """Fetch bundles and date their last uses one second apart, `shas[0]` the most recent."""
    for age, sha in enumerate(shas):
        when = time.time() - 100 - age
        os.utime(cache.path_for(sha), (when, when))


@pytest.fixture
def four(server: RunningServer, tmp_path: Path) -> list[str]:
    """Four bundles of one 1000-byte file each."""
    return [upload(server, pack(tmp_path, {"flow.py": str(i) * 1000}).data) for i in range(4)]


@SQLITE
def test_prune_keeps_the_newest_bundles_up_to_keep(client: Client, four: list[str],
                                                     tmp_path: Path) -> None:
    cache = BundleCache(tmp_path / "bundles", client, keep=2)
    fill(cache, four)

    assert sorted(cache.prune()) == sorted(four[2:])
    assert contents(cache.root) == set(four[:2])
    assert cache.prune() == []


@SQLITE
def test_prune_keeps_the_newest_bundles_within_max_bytes(client: Client, four: list[str],
                                                           tmp_path: Path) -> None:
    cache = BundleCache(tmp_path / "bundles", client, max_bytes=3500)
    fill(cache, four)

    assert cache.prune() == [four[3]]
    assert contents(cache.root) == set(four[:3])


@SQLITE
def test_prune_never_removes_a_bundle_in_use_and_counts_its_release_as_a_use(
        client: Client, four: list[str], tmp_path: Path) -> None:
    cache = BundleCache(tmp_path / "bundles", client, keep=1)
    fill(cache, four)

    with cache.use(four[3]) as folder:  # the least recently used one
        os.utime(folder, (0, 0))
        assert sorted(cache.prune()) == sorted(four[1:3])
        assert tree(folder) == {"flow.py": "3" * 1000}
    assert cache.prune() == [four[0]]
    assert contents(cache.root) == {four[3]}


HOLD = """
import sys, time
from pathlib import Path
from ostinato.agent.cache import BundleCache
from ostinato.deploy.client import Client
url, root, sha = sys.argv[1:]
with Client(url, "") as client, BundleCache(Path(root), client).use(sha):
    print("holding", flush=True)
    time.sleep(60)
"""


@SQLITE
def test_a_pin_holds_across_processes_until_its_process_dies(
        server: RunningServer, client: Client, four: list[str], tmp_path: Path) -> None:
    cache = BundleCache(tmp_path / "bundles", client, keep=1)
    fill(cache, four)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, server.url, str(cache.root), four[3]],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        os.utime(cache.root / four[3], (0, 0))
        assert four[3] not in cache.prune()
    finally:
        holder.kill()
        holder.wait(timeout=10)

    assert cache.prune() == [four[3]]  # the pin of a killed agent holds nothing
    assert list((cache.root / ".pins").iterdir()) == []


@SQLITE
def test_a_pin_older_than_its_process_is_a_reused_pid_and_holds_nothing(
        client: Client, four: list[str], tmp_path: Path) -> None:
    cache = BundleCache(tmp_path / "bundles", client, keep=1)
    fill(cache, four)
    with cache.use(four[3]) as folder:
        os.utime(folder, (0, 0))
        [pin] = (cache.root / ".pins").iterdir()
        os.utime(pin, (0, 0))  # pinned in 1970 by an earlier process that had our pid

        assert four[3] in cache.prune()


@SQLITE
def test_prune_clears_staging_left_by_a_dead_unpack_but_not_a_recent_one(
        client: Client, tmp_path: Path) -> None:
    cache = BundleCache(tmp_path / "bundles", client)
    stale, fresh = cache.root / f".{'a' * 64}.tmp-1", cache.root / f".{'b' * 64}.tmp-2"
    for staging in (stale, fresh):
        (staging / "lib").mkdir(parents=True)
    os.utime(stale, (0, 0))

    cache.prune()
    assert contents(cache.root) == {fresh.name}
