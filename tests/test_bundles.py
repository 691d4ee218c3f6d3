"""Bundles: deterministic packing, ignore rules, caps, and extraction refusing hostile archives."""

from __future__ import annotations

import io
import os
import re
import tarfile
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ostinato.deploy import bundles
from ostinato.deploy.bundles import PackedBundle, pack_directory, safe_extract, sha256_hex
from ostinato.deploy.errors import InvalidInput, PayloadTooLarge

MB = 1024 * 1024


def write(root: Path, files: Mapping[str, bytes | str]) -> None:
    """Create `files` (bundle path → content) under `root`, making folders as needed."""
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        path.write_bytes(data)


def tree(root: Path) -> dict[str, tuple[bytes, bool]]:
    """Every file under `root` as relative path → (content, owner-executable)."""
    return {
        path.relative_to(root).as_posix(): (path.read_bytes(), bool(path.stat().st_mode & 0o100))
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def names(bundle: PackedBundle) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        return tar.getnames()


IGNORE = ".ostinatoignore"
SOURCE = {"flow.py": "print('hi')\n", "lib/util.py": "X = 1\n", "lib/data/rows.csv": "a,b\n1,2\n"}


# --- determinism --------------------------------------------------------------------------------


def test_same_content_packs_to_same_bytes_whatever_times_order_and_modes(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write(first, SOURCE)
    write(second, dict(reversed(list(SOURCE.items()))))
    for number, path in enumerate(sorted(p for p in second.rglob("*") if p.is_file())):
        os.utime(path, (1_000_000 + number, 2_000_000_000 - number))
        path.chmod(0o600 if number % 2 else 0o664)

    one, two = pack_directory(first), pack_directory(second)

    assert one.data == two.data
    assert one.sha256 == two.sha256 == sha256_hex(one.data)
    assert one.file_count == 3


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda root: (root / "lib/util.py").write_text("X = 2\n"), id="content"),
        pytest.param(lambda root: (root / "lib/util.py").rename(root / "util.py"), id="path"),
        pytest.param(lambda root: (root / "flow.py").chmod(0o755), id="executable-bit"),
    ],
)
def test_a_change_that_matters_changes_the_hash(
    tmp_path: Path, change: Callable[[Path], object]
) -> None:
    write(tmp_path, SOURCE)
    before = pack_directory(tmp_path).sha256

    change(tmp_path)

    assert pack_directory(tmp_path).sha256 != before


def test_headers_carry_nothing_machine_specific(tmp_path: Path) -> None:
    write(tmp_path, SOURCE)
    (tmp_path / "flow.py").chmod(0o750)

    bundle = pack_directory(tmp_path)

    assert bundle.data[:2] == b"\x1f\x8b"
    assert bundle.data[3] & 0x08 == 0, "gzip header must not name a file"
    assert bundle.data[4:8] == b"\0\0\0\0", "gzip header mtime must be 0"
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == sorted(SOURCE)
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
    assert {m.name: m.mode for m in members} == {
        "flow.py": 0o755,
        "lib/data/rows.csv": 0o644,
        "lib/util.py": 0o644,
    }


def test_sha256_hex_is_lowercase_hex_sha256() -> None:
    expected = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert sha256_hex(b"") == expected


def test_packing_something_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    write(tmp_path, {"flow.py": "x"})
    with pytest.raises(InvalidInput, match="not a directory"):
        pack_directory(tmp_path / "flow.py")


# --- what goes in -------------------------------------------------------------------------------


def test_caches_vcs_and_virtualenvs_are_always_left_out(tmp_path: Path) -> None:
    skipped = [
        "__pycache__/flow.cpython-311.pyc",
        "lib/__pycache__/x.pyc",
        "old.pyc",
        ".git/config",
        "lib/.git",
        ".hg/store",
        ".svn/entries",
        ".venv/bin/python",
        "venv/lib/site.py",
        "web/node_modules/left-pad/index.js",
        ".DS_Store",
        "lib/.DS_Store",
        ".ostinato/state",
    ]
    write(tmp_path, {**SOURCE, **dict.fromkeys(skipped, "junk")})
    (tmp_path / IGNORE).write_text("!*.pyc\n!.git/\n")

    assert names(pack_directory(tmp_path)) == sorted([*SOURCE, IGNORE])


