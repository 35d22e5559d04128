"""Download a file (resumable, checksummed) and unpack an archive without trusting it.

``download`` streams into ``<dest>.part`` and only renames into place once the whole file is
there and its sha256 (or md5, which is what Zenodo publishes) matches, so a file at ``dest`` is
always complete. An interrupted download keeps its ``.part`` and the next call asks the server
for the rest (HTTP Range).

``safe_extract`` treats an archive as hostile: member names that are absolute or climb out with
``..``, links, devices and size bombs are refused before anything lands outside the target. It
unpacks into a hidden temporary folder beside the target and renames it into place, with a
marker file written last, so a half-extracted folder never looks like a finished one.

Both take a file lock, the same way the image cache does, so two processes asking for the same
dataset at once download and unpack it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import lzma
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from filelock import FileLock, Timeout

from bench import __version__, paths
from bench.atomic import default_mode
from bench.errors import ConfigError, DataError, NetworkError

__all__ = ["MARKER", "archive_path", "download", "fetch_archive", "is_extracted", "safe_extract"]

log = logging.getLogger(__name__)

# Written last into an extracted folder: "<archive sha256>  <archive name>" (sha256sum format).
MARKER = ".bench-extracted"

DEFAULT_MAX_BYTES = 50 * 2**30
DEFAULT_MAX_FILES = 2_000_000

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)", re.IGNORECASE)

# What the network layer raises when a connection fails: URLError (refused, DNS, HTTPError),
# http.client's protocol errors (RemoteDisconnected, IncompleteRead) and plain socket errors
# and timeouts, which urllib lets through unwrapped once the request has been sent.
_NET_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError)


# --------------------------------------------------------------------------- download


def download(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    timeout: float = 30.0,
    chunk: int = 1 << 20,
    manual_hint: str = "",
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    Resumes from ``<dest>.part`` when one is left over. With ``sha256`` (or ``md5``, for
    publishers such as Zenodo that print only that; ``sha256`` wins when both are given) the
    file is verified (a mismatch deletes it and raises ``DataError``) and an existing ``dest``
    with that digest is returned without touching the network; without a digest an existing
    ``dest`` is trusted, since only a finished download is ever renamed there. ``timeout`` is
    per socket operation, not for the whole transfer. Connection problems raise
    ``NetworkError`` ending with ``manual_hint``.
    """
    dest = Path(dest)
    want = _checksum(sha256, md5)
    if _already_downloaded(dest, want):
        return dest
    if paths.offline():
        raise NetworkError(f"{dest} is not here and bench is offline ({paths.OFFLINE_ENV}=1 or --offline), so "
                           f"{url} was not downloaded. {manual_hint}".rstrip())
    _mkdir(dest.parent)
    with _lock(dest.with_name(f".{dest.name}.lock"), f"downloading {dest.name}"):
        if _already_downloaded(dest, want, quiet=True):  # another process finished it while we waited
            return dest
        part = dest.with_name(dest.name + ".part")
        algorithm = want.algorithm if want is not None else "sha256"
        got = _fetch_into(url, part, timeout=timeout, chunk=chunk, progress=progress, hint=manual_hint,
                          algorithm=algorithm)
        if want is not None and got != want.hexdigest:
            # Both are known bad now; leaving either would make the next call resume or trust it.
            part.unlink(missing_ok=True)
            dest.unlink(missing_ok=True)
            raise DataError(
                f"{dest} downloaded from {url} has the wrong {algorithm} (expected {want.hexdigest}, "
                f"actual {got}); the file was deleted, so running again downloads it afresh. If it keeps "
                f"happening, the file on the server has changed or the expected {algorithm} "
                "(datasets.toml, or the published weights checksum) is wrong."
            )
        os.replace(part, dest)
    return dest


def _already_downloaded(dest: Path, want: _Checksum | None, *, quiet: bool = False) -> bool:
    if not dest.is_file():
        return False
    if want is None:
        return True
    got = _digest_file(dest, want.algorithm)
    if got == want.hexdigest:
        return True
    if not quiet:
        log.warning("%s exists but its %s is %s, not %s; downloading it again", dest, want.algorithm, got,
                    want.hexdigest)
    return False


