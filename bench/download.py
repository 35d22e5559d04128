"""Download a file: resumable, checksummed, locked. A leaf that every room may use (datasets in
``bench.data.fetch``, weights in ``bench.models.store``), so neither imports the other.

``download`` streams into ``<dest>.part`` and only renames into place once the whole file is
there and its sha256 (or md5, which is what Zenodo publishes) matches, so a file at ``dest`` is
always complete. An interrupted download keeps its ``.part`` and the next call asks the server
for the rest (HTTP Range). It takes a file lock, so two processes asking for the same file at
once download it once.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout

from bench import __version__, paths
from bench.errors import ConfigError, DataError, NetworkError

__all__ = ["download", "file_lock", "human_size", "make_dir", "normalize_sha256", "sha256_file"]

log = logging.getLogger(__name__)

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
    make_dir(dest.parent)
    with file_lock(dest.with_name(f".{dest.name}.lock"), f"downloading {dest.name}"):
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
        say("resuming %s at %s of %s", url, human_size(resp.offset), human_size(resp.total))
    else:
        say("downloading %s (%s) to %s", url, human_size(resp.total), part.with_suffix(""))
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
        what = f"the connection closed after {human_size(received)} of {human_size(resp.total)}"
        raise _network_error(url, what, part, hint)
    say("downloaded %s in %.0f s", human_size(received), time.monotonic() - started)
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


# --------------------------------------------------------------------------- helpers


def normalize_sha256(sha256: str | None) -> str | None:
    if sha256 is None or sha256 == "":
        return None
    value = sha256.strip().lower().removeprefix("sha256:")
    if not _HEX64.fullmatch(value):
        raise ConfigError(f"sha256 must be 64 hex digits, got {sha256!r}.")
    return value


def _checksum(sha256: str | None, md5: str | None) -> _Checksum | None:
    """The digest to verify a download against: sha256 when given, else md5, else none."""
    value = normalize_sha256(sha256)
    if value is not None:
        return _Checksum("sha256", value)
    if md5 is None or md5 == "":
        return None
    value = md5.strip().lower().removeprefix("md5:")
    if not _HEX32.fullmatch(value):
        raise ConfigError(f"md5 must be 32 hex digits, got {md5!r}.")
    return _Checksum("md5", value)


def sha256_file(path: Path) -> str:
    return _digest_file(path, "sha256")


def _digest_file(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm, usedforsecurity=False)  # integrity, not security: md5 is fine
    _hash_file_into(digest, path)
    return digest.hexdigest()


def _hash_file_into(digest: hashlib._Hash, path: Path) -> None:
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)


def make_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"Cannot create the folder {path}: {err.strerror}. Check the path (BENCH_DATA) is writable.") from err


@contextlib.contextmanager
def file_lock(path: Path, doing: str) -> Iterator[None]:
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


def human_size(n: float | None) -> str:
    if n is None:
        return "unknown size"
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("KB", "MB", "GB"):
        n /= 1000
        if n < 1000 or unit == "GB":
            break
    return f"{n:.1f} {unit}"
