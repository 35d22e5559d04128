"""Fetch a dataset archive (through ``bench.download``) and unpack it without trusting it.

``safe_extract`` treats an archive as hostile: member names that are absolute or climb out with
``..``, links, devices and size bombs are refused before anything lands outside the target. It
unpacks into a hidden temporary folder beside the target and renames it into place, with a
marker file written last, so a half-extracted folder never looks like a finished one.

Unpacking takes a file lock, the same way the image cache does, so two processes asking for the
same dataset at once unpack it once.
"""

from __future__ import annotations

import logging
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from bench.atomic import default_mode
from bench.download import (
    download,
    file_lock,
    human_size,
    make_dir,
    normalize_sha256,
    sha256_file,
)
from bench.errors import DataError

__all__ = ["MARKER", "archive_path", "fetch_archive", "is_extracted", "safe_extract"]

log = logging.getLogger(__name__)

# Written last into an extracted folder: "<archive sha256>  <archive name>" (sha256sum format).
MARKER = ".bench-extracted"

DEFAULT_MAX_BYTES = 50 * 2**30
DEFAULT_MAX_FILES = 2_000_000

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)



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
    make_dir(root.parent)
    digest = sha256_file(archive)
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
    want = normalize_sha256(sha256)
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
            f"brings the unpacked size to {human_size(limits.declared)}, over the limit of {human_size(limits.max_bytes)} "
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
                f"unpacks to more than the limit of {human_size(limits.max_bytes)} (max_bytes), more than its "
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
    want = normalize_sha256(sha256)
    if is_extracted(target, want):
        return target
    archive = archive_path(url, target, archive_name)
    root = target.resolve() if target.is_symlink() else target.absolute()
    _check_replaceable(root, target)  # before a long download, not after it
    hint = f"You can download {url} yourself and save it as {archive}." + (f" {manual_hint}" if manual_hint else "")
    make_dir(target.parent)
    with file_lock(target.parent / f".{target.name}.lock", f"fetching {target.name}"):
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