@dataclass(frozen=True)
class _Checksum:
    algorithm: str  # a hashlib name: sha256 or md5
    hexdigest: str  # lowercase


@dataclass(frozen=True)
class _Response:
    """An open response and where its body starts in the file."""

    body: BinaryIO | None  # None: the .part already holds the whole file (the server said 416)
    offset: int  # bytes of .part the body continues; 0 means start the file over
    total: int | None  # the file's full size, when the server said


def _fetch_into(url: str, part: Path, *, timeout: float, chunk: int, progress: bool, hint: str,
                algorithm: str = "sha256") -> str:
    """Fill ``part`` with the whole file (resuming what is there); return its digest (``algorithm``)."""
    have = part.stat().st_size if part.is_file() else 0
    resp = _open(url, have, timeout, part, hint)
    digest = hashlib.new(algorithm, usedforsecurity=False)
    if resp.offset:
        _hash_file_into(digest, part)
    if resp.body is None:
        return digest.hexdigest()

    received = resp.offset
    say = log.info if progress else log.debug
    if resp.offset:
        say("resuming %s at %s of %s", url, _size(resp.offset), _size(resp.total))
    else:
        say("downloading %s (%s) to %s", url, _size(resp.total), part.with_suffix(""))
    started = time.monotonic()
    with contextlib.closing(resp.body), _progress_bar(part, resp.total, resp.offset, progress) as advance:
        try:
            out = open(part, "ab" if resp.offset else "wb")
        except OSError as err:
            raise DataError(f"cannot write {part}: {err.strerror}. Check the folder is writable.") from err
        with out:
            while True:
                try:
                    data = resp.body.read(chunk)
                except _NET_ERRORS as err:
                    raise _network_error(url, _describe(err, timeout), part, hint) from err
                if not data:
                    break
                try:
                    out.write(data)
                except OSError as err:  # a full disk is the usual reason, and not the network's fault
                    raise DataError(f"cannot write {part}: {err.strerror}. Free some space and run again.") from err
                digest.update(data)
                received += len(data)
                advance(len(data))
    # http.client returns a short body without complaint when a server hangs up early.
    if resp.total is not None and received != resp.total:
        what = f"the connection closed after {_size(received)} of {_size(resp.total)}"
        raise _network_error(url, what, part, hint)
    say("downloaded %s in %.0f s", _size(received), time.monotonic() - started)
    return digest.hexdigest()


def _open(url: str, have: int, timeout: float, part: Path, hint: str) -> _Response:
    """Request ``url``, asking only for bytes ``have``.. when a partial file exists."""
    headers = {
        "User-Agent": f"bench/{__version__} (python-urllib)",
        # A byte range of a re-compressed body would be meaningless; ask for the file as stored.
        "Accept-Encoding": "identity",
    }
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        body = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        with contextlib.closing(err):
            if err.code == 416 and have:
                m = _UNSATISFIED_RANGE.match(err.headers.get("Content-Range", ""))
                if m and int(m.group(1)) == have:  # the earlier run got every byte but stopped before the rename
                    return _Response(None, have, have)
                log.info("the server refused to resume %s; starting it over", url)
                return _open(url, 0, timeout, part, hint)
            raise _network_error(url, f"the server answered HTTP {err.code} {err.reason}", part, hint) from err
    except ValueError as err:  # urllib's word for "this is not a URL"
        raise _network_error(url, f"not a URL that can be downloaded ({err})", part, hint) from err
    except _NET_ERRORS as err:
        raise _network_error(url, _describe(err, timeout), part, hint) from err

    length = _int_or_none(body.headers.get("Content-Length"))
    # Non-HTTP URLs (file://) have no status; they always send the whole file, like a 200.
    if have and getattr(body, "status", None) == 206:
        m = _CONTENT_RANGE.match(body.headers.get("Content-Range", ""))
        if m and int(m.group(1)) == have:
            total = int(m.group(3)) if m.group(3) != "*" else (have + length if length is not None else None)
            return _Response(body, have, total)
        body.close()  # a range we did not ask for: safer to start over than to splice it in
        log.info("the server sent an unexpected range for %s; starting it over", url)
        return _open(url, 0, timeout, part, hint)
    if have:
        log.info("the server does not support resuming %s; starting it over", url)
    return _Response(body, 0, length)


