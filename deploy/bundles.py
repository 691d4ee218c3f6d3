"""Bundles: a deployment's source directory as one content-addressed archive.

The CLI packs the directory of the file passed to `deployment create`; the server stores the
bytes under their sha256; agents fetch them and unpack them into a cache directory named by that
hash. Because the name is the content, packing must be deterministic and unpacking must be safe
against an archive nobody vetted.

Format: gzip-compressed POSIX (pax) tar, built with the standard library only. Tar rather than zip
because tar carries Unix mode bits natively (the executable bit survives without `external_attr`
tricks), states each member's type explicitly (links, devices and fifos are visible and can be
refused), has no DOS timestamps (zip cannot store times before 1980, and they are local time),
and can be read as a stream (`r|gz`), so the size and file caps are enforced on the bytes as they
come out of the decompressor rather than on a central directory the sender wrote. Compressing the
whole stream also shrinks trees of many small source files better than zip's per-member deflate.

Determinism: regular files only (empty directories are not stored), sorted by relative POSIX path,
each with mtime 0, uid/gid 0, empty user/group names and mode 0o644, or 0o755 when the owner may
execute it; the gzip header has mtime 0 and no file name. The hash covers the compressed bytes, so
two machines with different zlib builds may produce different hashes for one tree: the cost is a
second upload, never a wrong run.

`.ostinatoignore` (at the bundle root) supports this subset of gitignore, matched with `fnmatch`
case-sensitively, one path segment at a time so `*` and `?` never cross a `/`:

- blank lines and lines starting with `#` are ignored; `\\#` and `\\!` escape a leading `#`/`!`;
  trailing spaces are dropped;
- `!pattern` re-includes what an earlier pattern excluded; the last matching line wins;
- `name/` matches directories only;
- a pattern with no `/` (other than a trailing one) matches a name at any depth; a pattern with a
  `/` is anchored to the root (a leading `/` only anchors);
- `*`, `?` and `[...]` within a segment; `**` as a whole segment matches any number of segments
  (`**/x`, `a/**/b`), and a trailing `/**` matches everything inside, but not the directory itself;
- as in git, a file cannot be re-included if a directory above it is excluded (excluded directories
  are never walked).

Some names are always skipped and cannot be re-included: version-control and virtualenv folders,
caches, `*.pyc`, `.DS_Store`, `.ostinato`.

Symlinks: a link to a file inside the root is stored as that file's content under the link's name;
a link to a directory is skipped (following them invites cycles and duplicate content); a link that
leaves the root, or dangles, is skipped. Skips are logged as warnings.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import secrets
import shutil
import stat
import tarfile
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO

from ostinato.deploy.errors import InvalidInput, PayloadTooLarge

__all__ = ["IGNORE_FILE", "PackedBundle", "pack_directory", "safe_extract", "sha256_hex"]

log = logging.getLogger(__name__)

IGNORE_FILE = ".ostinatoignore"

_MB = 1024 * 1024
_CHUNK = 1024 * 1024
_ALWAYS_SKIPPED_NAMES = frozenset(
    "__pycache__ .git .hg .svn .venv venv node_modules .DS_Store .ostinato".split()
)
_ALWAYS_SKIPPED_PATTERNS = ("*.pyc",)
_REFUSED_KINDS = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a fifo",
}


@dataclass(frozen=True)
class PackedBundle:
    """A packed bundle: its sha256 (lower-case hex), the .tar.gz bytes and its number of files."""

    sha256: str
    data: bytes = field(repr=False)
    file_count: int


def sha256_hex(data: bytes) -> str:
    """The lower-case hex sha256 of `data`: a bundle's identity on the server and in caches."""
    return hashlib.sha256(data).hexdigest()