@pytest.mark.parametrize(
    ("rules", "files", "kept"),
    [
        pytest.param(
            "# comment\n\n*.log\n",
            ["run.log", "deep/er/x.log", "log.txt"],
            ["log.txt"],
            id="name-at-any-depth",
        ),
        pytest.param(
            "build/\n",
            ["build/out.bin", "src/build/out.bin", "docs/build"],
            ["docs/build"],
            id="dir-only",
        ),
        pytest.param(
            "/secrets.txt\nconf/local.ini\n",
            ["secrets.txt", "sub/secrets.txt", "conf/local.ini", "sub/conf/local.ini"],
            ["sub/conf/local.ini", "sub/secrets.txt"],
            id="anchored",
        ),
        pytest.param(
            "*.csv\n!keep.csv\n",
            ["a.csv", "data/keep.csv", "keep.csv"],
            ["data/keep.csv", "keep.csv"],
            id="negation",
        ),
        pytest.param(
            "data/**\n!data/schema.json\n",
            ["data/a/b.parquet", "data/c.csv", "data/schema.json", "other/data/x"],
            ["data/schema.json", "other/data/x"],
            id="trailing-double-star-allows-reinclude",
        ),
        pytest.param(
            "**/fixtures\na/**/z.txt\n",
            ["fixtures/f.json", "t/fixtures/g.json", "a/z.txt", "a/b/c/z.txt", "b/z.txt"],
            ["b/z.txt"],
            id="double-star-segments",
        ),
        pytest.param(
            "cache/\n!cache/keep.txt\n",
            ["cache/keep.txt", "cache/drop.txt"],
            [],
            id="no-reinclude-below-excluded-dir",
        ),
        pytest.param(
            "lib/*.py\n",
            ["lib/a.py", "lib/sub/b.py"],
            ["lib/sub/b.py"],
            id="star-stays-in-one-segment",
        ),
        pytest.param("\\#notes\n", ["#notes", "notes"], ["notes"], id="escaped-hash"),
    ],
)
def test_ostinatoignore_rules(
    tmp_path: Path, rules: str, files: list[str], kept: list[str]
) -> None:
    write(tmp_path, {**dict.fromkeys(files, "x"), IGNORE: rules})

    assert names(pack_directory(tmp_path)) == sorted([*kept, IGNORE])


def test_symlinks_inside_are_stored_as_files_others_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "src"
    write(root, SOURCE)
    write(tmp_path, {"outside.txt": "secret"})
    (root / "alias.py").symlink_to("flow.py")
    (root / "escape.txt").symlink_to(tmp_path / "outside.txt")
    (root / "lib2").symlink_to("lib", target_is_directory=True)
    (root / "dangling").symlink_to("missing")

    bundle = pack_directory(root)

    assert names(bundle) == sorted([*SOURCE, "alias.py"])
    warnings = " | ".join(record.getMessage() for record in caplog.records)
    assert "escape.txt because it points outside the bundle root" in warnings
    assert "lib2 because it points to a directory" in warnings
    assert "dangling because it does not point to a regular file" in warnings
    out = tmp_path / "out"
    safe_extract(bundle.data, out)
    assert (out / "alias.py").read_text() == SOURCE["flow.py"]
    assert not (out / "alias.py").is_symlink()


# --- caps ---------------------------------------------------------------------------------------


def test_size_cap_names_size_cap_largest_files_and_ignore_file(tmp_path: Path) -> None:
    write(tmp_path, {"flow.py": "x", "data/big.csv": b"0" * (3 * MB), "data/mid.bin": b"1" * MB})

    with pytest.raises(PayloadTooLarge) as caught:
        pack_directory(tmp_path, max_bytes=2 * MB)

    message = str(caught.value)
    assert message == (
        f"bundle of {tmp_path} is 4.0 MB, over the 2.0 MB cap; largest files: "
        f"data/big.csv (3.0 MB), data/mid.bin (1.0 MB), flow.py (1 bytes); "
        f"list what to leave out in {tmp_path / IGNORE}"
    )