def _network_error(url: str, what: str, part: Path, hint: str) -> NetworkError:
    msg = f"Could not download {url}: {what}."
    if part.is_file() and part.stat().st_size:
        msg += f" The partial download is kept at {part}; run the same command again to resume it."
    if hint:
        msg += f" {hint}"
    return NetworkError(msg)


def _describe(err: BaseException, timeout: float) -> str:
    reason = err.reason if isinstance(err, urllib.error.URLError) else err
    if isinstance(reason, TimeoutError):
        return f"no data for {timeout:g} s (timed out)"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is the address right, and the server up?)"
    if isinstance(reason, OSError) and reason.strerror:
        return f"{reason.strerror} (check the address and your internet connection)"
    return str(reason) or type(reason).__name__


@contextlib.contextmanager
def _progress_bar(part: Path, total: int | None, done: int, progress: bool) -> Iterator:
    """Yield ``advance(n)``: a rich bar on a terminal, nothing otherwise (logs say start and end)."""
    if not (progress and _stderr_is_terminal()):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
    )
    with bar:
        task = bar.add_task(part.name.removesuffix(".part"), total=total, completed=done)
        yield lambda n: bar.advance(task, n)


def _stderr_is_terminal() -> bool:
    return sys.stderr is not None and sys.stderr.isatty()


# --------------------------------------------------------------------------- extract


