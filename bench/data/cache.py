"""Decode once: a uint8 image array per (dataset fingerprint, size, resize mode), memory-mapped.

The fingerprint covers every file's relative path, byte size and content digest (and label), so
any change to the dataset gives a new cache entry rather than stale pixels, while the same files
staged elsewhere or at another time match (``bench.data.digests`` keeps the digests, so a file is
read again only when its size or mtime changes). Where the pixels come from is the
index's ``pixels`` source: image files by default (decoded here), or whatever a source kind
puts there instead (MedMNIST's npz arrays, read by ``bench.data.medmnist``, fingerprinted by the
npz file rather than by a stat() per image). The array is written to a temporary
file and renamed into place (atomic on POSIX), under a file lock, so two processes asking for
the same cache at once decode it once and never see half a file.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from filelock import FileLock

from bench import paths
from bench.atomic import atomic_path, check_writable, remove_stale_temporaries, write_text_atomic
from bench.data import digests, images
from bench.data.index import DatasetIndex, OnError
from bench.data.room import check_room
from bench.errors import DataError

log = logging.getLogger(__name__)

# Bump when decoding changes what pixels come out, so old caches are not reused.
DECODER_VERSION = 1


@dataclass(frozen=True)
class ImageCache:
    """The decoded images of one index, row i = ``index.paths[i]``."""

    array: np.ndarray  # (n, size, size, 3) uint8, memory-mapped read-only
    key: str
    path: Path
    fingerprint: str
    failed: dict[int, str]  # row -> reason, for files that could not be decoded (rows are zeros)
    row_hashes: tuple[str, ...]  # digest of each decoded image, for exact-duplicate detection
    built: bool  # True when this call decoded the images, False when it read an existing cache
    source: str = ""  # where the pixels came from (which files), for the manifest

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


class ImageFiles:
    """The default pixel source: one image file per row, at ``index.root / path``."""

    def fingerprint(self, index: DatasetIndex, size: int | None) -> str:
        """Digest of relative paths, sizes and contents (and labels: a relabelled file is a new dataset)."""
        h = hashlib.sha256()
        for rel, label, (nbytes, digest) in zip(index.paths, index.labels,
                                                digests.content_digests(index.root, index.paths)):
            line = f"{rel}\0{nbytes}\0{digest}\0{index.classes[label]}\n"
            # surrogateescape: a name that is not UTF-8 hashes as its own bytes, losslessly.
            h.update(line.encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    def fill(self, index: DatasetIndex, size: int, resize: str, out: np.ndarray, on_error: OnError,
             workers: int | None) -> str:
        files = [index.root / p for p in index.paths]
        images.decode_many(files, size, resize, workers=workers, out=out,
                           on_error=lambda i, err: on_error(i, err.reason))
        return f"{len(files)} image files under {index.root}"


FILES = ImageFiles()


def fingerprint(index: DatasetIndex, size: int | None = None) -> str:
    """Digest of what the cache of ``index`` at ``size`` is made from (see the pixel source)."""
    return (index.pixels or FILES).fingerprint(index, size)


def _key(index: DatasetIndex, fp: str, size: int, resize: str) -> str:
    return f"{index.name}-{fp[:16]}-{size}px-{resize}-v{DECODER_VERSION}"


def _load(npy: Path, meta_path: Path, key: str, fp: str, built: bool) -> ImageCache:
    meta = json.loads(meta_path.read_text())
    array = np.load(npy, mmap_mode="r")
    return ImageCache(
        array=array,
        key=key,
        path=npy,
        fingerprint=fp,
        failed={int(k): v for k, v in meta["failed"].items()},
        row_hashes=tuple(meta["row_hashes"]),
        built=built,
        source=meta.get("source", ""),
    )


def _reserve(path: Path) -> None:
    """Allocate every block of the (sparse) memmap file now.

    Writing a sparse file's pages on a full disk would kill the process with SIGBUS; reserving
    first turns that into an OSError (ENOSPC) here. A failed ``posix_fallocate`` on ext4 keeps what
    it got, often all the free space, so the file is cut back to nothing before the error goes on:
    other processes (and the disk stderr may be on) get their room back at once.
    """
    with open(path, "r+b") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, os.fstat(f.fileno()).st_size)
        except OSError:
            f.truncate(0)
            raise


def _build(index: DatasetIndex, size: int, resize: str, npy: Path, meta_path: Path, workers: int | None) -> None:
    n = len(index)
    failed: dict[int, str] = {}
    with atomic_path(npy) as tmp:  # the rename onto the .npy is the commit point: readers look for it
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))
        try:
            _reserve(tmp)
        except OSError:
            # The map would keep the unlinked temporary's blocks until the process ends (the
            # traceback holds this frame): close it before anything is reported.
            del out
            raise
        source = (index.pixels or FILES).fill(index, size, resize, out, failed.__setitem__, workers)
        out.flush()
        hashes = [hashlib.blake2b(out[i].tobytes(), digest_size=16).hexdigest() for i in range(n)]
        del out
        meta = {"paths": list(index.paths), "size": size, "resize": resize, "failed": failed, "row_hashes": hashes,
                "source": source}
        write_text_atomic(meta_path, json.dumps(meta))


def load_or_build(
    index: DatasetIndex, size: int, resize: str = "squash", *, cache_dir: Path | None = None, workers: int | None = None
) -> ImageCache:
    """The decoded images of ``index`` at ``size``; decodes only when no valid cache exists."""
    root = cache_dir or paths.cache_dir()
    fp = fingerprint(index, size)
    key = _key(index, fp, size, resize)
    npy, meta_path = root / f"{key}.npy", root / f"{key}.json"
    if npy.is_file() and meta_path.is_file():  # a cache built earlier may be read from a read-only place
        return _load(npy, meta_path, key, fp, built=False)
    check_writable(root, "the image cache folder (BENCH_CACHE)",
                   "Set BENCH_CACHE to a folder you can write to (node-local scratch will do).", folder=True)
    root.mkdir(parents=True, exist_ok=True)
    check_room(index.name, len(index), size, root)
    with FileLock(str(root / f"{key}.lock")):
        if npy.is_file() and meta_path.is_file():  # another process built it while we waited
            return _load(npy, meta_path, key, fp, built=False)
        # A writer killed mid-build (kill -9, power cut) leaves a temporary as big as the whole cache.
        for stale in remove_stale_temporaries(root):
            log.info("removed %s, left by a killed writer", stale)
        log.info("decoding %d images of %s at %d px into %s", len(index), index.name, size, npy)
        try:
            _build(index, size, resize, npy, meta_path, workers)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            need = len(index) * size * size * 3
            raise DataError(f"No space left in {root} for the image cache of {index.name} at {size} px "
                            f"({need / 2**20:.1f} MiB, {need:,} bytes; {shutil.disk_usage(root).free:,} are free "
                            f"now): free some space there, or point BENCH_CACHE at a folder with room. Nothing "
                            f"partial was kept.") from None
    return _load(npy, meta_path, key, fp, built=True)