def test_ignored_files_do_not_count_toward_the_size_cap(tmp_path: Path) -> None:
    write(tmp_path, {"flow.py": "x", "data/big.csv": b"0" * (3 * MB), IGNORE: "data/\n"})

    assert pack_directory(tmp_path, max_bytes=2 * MB).file_count == 2


def test_file_cap_names_count_cap_and_crowded_folders(tmp_path: Path) -> None:
    write(tmp_path, {"flow.py": "x", **{f"rows/{n}.json": "{}" for n in range(5)}})

    with pytest.raises(PayloadTooLarge) as caught:
        pack_directory(tmp_path, max_files=4)

    message = str(caught.value)
    assert f"bundle of {tmp_path} has 6 files, over the 4-file cap" in message
    assert "rows/ (5 files), ./ (1 files)" in message
    assert "\n" not in message
    assert pack_directory(tmp_path, max_files=6).file_count == 6


# --- extraction ---------------------------------------------------------------------------------


def test_round_trip_gives_an_identical_tree(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write(root, {**SOURCE, "bin/run.sh": "#!/bin/sh\n", "empty.txt": "", "ünï/cödé.py": "é"})
    (root / "bin/run.sh").chmod(0o755)
    bundle = pack_directory(root)
    dest = tmp_path / "cache" / bundle.sha256

    safe_extract(bundle.data, dest, expected_sha256=bundle.sha256)

    assert tree(dest) == tree(root)
    assert bundle.file_count == len(tree(root))
    assert tree(dest)["bin/run.sh"][1] is True
    assert sorted(os.listdir(dest.parent)) == [bundle.sha256]


def test_hash_mismatch_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    write(tmp_path / "src", SOURCE)
    bundle = pack_directory(tmp_path / "src")
    cache = tmp_path / "cache"
    cache.mkdir()

    with pytest.raises(InvalidInput, match="bundle content does not match sha256 0{64}"):
        safe_extract(bundle.data, cache / "x", expected_sha256="0" * 64)

    assert os.listdir(cache) == []


def test_an_existing_destination_is_kept(tmp_path: Path) -> None:
    write(tmp_path / "src", SOURCE)
    bundle = pack_directory(tmp_path / "src")
    dest = tmp_path / "cache" / bundle.sha256
    write(dest, {"marker": "another agent won"})

    safe_extract(bundle.data, dest, expected_sha256=bundle.sha256)

    assert tree(dest) == {"marker": (b"another agent won", False)}
    assert os.listdir(dest.parent) == [bundle.sha256]


def test_concurrent_extractions_end_with_one_complete_tree(tmp_path: Path) -> None:
    write(tmp_path / "src", {**SOURCE, **{f"pkg/m{n}.py": f"N = {n}\n" * 500 for n in range(50)}})
    bundle = pack_directory(tmp_path / "src")
    dest = tmp_path / "cache" / bundle.sha256
    start = threading.Barrier(8)

    def extract() -> None:
        start.wait(timeout=10)
        safe_extract(bundle.data, dest, expected_sha256=bundle.sha256)

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(extract) for _ in range(8)]
        for future in futures:
            future.result(timeout=60)

    assert tree(dest) == tree(tmp_path / "src")
    assert os.listdir(dest.parent) == [bundle.sha256]