def safe_extract(
    archive: Path,
    target: Path,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> list[Path]:
    """Unpack a zip or tar (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz) into ``target``; return its files.

    Anything suspicious in the archive raises ``DataError`` naming the archive and the member,
    and leaves ``target`` as it was. ``target`` must not exist, be empty, or be an earlier
    extraction (it has a ``MARKER``), which is replaced; any other folder is left alone.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise DataError(f"Archive {archive} does not exist (or is not a file).")
    # A symlinked target (a dataset folder moved to a bigger disk) is followed, not replaced.
    root = target.resolve() if target.is_symlink() else target.absolute()
    _check_replaceable(root, target)
    kind = _archive_kind(archive)
    _mkdir(root.parent)
    digest = _sha256_file(archive)
    log.info("extracting %s into %s", archive, target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.extracting-", dir=root.parent))
    tmp.chmod(default_mode(directory=True))  # mkdtemp's 0700 would stay on the renamed dataset folder
    try:
        unpack = _unpack_zip if kind == "zip" else _unpack_tar
        rels = unpack(archive, tmp.resolve(), _Limits(max_bytes, max_files))
        (tmp / MARKER).write_text(f"{digest}  {archive.name}\n")
        _install(tmp, root, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return [target.joinpath(*rel) for rel in rels]


def is_extracted(target: Path, sha256: str | None = None) -> bool:
    """True when ``target`` holds a finished extraction (of the archive with ``sha256``, if given)."""
    marker = Path(target) / MARKER
    try:
        text = marker.read_text()
    except OSError:
        return False
    want = _normalize_sha256(sha256)
    return want is None or text.split(maxsplit=1)[:1] == [want]


@dataclass
class _Limits:
    """What an archive may still write; counted down as members are unpacked."""

    max_bytes: int
    max_files: int
    declared: int = 0  # sum of the sizes member headers claim
    written: int = 0  # bytes actually written, which a lying header cannot hide
    members: int = 0


def _unpack_zip(archive: Path, root: Path, limits: _Limits) -> list[tuple[str, ...]]:
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{archive} is not a readable zip file ({err}). It may be a truncated download: delete it and fetch again.") from err
    with zf:
        infos = zf.infolist()
        # The central directory lists every member, so all names and sizes are checked before
        # the first byte is written.
        plan: list[tuple[zipfile.ZipInfo, tuple[str, ...], bool]] = []
        for info in infos:
            _count(archive, info.filename, info.file_size, limits)
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _refuse(archive, info.filename, f"is {_KIND_NAMES.get(kind, 'a special file')}")
            if info.flag_bits & 0x1:
                raise _refuse(archive, info.filename, "is encrypted (bench cannot use password-protected archives)")
            parts = _member_parts(archive, info.filename)
            if parts:
                plan.append((info, parts, info.filename.replace("\\", "/").endswith("/") or kind == stat.S_IFDIR))
        files: list[tuple[str, ...]] = []
        made: set[Path] = {root}
        for info, parts, is_dir in plan:
            dest = root.joinpath(*parts)
            if is_dir:
                _make_dir(archive, info.filename, dest, root, made)
                continue
            _make_dir(archive, info.filename, dest.parent, root, made)
            try:
                with zf.open(info) as src:
                    _write_member(archive, info.filename, src, dest, limits)
            except (zipfile.BadZipFile, EOFError, OSError, zlib.error, RuntimeError, NotImplementedError, ValueError) as err:
                raise _refuse(archive, info.filename, f"cannot be read ({err}); the archive is corrupt or truncated") from err
            files.append(parts)
    return files


def _unpack_tar(archive: Path, root: Path, limits: _Limits) -> list[tuple[str, ...]]:
    # A tar has no index: members are checked one at a time as the stream is read (reading it
    # twice would mean decompressing it twice). Whatever was written before a refusal is in
    # the temporary folder, which is deleted.
    files: list[tuple[str, ...]] = []
    made: set[Path] = {root}
    name = "(header)"
    try:
        with tarfile.open(archive, "r:*") as tf:
            for member in tf:
                name = member.name
                _count(archive, name, member.size if member.isreg() else 0, limits)
                if not (member.isreg() or member.isdir()):
                    raise _refuse(archive, name, f"is {_tar_kind(member)}")
                parts = _member_parts(archive, name)
                if not parts:
                    continue
                dest = root.joinpath(*parts)
                if member.isdir():
                    _make_dir(archive, name, dest, root, made)
                    continue
                _make_dir(archive, name, dest.parent, root, made)
                src = tf.extractfile(member)
                if src is None:  # cannot happen for a regular file; refuse rather than guess
                    raise _refuse(archive, name, "has no data")
                with src:
                    _write_member(archive, name, src, dest, limits)
                files.append(parts)
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError, ValueError) as err:
        # Bad gzip/bz2/xz streams raise these; our own DataErrors pass through untouched.
        raise DataError(
            f"{archive} could not be read at member {name!r} ({err}). It may be corrupt or a "
            "truncated download: delete it and fetch again."
        ) from err
    return files


def _count(archive: Path, name: str, size: int, limits: _Limits) -> None:
    limits.members += 1
    if limits.members > limits.max_files:
        raise _refuse(archive, name, f"is past the limit of {limits.max_files:,} members (max_files)")
    limits.declared += size
    if limits.declared > limits.max_bytes:
        raise _refuse(
            archive, name,
            f"brings the unpacked size to {_size(limits.declared)}, over the limit of {_size(limits.max_bytes)} "
            "(max_bytes); raise max_bytes if the dataset really is that large",
        )


def _member_parts(archive: Path, name: str) -> tuple[str, ...]:
    """The path components of a member name; refuses names that could land outside the target."""
    # Zips made on Windows sometimes use backslashes; treat them as separators so a
    # "..\\x" cannot slip past and folders come out as folders.
    norm = name.replace("\\", "/")
    if "\0" in norm:
        raise _refuse(archive, name, "has a NUL byte in its name")
    if norm.startswith("/") or re.match(r"[A-Za-z]:", norm):
        raise _refuse(archive, name, "has an absolute path")
    parts = PurePosixPath(norm).parts
    if ".." in parts:
        raise _refuse(archive, name, "has a '..' component that climbs out of the target")
    return tuple(p for p in parts if p not in ("", "."))


def _make_dir(archive: Path, name: str, path: Path, root: Path, made: set[Path]) -> None:
    if path in made:
        return
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # e.g. a file member and a folder member with the same name
        raise _refuse(archive, name, f"cannot be created ({err.strerror})") from err
    # Names were checked and no links are ever created, so this only fires if something
    # outside our control put a link in the temporary folder; it is cheap once per folder.
    if not path.resolve().is_relative_to(root):
        raise _refuse(archive, name, "resolves outside the target")
    made.add(path)


def _write_member(archive: Path, name: str, src: BinaryIO, dest: Path, limits: _Limits) -> None:
    try:
        out = open(dest, "wb")
    except OSError as err:  # e.g. a folder member of the same name came first
        raise _refuse(archive, name, f"cannot be created ({err.strerror})") from err
    with out:
        try:
            limits.written += _copy_capped(src, out, limits.max_bytes - limits.written)
        except _CapExceeded:
            raise _refuse(
                archive, name,
                f"unpacks to more than the limit of {_size(limits.max_bytes)} (max_bytes), more than its "
                "header declared; the archive is corrupt or malicious",
            ) from None
        except _WriteFailed as err:  # a full disk, not a bad archive
            raise DataError(f"Cannot write {dest} while extracting {archive}: {err.args[0].strerror}.") from err


class _CapExceeded(Exception):
    pass


class _WriteFailed(Exception):
    """An OSError from writing, kept apart from read errors, which mean a corrupt archive."""


def _copy_capped(src: BinaryIO, dst: BinaryIO, cap: int, chunk: int = 1 << 20) -> int:
    """Copy ``src`` to ``dst``; raise ``_CapExceeded`` before writing byte ``cap + 1``."""
    n = 0
    while data := src.read(chunk):
        n += len(data)
        if n > cap:
            raise _CapExceeded
        try:
            dst.write(data)
        except OSError as err:
            raise _WriteFailed(err) from err
    return n


_KIND_NAMES = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"a symbolic link (to {member.linkname!r})"
    if member.islnk():
        return f"a hard link (to {member.linkname!r})"
    if member.ischr():
        return "a character device"
    if member.isblk():
        return "a block device"
    if member.isfifo():
        return "a FIFO"
    return f"an entry of unsupported type {member.type!r}"


def _refuse(archive: Path, name: str, why: str) -> DataError:
    return DataError(
        f"Refusing to extract {archive}: member {name!r} {why}. Nothing was written to the target; "
        "if you trust this archive, unpack it by hand."
    )


def _archive_kind(archive: Path) -> str:
    lower = archive.name.lower()
    if lower.endswith(ZIP_SUFFIXES):
        return "zip"
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    # Names from URLs like .../download?id=3 say nothing; the first bytes do.
    if zipfile.is_zipfile(archive):
        return "zip"
    if tarfile.is_tarfile(archive):
        return "tar"
    raise DataError(
        f"{archive} is not an archive bench can unpack: expected a zip or a tar "
        f"({', '.join(ZIP_SUFFIXES + TAR_SUFFIXES)}). Unpack it by hand, or check the URL points at the archive."
    )


def _check_replaceable(root: Path, target: Path) -> None:
    """Refuse before any work when ``target`` is a folder someone else filled."""
    if not (root.exists() or root.is_symlink()):
        return
    if not root.is_dir():
        raise DataError(f"Cannot extract into {target}: it exists and is not a folder. Move it away and run again.")
    if (root / MARKER).is_file() or not any(root.iterdir()):
        return
    raise DataError(
        f"Cannot extract into {target}: the folder exists, is not empty and was not extracted by bench "
        f"(it has no {MARKER}). Move or delete it to download afresh, or use it as a local folder."
    )


def _install(tmp: Path, root: Path, target: Path) -> None:
    """Rename the finished ``tmp`` to ``root``; the only moment ``root`` changes."""
    _check_replaceable(root, target)
    if root.is_dir():
        if (root / MARKER).is_file():  # an earlier extraction (another archive version): replace it
            old = root.with_name(f".{root.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(root, old)
            os.replace(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
            return
        root.rmdir()  # empty, checked above
    os.replace(tmp, root)


# --------------------------------------------------------------------------- both


def fetch_archive(
    url: str,
    sha256: str | None,
    target: Path,
    *,
    archive_name: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: bool = True,
    manual_hint: str = "",
) -> Path:
    """Download the archive at ``url`` and unpack it into ``target``; return ``target``.

    The archive is kept in ``target.parent / "downloads" / target.name`` (named ``archive_name``,
    else after the URL), so a deleted ``target`` is rebuilt without the network. The folder is
    per target because two registry entries may name different files alike (``data.zip``): a
    checksum failure of one, which deletes its download, must not delete the other's. Returns at
    once when ``target`` already holds a finished extraction of that archive. ``file://`` URLs
    are read like any other (same checksum, same unpacking), for archives on a shared drive.
    """
    target = Path(target)
    want = _normalize_sha256(sha256)
    if is_extracted(target, want):
        return target
    archive = archive_path(url, target, archive_name)
    root = target.resolve() if target.is_symlink() else target.absolute()
    _check_replaceable(root, target)  # before a long download, not after it
    hint = f"You can download {url} yourself and save it as {archive}." + (f" {manual_hint}" if manual_hint else "")
    _mkdir(target.parent)
    with _lock(target.parent / f".{target.name}.lock", f"fetching {target.name}"):
        if is_extracted(target, want):
            return target
        # Extractions killed outright (power cut, SIGKILL) leave their temporary folders behind;
        # under the lock nobody else can be using them.
        for stale in root.parent.glob(f".{root.name}.extracting-*"):
            shutil.rmtree(stale, ignore_errors=True)
        download(url, archive, sha256=want, progress=progress, manual_hint=hint)
        safe_extract(archive, target, max_bytes=max_bytes)
    return target


def archive_path(url: str, target: Path, archive_name: str | None = None) -> Path:
    """Where ``fetch_archive`` keeps the archive at ``url`` that it unpacks into ``target``."""
    name = archive_name or _name_from_url(url)
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise DataError(f"Cannot tell what to call the file at {url}; pass archive_name (e.g. 'images.zip').")
    return Path(target).parent / "downloads" / Path(target).name / name


def _name_from_url(url: str) -> str:
    return urllib.parse.unquote(PurePosixPath(urllib.parse.urlsplit(url).path).name)


# --------------------------------------------------------------------------- helpers


def _normalize_sha256(sha256: str | None) -> str | None:
    if sha256 is None or sha256 == "":
        return None
    value = sha256.strip().lower().removeprefix("sha256:")
    if not _HEX64.fullmatch(value):
        raise ConfigError(f"sha256 must be 64 hex digits, got {sha256!r}.")
    return value


def _checksum(sha256: str | None, md5: str | None) -> _Checksum | None:
    """The digest to verify a download against: sha256 when given, else md5, else none."""
    value = _normalize_sha256(sha256)
    if value is not None:
        return _Checksum("sha256", value)
    if md5 is None or md5 == "":
        return None
    value = md5.strip().lower().removeprefix("md5:")
    if not _HEX32.fullmatch(value):
        raise ConfigError(f"md5 must be 32 hex digits, got {md5!r}.")
    return _Checksum("md5", value)


def _sha256_file(path: Path) -> str:
    return _digest_file(path, "sha256")


def _digest_file(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)  # integrity, not security: md5 is fine
    _hash_file_into(digest, path)
    return digest.hexdigest()


def _hash_file_into(digest: hashlib._Hash, path: Path) -> None:
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)


def _mkdir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"Cannot create the folder {path}: {err.strerror}. Check the path (BENCH_DATA) is writable.") from err


@contextlib.contextmanager
def _lock(path: Path, doing: str) -> Iterator[None]:
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process that is %s (lock %s)", doing, path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _int_or_none(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _size(n: float | None) -> str:
    if n is None:
        return "unknown size"
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"
