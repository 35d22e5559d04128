"""Listing the files under a folder without being led astray by links or unprintable names.

A directory link is followed only when its target lies inside the folder being listed and was
not reached before (by its resolved path): ``NORMAL/up -> ..`` would otherwise list the dataset
again and again, and ``NORMAL/pn -> ../PNEUMONIA`` would file every pneumonia image a second
time under an invented class ``pn``. Links to single files are kept wherever they point (a
folder of links into a shared image store is a common way to build a dataset); a file reached
twice that way is an exact duplicate, which the splits group and the label-conflict check reports.

A link to a file that does not exist, or a loop of links, is passed over with the reason too.

File and folder names that are not valid UTF-8 are passed over with a reason rather than
listed: they cannot be written to the UTF-8 CSVs and manifests every run produces, and a name
that cannot be shown cannot be reported usefully either. Hidden files and folders are skipped
silently, as everywhere in bench.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

NOT_UTF8 = ("its name is not valid UTF-8: rename it (e.g. `convmv -f latin1 -t utf8 --notest -r FOLDER`); "
            "run files and manifests are UTF-8")


def printable(name: str) -> str:
    """``name`` with undecodable bytes shown as ``\\xNN`` (names from the disk may hold surrogates)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def walk_files(root: Path) -> tuple[list[str], list[tuple[str, str]]]:
    """``(files, passed_over)`` under ``root``, both sorted by walk order.

    ``files`` are POSIX paths relative to ``root`` of every non-hidden file; ``passed_over`` is
    ``(printable relative path, reason)`` for each link not followed and each name that is not UTF-8.
    """
    root = Path(root)
    top = root.resolve()
    seen: dict[Path, str] = {top: "."}
    files: list[str] = []
    passed: list[tuple[str, str]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        rel_dir = here.relative_to(root)
        # Real folders claim their resolved paths before links at the same level do, so a link to a
        # sibling is the one passed over, not the sibling.
        candidates = sorted((d for d in dirnames if not d.startswith(".")), key=lambda d: ((here / d).is_symlink(), d))
        kept = []
        for name in candidates:
            rel = (rel_dir / name).as_posix()
            reason = None if is_utf8(name) else NOT_UTF8
            if reason is None:
                reason = _claim(here / name, rel, top, seen)
            if reason is None:
                kept.append(name)
            else:
                passed.append((printable(rel), reason))
        dirnames[:] = sorted(kept)
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = (rel_dir / name).as_posix()
            reason = None if is_utf8(name) else NOT_UTF8
            if reason is None:
                reason = broken_link(here / name)
            if reason is None:
                files.append(rel)
            else:
                passed.append((printable(rel), reason))
    return files, passed


def broken_link(path: Path) -> str | None:
    """Why ``path`` is a link that leads to no file (dangling, or a loop of links), else None.

    Such a name looks like an image but has no bytes behind it; every later step (fingerprint,
    decode) would fail on it, so the walk passes over it with the reason.
    """
    if not os.path.islink(path):
        return None
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a link that leads back to itself (a loop of links): not followed"
        return f"a link to {printable(os.readlink(path))}, which does not exist: not followed"
    return None


def _claim(path: Path, rel: str, top: Path, seen: dict[Path, str]) -> str | None:
    """None if the walk should enter ``path`` (and it is now claimed), else why it must not."""
    target = path.resolve()
    if not target.is_relative_to(top):
        return f"a link to {printable(str(target))}, outside the dataset folder {printable(str(top))}: not followed"
    first = seen.get(target)
    if first is not None:
        where = "the dataset folder itself" if first == "." else printable(first)
        return f"leads to {where}, which is already listed: not followed"
    seen[target] = rel
    return None
