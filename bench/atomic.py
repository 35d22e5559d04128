"""Writing an output file so that a reader sees the old version or the new one, never half of either.

The content goes to a temporary file beside the target and is renamed over it (atomic on POSIX).
If writing fails part-way (a name that cannot be encoded, a full disk, Ctrl-C), the temporary
file is removed and the target keeps its previous content, or stays absent.

Every file bench writes whole goes through here, so every one also gets the mode the user's
umask gives a new file (``tempfile`` makes its temporaries 0600, and its folders 0700, which the
rename would otherwise keep). A temporary's name carries the writer's host and pid
(``<name>.<host>-<pid>.<random>.tmp``), so one left behind by a killed writer (``kill -9``, a
power cut: no ``finally`` runs) is recognised and removed by ``remove_stale_temporaries``
without touching a live writer's.

A file that a library writes by name and recognises by its suffix (Keras saves only to a name
ending in ``.keras``) gets a temporary that ends in the same suffix (``keep_suffix``); with
``durable`` its content is flushed to the disk before the rename, so a model is either whole
under its name or absent.
"""

from __future__ import annotations

import errno
import os
import re
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from bench.errors import ConfigError

__all__ = ["atomic_path", "check_writable", "cut_back", "default_mode", "fsync_file", "remove_stale_temporaries", "write_atomic",
           "write_text_atomic"]

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
_TEMP = re.compile(r"\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[^.]*\.tmp(?:\.[A-Za-z0-9]+)?$")


def default_mode(directory: bool = False) -> int:
    """The mode ``open``/``mkdir`` would give a new file (or folder) under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


@contextmanager
def atomic_path(path: Path, *, keep_suffix: bool = False, durable: bool = False) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed onto ``path`` if the block succeeds.

    ``keep_suffix``: the temporary ends in ``path``'s suffix too (for writers that insist on it).
    ``durable``: the content is fsynced before the rename, so a power cut cannot leave the new name
    pointing at blocks never written.
    """
    path = Path(path)
    suffix = ".tmp" + (path.suffix if keep_suffix else "")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{path.name}.{_HOST}-{os.getpid()}.", suffix=suffix)
    os.close(fd)
    try:
        os.chmod(tmp, default_mode())
        yield Path(tmp)
        if durable:
            fsync_file(Path(tmp))
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT) and not err.filename:
            # Keras and zipfile raise it without a name: the message should say which file failed.
            raise OSError(err.errno, err.strerror or os.strerror(err.errno), str(path)) from err
        raise
    finally:
        Path(tmp).unlink(missing_ok=True)


def fsync_file(path: Path) -> None:
    """Flush a closed file's content to the disk (a full disk can surface only here)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, write: Callable[[IO[Any]], None], *, binary: bool = False) -> Path:
    """Call ``write(f)`` on a file (UTF-8 text, or bytes) that replaces ``path`` only once it is complete."""
    with atomic_path(path) as tmp, (open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline="")) as f:
        write(f)
    return Path(path)


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporaries in ``folder`` whose writer on this host is dead; return them.

    Those of other hosts (a shared folder) are left: their pids mean nothing here.
    """
    removed = []
    for tmp in Path(folder).glob("*.tmp*"):
        m = _TEMP.search(tmp.name)
        if m and m["host"] == _HOST and not _alive(int(m["pid"])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def check_writable(path: Path, what: str, fix: str, *, folder: bool = False, example: str = "") -> Path:
    """``path`` if a file (or, with ``folder``, files in a folder) can be written there; a ConfigError now if not.

    Called before the work whose result goes there, so a read-only place, a folder given for a file
    or a path under a regular file is said at once, not after everything was computed. The test is
    creating a temporary file in the nearest existing folder (an atomic write's rename needs only
    that): permission bits say nothing for root, and a read-only mount only shows on writing.
    ``what`` names the option or variable, ``fix`` says what to do; ``example`` is a file name to
    suggest when a folder was given for a file.
    """
    path = Path(path).expanduser()
    if not folder and path.is_dir():
        hint = f" (e.g. {path / example})" if example else ""
        raise ConfigError(f"{what} {path} is a folder: give the name of a file to write{hint}.")
    if folder and path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path} is a file, not a folder. {fix}")
    probe = path if folder else path.parent
    while not probe.exists() and not probe.is_symlink() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what} {path} cannot be created: {probe} is a file, not a folder. {fix}")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise ConfigError(f"{what} {path} cannot be written: {probe}: {err.strerror or err}. {fix}") from None
    return path


def cut_back(path: Path, end: int) -> Path:
    """Truncate an append-only file to its first ``end`` bytes, keeping the file as it was beside it
    (``FILE.torn-<time>``); return that copy. For a tail torn by a writer killed mid-append: the
    next append would otherwise glue its record onto the torn one."""
    import shutil
    import time

    path = Path(path)
    copy = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%d-%H%M%S')}")
    shutil.copy2(path, copy)
    with open(path, "r+b") as f:
        f.truncate(end)
        os.fsync(f.fileno())
    return copy
