"""What identifies a dataset's files: relative path, byte size and a digest of the content.

Not where or when they were unpacked: the same archive staged onto two nodes (the SLURM recipe)
gets new modification times on each, and a fingerprint over mtimes called that "a different
setup". Reading every byte costs one pass over the data, so each file's digest is kept in
BENCH_CACHE/digests/, keyed by the file's path, size and mtime: a file that has not been touched
is never read again, and a touched one is read once more.

``listing`` and ``differences`` say which files differ when two copies do not match; ``pack``
makes a listing small enough for a study attribute (the one thing machines share).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from bench import paths
from bench.atomic import write_text_atomic
from bench.data.index import DatasetIndex

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
# A packed listing stays under MySQL's TEXT limit (64 KiB) with room for the JSON around it; a
# larger one is packed per folder instead (which folders differ, rather than which files).
MAX_PACKED = 48_000


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    except OSError as err:  # the decoder lists the file as unreadable, with the reason
        return f"unreadable-{err.errno}"
    return h.hexdigest()


def _store(root: Path) -> Path:
    key = hashlib.sha256(str(root.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return paths.cache_dir() / "digests" / f"{key}.json"


def content_digests(root: Path, rels: Sequence[str], workers: int = 8) -> list[tuple[int, str]]:
    """``(byte size, content digest)`` of each ``root / rel``, read only where path, size or mtime changed."""
    store = _store(root)
    try:
        known: dict[str, list] = json.loads(store.read_text())
    except (OSError, ValueError):
        known = {}
    stats = [os.stat(root / rel) for rel in rels]
    out: list[tuple[int, str] | None] = [None] * len(rels)
    todo = []
    for i, (rel, st) in enumerate(zip(rels, stats)):
        hit = known.get(rel)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            out[i] = (st.st_size, hit[2])
        else:
            todo.append(i)
    if todo:
        # hashlib releases the GIL on large buffers: threads overlap reading and hashing.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for i, digest in zip(todo, pool.map(lambda i: _digest(root / rels[i]), todo)):
                out[i] = (stats[i].st_size, digest)
                if not digest.startswith("unreadable"):
                    known[rels[i]] = [stats[i].st_size, stats[i].st_mtime_ns, digest]
        try:
            store.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(store, json.dumps(known))
        except OSError as err:  # a cache that cannot be kept only costs the reading next time
            log.warning("could not keep the file digests in %s: %s", store, err)
    return [o for o in out if o is not None]


def listing(index: DatasetIndex) -> dict[str, str] | None:
    """``{relative path: "bytes:digest:label"}``, what two copies of a dataset are compared by.

    None for a source whose pixels are not one file per row (MedMNIST's npz is fingerprinted whole).
    """
    if index.pixels is not None:
        return None
    labels = [index.classes[i] for i in index.labels]
    return {rel: f"{size}:{digest[:16]}:{label}"
            for rel, (size, digest), label in zip(index.paths, content_digests(index.root, index.paths), labels)}


def pack(files: dict[str, str], limit: int = MAX_PACKED) -> str:
    """A compact text of a listing: per file when up to ``limit`` characters, else per folder."""
    text = _encode("F", files)
    if len(text) <= limit:
        return text
    folders: dict[str, Any] = {}  # folder -> running blake2b
    for rel in sorted(files):
        folder = str(PurePosixPath(rel).parent) + "/"
        folders.setdefault(folder, hashlib.blake2b(digest_size=8)).update(f"{rel}\0{files[rel]}\n".encode(
            "utf-8", "surrogateescape"))
    return _encode("D", {k: h.hexdigest() for k, h in folders.items()})


def _encode(kind: str, entries: dict[str, str]) -> str:
    raw = "\n".join(f"{k}\t{v}" for k, v in sorted(entries.items())).encode("utf-8", "surrogateescape")
    return kind + base64.b64encode(zlib.compress(raw, 9)).decode("ascii")


def unpack(text: str) -> tuple[str, dict[str, str]]:
    """``("files" | "folders", entries)`` of a ``pack`` text."""
    raw = zlib.decompress(base64.b64decode(text[1:])).decode("utf-8", "surrogateescape")
    entries = dict(line.split("\t", 1) for line in raw.split("\n") if line)
    return ("files" if text[0] == "F" else "folders"), entries


def differences(recorded: str, files: dict[str, str], shown: int = 10) -> str:
    """Which files (or folders) of ``files`` differ from the ``pack``ed ``recorded`` listing, in words."""
    kind, theirs = unpack(recorded)
    mine = files if kind == "files" else unpack(pack(files, limit=-1))[1]
    only_theirs = sorted(set(theirs) - set(mine))
    only_mine = sorted(set(mine) - set(theirs))
    changed = sorted(k for k in set(theirs) & set(mine) if theirs[k] != mine[k])

    def some(names: list[str]) -> str:
        more = f" and {len(names) - shown} more" if len(names) > shown else ""
        return ", ".join(names[:shown]) + more

    parts = [f"{len(names)} {what}: {some(names)}" for names, what in (
        (only_theirs, f"{kind} only in the recorded copy"), (only_mine, f"{kind} only in this copy"),
        (changed, f"{kind} whose content, size or label differ"))
        if names]
    return "; ".join(parts) or "every file matches by path, size, content and label"