# --- ignore rules -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rule:
    """One `.ostinatoignore` line, split into path segments for segment-wise fnmatch."""

    segments: tuple[str, ...]
    anchored: bool
    dir_only: bool
    negated: bool

    def matches(self, parts: tuple[str, ...], is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        if not self.anchored:
            return fnmatchcase(parts[-1], self.segments[0])
        return _match_segments(self.segments, parts)


def _match_segments(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    """Whether path segments match pattern segments, `**` standing for any number of segments."""
    if not pattern:
        return not parts
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        if not rest:
            return len(parts) > 0
        return any(_match_segments(rest, parts[i:]) for i in range(len(parts) + 1))
    return bool(parts) and fnmatchcase(parts[0], head) and _match_segments(rest, parts[1:])


def _parse_rule(line: str) -> _Rule | None:
    """The rule a line stands for, or None for blank lines and comments."""
    text = line.rstrip()
    if not text or text.startswith("#"):
        return None
    negated = text.startswith("!")
    text = text[1:] if negated or text.startswith(("\\#", "\\!")) else text
    dir_only = text.endswith("/")
    text = text.rstrip("/")
    anchored = "/" in text
    segments = tuple(part for part in text.split("/") if part)
    if not segments:
        return None
    return _Rule(segments=segments, anchored=anchored, dir_only=dir_only, negated=negated)


def _read_rules(base: Path) -> list[_Rule]:
    """The rules of the root's `.ostinatoignore`, in file order (none if there is no file)."""
    path = base / IGNORE_FILE
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [rule for rule in map(_parse_rule, lines) if rule is not None]


def _is_skipped(parts: tuple[str, ...], is_dir: bool, rules: Iterable[_Rule]) -> bool:
    """Whether a path stays out of the bundle: always-skipped names first, then the last rule."""
    name = parts[-1]
    if name in _ALWAYS_SKIPPED_NAMES or any(fnmatchcase(name, p) for p in _ALWAYS_SKIPPED_PATTERNS):
        return True
    skipped = False
    for rule in rules:
        if rule.matches(parts, is_dir):
            skipped = not rule.negated
    return skipped


# --- packing ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _SourceFile:
    """A file to store: its path in the bundle and where its bytes are read from."""

    name: str
    source: Path
    size: int
    executable: bool


def pack_directory(
    root: Path, *, max_bytes: int = 50 * _MB, max_files: int = 10_000
) -> PackedBundle:
    """Pack `root` into a deterministic .tar.gz, refusing trees over the size or file cap.

    The caps are checked on the file list before any content is read, so an oversized tree fails
    fast with a message that names what to leave out.
    """
    base = _resolve_root(root)
    files = _collect(base, _read_rules(base))
    _check_caps(Path(os.path.abspath(root)), files, max_bytes, max_files)
    data = _archive(files)
    return PackedBundle(sha256=sha256_hex(data), data=data, file_count=len(files))


def _resolve_root(root: Path) -> Path:
    """The real path of the root, so link targets can be compared against it."""
    if not root.is_dir():
        raise InvalidInput(f"cannot pack {root}: not a directory")
    return root.resolve()


def _collect(base: Path, rules: Sequence[_Rule]) -> list[_SourceFile]:
    """Every file that goes into the bundle, sorted by bundle path, whatever the listing order."""
    found: list[_SourceFile] = []
    pending: list[tuple[str, ...]] = [()]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(base.joinpath(*rel_dir)) as entries:
            for entry in entries:
                parts = (*rel_dir, entry.name)
                source, is_dir = _classify(base, entry, parts)
                if source is None or _is_skipped(parts, is_dir, rules):
                    continue
                if is_dir:
                    pending.append(parts)
                else:
                    found.append(_source_file(parts, source))
    return sorted(found, key=lambda f: f.name)


def _classify(
    base: Path, entry: os.DirEntry[str], parts: tuple[str, ...]
) -> tuple[Path | None, bool]:
    """Where an entry's content comes from and whether it is a directory; None to leave it out."""
    if entry.is_symlink():
        return _link_source(base, Path(entry.path), "/".join(parts)), False
    if entry.is_dir(follow_symlinks=False):
        return Path(entry.path), True
    if entry.is_file(follow_symlinks=False):
        return Path(entry.path), False
    return None, False


def _link_source(base: Path, link: Path, name: str) -> Path | None:
    """The file a symlink stands for if it stays inside the root; None (and a warning) otherwise."""
    target = Path(os.path.realpath(link))
    if not target.is_relative_to(base):
        reason = "it points outside the bundle root"
    elif target.is_dir():
        reason = "it points to a directory"
    elif not target.is_file():
        reason = "it does not point to a regular file"
    else:
        return target
    log.warning("bundle: skipped symlink %s because %s", name, reason)
    return None


def _source_file(parts: tuple[str, ...], source: Path) -> _SourceFile:
    """A file's bundle entry; size and executable bit come from the file itself, not a link."""
    info = source.stat()
    executable = bool(info.st_mode & stat.S_IXUSR)
    return _SourceFile(
        name="/".join(parts), source=source, size=info.st_size, executable=executable
    )


def _check_caps(root: Path, files: Sequence[_SourceFile], max_bytes: int, max_files: int) -> None:
    """Refuse a tree over a cap, naming what makes it big and where to leave it out."""
    advice = f"list what to leave out in {root / IGNORE_FILE}"
    total = sum(f.size for f in files)
    if total > max_bytes:
        largest = sorted(files, key=lambda f: (-f.size, f.name))[:3]
        names = ", ".join(f"{f.name} ({_megabytes(f.size)})" for f in largest)
        raise PayloadTooLarge(
            f"bundle of {root} is {_megabytes(total)}, over the {_megabytes(max_bytes)} cap; "
            f"largest files: {names}; {advice}"
        )
    if len(files) > max_files:
        raise PayloadTooLarge(
            f"bundle of {root} has {len(files)} files, over the {max_files}-file cap; "
            f"most files in: {_crowded_folders(files)}; {advice}"
        )


def _crowded_folders(files: Sequence[_SourceFile]) -> str:
    """The top-level folders holding the most files, e.g. `data/ (9000 files), ./ (12 files)`."""
    counts = Counter(f.name.split("/", 1)[0] + "/" if "/" in f.name else "./" for f in files)
    top = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:3]
    return ", ".join(f"{folder} ({count} files)" for folder, count in top)


def _megabytes(size: int) -> str:
    """A size as the CLI prints it: MB with one decimal, or exact bytes below 0.1 MB."""
    return f"{size / _MB:.1f} MB" if size >= _MB // 10 else f"{size} bytes"


def _archive(files: Sequence[_SourceFile]) -> bytes:
    """The .tar.gz bytes of `files`, with every header field that varies by machine fixed."""
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, mtime=0, compresslevel=9) as gz:
        with tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for file in files:
                _add_file(tar, file)
    return buffer.getvalue()