def hostile(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    """A .tar.gz of one harmless file (so partial extraction would show), then `members`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, content in [(entry("ok.py"), b"ok"), *members]:
            info.size = len(content) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return buffer.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        pytest.param(hostile((entry("/etc/cron.d/x"), b"x")), "absolute path", id="absolute"),
        pytest.param(hostile((entry("../escape.py"), b"x")), "'..' component", id="dotdot"),
        pytest.param(hostile((entry("a/../../x"), b"x")), "'..' component", id="nested-dotdot"),
        pytest.param(hostile((entry("..\\x"), b"x")), "'..' component", id="backslash-dotdot"),
        pytest.param(hostile((entry("C:/Windows/x.py"), b"x")), "absolute path", id="drive"),
        pytest.param(hostile((entry("\\\\host\\share\\x"), b"x")), "absolute path", id="unc"),
        pytest.param(hostile((entry("a/../..", tarfile.DIRTYPE), b"")), "'..' component",
                     id="dotdot-directory"),
        pytest.param(
            hostile((entry("etc", tarfile.SYMTYPE, "/etc"), b"")),
            "'etc' is a symbolic link \\(to '/etc'\\)",
            id="symlink",
        ),
        pytest.param(
            hostile((entry("passwd", tarfile.LNKTYPE, "/etc/passwd"), b"")),
            "'passwd' is a hard link",
            id="hardlink",
        ),
        pytest.param(
            hostile((entry("tty", tarfile.CHRTYPE), b"")), "'tty' is a character device", id="dev"
        ),
        pytest.param(
            hostile((entry("pipe", tarfile.FIFOTYPE), b"")), "'pipe' is a fifo", id="fifo"
        ),
        pytest.param(
            hostile((entry("disk", tarfile.BLKTYPE), b"")), "'disk' is a block device", id="blk"
        ),
        pytest.param(
            hostile((entry("alias.py", tarfile.SYMTYPE, "ok.py"), b"")),
            "'alias.py' is a symbolic link \\(to 'ok.py'\\)",
            id="symlink-inside",
        ),
        pytest.param(
            hostile((entry("big.bin"), b"0" * 5000)),
            "more than 2500 bytes \\(at member 'big.bin'\\)",
            id="oversized-member",
        ),
        pytest.param(
            hostile(*[(entry(f"part{n}.bin"), b"0" * 900) for n in range(3)]),
            "at member 'part2.bin'",
            id="oversized-total",
        ),
        pytest.param(
            hostile(*[(entry(f"f{n}.py"), b"") for n in range(10)]),
            "more than 5 entries \\(at member 'f4.py'\\)",
            id="too-many-files",
        ),
        pytest.param(hostile((entry("ok.py"), b"again")), "'ok.py' clashes", id="duplicate"),
        pytest.param(
            hostile((entry("ok.py/inner"), b"x")), "'ok.py/inner' clashes", id="file-as-dir"
        ),
        pytest.param(b"not a tarball", "not a readable .tar.gz", id="garbage"),
    ],
)
def test_hostile_archives_are_refused_and_leave_nothing(
    tmp_path: Path, archive: bytes, reason: str
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()

    with pytest.raises(InvalidInput, match=reason) as caught:
        safe_extract(archive, cache / "bundle", max_bytes=2500, max_files=5)

    assert "\n" not in str(caught.value)
    assert os.listdir(cache) == []
    assert not (tmp_path / "escape.py").exists()


def test_the_hostile_helper_builds_an_archive_that_extracts(tmp_path: Path) -> None:
    safe_extract(hostile((entry("sub/fine.txt"), b"fine")), tmp_path / "out")

    assert tree(tmp_path / "out") == {"ok.py": (b"ok", False), "sub/fine.txt": (b"fine", False)}


def test_size_is_counted_on_the_bytes_read_not_only_on_headers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bundles._Budget, "check_declared", lambda *args: None)
    cache = tmp_path / "cache"
    cache.mkdir()

    with pytest.raises(InvalidInput, match="more than 2500 bytes \\(at member 'big.bin'\\)"):
        safe_extract(hostile((entry("big.bin"), b"0" * 5000)), cache / "b", max_bytes=2500)

    assert os.listdir(cache) == []


def test_a_destination_whose_real_path_leaves_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    root.mkdir()
    (root / "sneaky").symlink_to(tmp_path, target_is_directory=True)

    with pytest.raises(InvalidInput, match="'sneaky/x' would be written outside"):
        bundles._target_inside(str(root), ("sneaky", "x"), "sneaky/x")
    assert bundles._target_inside(str(root), ("a", "x"), "a/x") == root / "a" / "x"


ARCHIVE_READERS = re.compile(r"\b(extractall|extractfile|unpack_archive|zipfile|ZipFile|"
                             r"tarfile\.open|TarFile)\b")


def test_safe_extract_is_the_only_code_that_reads_archives() -> None:
    """Every archive is unpacked by safe_extract: a second extractor would be a second place
    to get the path, link and device checks right."""
    root = Path(__file__).resolve().parent.parent
    readers = sorted(path.relative_to(root).as_posix()
                     for folder in ("agent", "cli", "deploy", "queues", "scheduler")
                     for path in (root / folder).rglob("*.py")
                     if ARCHIVE_READERS.search(path.read_text()))
    assert readers == ["deploy/bundles.py"]