def _add_file(tar: tarfile.TarFile, file: _SourceFile) -> None:
    """Append one file with a normalised header; its size is what was read, not what was stat'ed."""
    content = file.source.read_bytes()
    info = tarfile.TarInfo(file.name)
    info.type = tarfile.REGTYPE
    info.size = len(content)
    info.mtime = 0
    info.mode = 0o755 if file.executable else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(content))


# --- extraction ---------------------------------------------------------------------------------


@dataclass
class _Budget:
    """What an extraction has written so far, counted as bytes actually come out of the archive."""

    max_bytes: int
    max_files: int
    bytes_written: int = 0
    entries: int = 0

    def take_entry(self, name: str) -> None:
        self.entries += 1
        if self.entries > self.max_files:
            raise InvalidInput(
                f"bundle has more than {self.max_files} entries (at member {name!r})"
            )

    def check_declared(self, size: int, name: str) -> None:
        """Fail before reading a member whose header already says it will not fit."""
        if self.bytes_written + size > self.max_bytes:
            self._refuse(name)

    def spend(self, size: int, name: str) -> None:
        self.bytes_written += size
        if self.bytes_written > self.max_bytes:
            self._refuse(name)

    def _refuse(self, name: str) -> None:
        raise InvalidInput(
            f"bundle unpacks to more than {_megabytes(self.max_bytes)} (at member {name!r})"
        )


def safe_extract(
    data: bytes,
    dest: Path,
    *,
    expected_sha256: str | None = None,
    max_bytes: int = 200 * _MB,
    max_files: int = 10_000,
) -> None:
    """Unpack a bundle into `dest`, all or nothing, refusing anything that could escape `dest`.

    The archive is unpacked into a hidden sibling and renamed into place, so concurrent agents on
    one host never see a half-written cache entry: if `dest` already exists, another extraction
    won and this one returns without touching it. On any error nothing is left behind.
    """
    if expected_sha256 is not None:
        _verify(data, expected_sha256)
    if dest.is_dir():
        return
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.tmp-{secrets.token_hex(8)}"
    staging.mkdir()
    try:
        _extract_all(data, staging, _Budget(max_bytes, max_files))
        _publish(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _verify(data: bytes, expected_sha256: str) -> None:
    """Refuse bytes whose hash is not the one they were fetched under."""
    actual = sha256_hex(data)
    if actual != expected_sha256.strip().lower():
        raise InvalidInput(
            f"bundle content does not match sha256 {expected_sha256} (got {actual}); "
            "the download is corrupt or the server stored the wrong bytes"
        )


def _publish(staging: Path, dest: Path) -> None:
    """Rename the finished tree into place; if another extraction got there first, keep theirs."""
    try:
        os.rename(staging, dest)
    except OSError:
        if not dest.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)


def _extract_all(data: bytes, staging: Path, budget: _Budget) -> None:
    """Stream the archive member by member, so caps hold on what is read, not on what is claimed."""
    root = os.path.realpath(staging)
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r|gz") as tar:
            for member in tar:
                _extract_member(tar, member, root, budget)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise InvalidInput(f"bundle is not a readable .tar.gz archive: {exc}") from exc


def _extract_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, root: str, budget: _Budget
) -> None:
    """Check one member and write it under `root`; any doubt is an InvalidInput naming it."""
    parts = _member_parts(member.name)
    _check_kind(member)
    budget.take_entry(member.name)
    if not parts:
        return
    target = _target_inside(root, parts, member.name)
    try:
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            budget.check_declared(member.size, member.name)
            target.parent.mkdir(parents=True, exist_ok=True)
            _write_file(tar, member, target, budget)
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        raise InvalidInput(f"bundle member {member.name!r} clashes with an earlier member") from exc


def _member_parts(name: str) -> tuple[str, ...]:
    """A member's path segments, refusing absolute paths and `..` (with either separator)."""
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise InvalidInput(f"bundle member {name!r} has an absolute path")
    if ".." in name.replace("\\", "/").split("/"):
        raise InvalidInput(f"bundle member {name!r} has a '..' component")
    return tuple(part for part in PurePosixPath(name).parts if part != ".")


def _check_kind(member: tarfile.TarInfo) -> None:
    """Allow regular files and directories only: links and special files could reach outside."""
    if member.isreg() or member.isdir():
        return
    kind = _REFUSED_KINDS.get(member.type, f"of unsupported type {member.type!r}")
    target = f" (to {member.linkname!r})" if member.issym() or member.islnk() else ""
    raise InvalidInput(
        f"bundle member {member.name!r} is {kind}{target}; bundles hold only files and directories"
    )


def _target_inside(root: str, parts: tuple[str, ...], name: str) -> Path:
    """Where a member goes, checked against the real path so nothing resolves outside the root."""
    target = os.path.realpath(os.path.join(root, *parts))
    if os.path.commonpath([root, target]) != root:
        raise InvalidInput(f"bundle member {name!r} would be written outside the bundle directory")
    return Path(target)


def _write_file(
    tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, budget: _Budget
) -> None:
    """Copy a member's bytes into a new file (never over an existing one), counting as it goes."""
    source = tar.extractfile(member)
    if source is None:
        raise InvalidInput(f"bundle member {member.name!r} has no readable content")
    with source, open(target, "xb") as out:
        for chunk in _chunks(source):
            budget.spend(len(chunk), member.name)
            out.write(chunk)
    target.chmod(0o755 if member.mode & stat.S_IXUSR else 0o644)


def _chunks(source: IO[bytes]) -> Iterator[bytes]:
    while chunk := source.read(_CHUNK):
        yield chunk
