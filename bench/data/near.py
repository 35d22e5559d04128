"""Near-duplicate images: perceptual hashes of the decoded cache, clustered by Hamming distance.

Exact copies share a group already (``splits.merge_duplicates``); a copy that was re-encoded,
resized or shifted by a pixel has other pixels and slips through, and when it lands in another
fold than its original every score is inflated. A perceptual hash (pHash: the signs of an
image's lowest DCT frequencies against their median) barely changes under such edits.

The hash is 16 x 16 = 256 bits, not imagehash's default 8 x 8: chest X-rays all look alike at
64 bits (on the 976 shared X-rays, different patients came as close as 2 bits of 64, while a
1-pixel shift moved an image by up to 6). At 256 bits no two of those X-rays came closer than 40
bits, while on 98 of them (128 px files, hashed at 224 and 64 px) JPEG re-encoding at quality 70
moved an image by at most 8 bits, resizing to 3/4 by at most 6 and a 1-pixel shift by at most 30.
``DEFAULT_THRESHOLD`` (32, ``bench.data.spec.DEFAULT_NEAR_THRESHOLD``) sits in that gap.

Clusters are the connected components of "within the threshold" (single linkage, as a union
of pairs): a chain of small edits stays one cluster even when its ends are further apart.
This module knows no networks; other kinds of pairs (feature similarity, ``bench.training.audit``) are
clustered by the same ``clusters_from_pairs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bench.data.spec import DEDUPE_MODES
from bench.data.spec import (
    DEFAULT_NEAR_THRESHOLD as DEFAULT_THRESHOLD,  # bits of HASH_BITS (see above)
)
from bench.errors import ConfigError

HASH_SIZE = 16  # pHash side: HASH_SIZE**2 bits per image
HASH_BITS = HASH_SIZE * HASH_SIZE
# Above a quarter of the bits, two unrelated images of a dataset pass for copies.
MAX_THRESHOLD = HASH_BITS // 4
_BLOCK = 512  # rows compared at a time: the distance block stays a few MB for any dataset


def check_threshold(threshold: int) -> int:
    """The Hamming threshold, or a ConfigError naming ``--near-threshold`` and the allowed range."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, np.integer)) \
            or not 0 <= threshold <= MAX_THRESHOLD:
        raise ConfigError(f"--near-threshold must be a whole number of bits from 0 to {MAX_THRESHOLD} (of the "
                          f"{HASH_BITS}-bit perceptual hash; default {DEFAULT_THRESHOLD}), got {threshold!r}.")
    return int(threshold)


def check_dedupe(mode: str) -> str:
    if mode not in DEDUPE_MODES:
        raise ConfigError(f"--dedupe must be one of {', '.join(DEDUPE_MODES)}, got {mode!r}.")
    return mode


def perceptual_hashes(images: np.ndarray) -> np.ndarray:
    """(n, HASH_BITS) bool: the pHash of each (size, size, 3) uint8 row of the image cache."""
    import imagehash
    from PIL import Image

    out = np.zeros((len(images), HASH_BITS), dtype=bool)
    for i, image in enumerate(images):
        out[i] = imagehash.phash(Image.fromarray(np.asarray(image)), hash_size=HASH_SIZE).hash.ravel()
    return out


def hamming(hashes: np.ndarray, rows: np.ndarray | slice, to: np.ndarray | None = None) -> np.ndarray:
    """Hamming distances (int) between ``hashes[rows]`` and every row of ``to`` (default: ``hashes``).

    As a product of +-1 vectors (bits - agreements + disagreements = 2 x distance), which BLAS does
    fast and exactly in float32 at these sizes.
    """
    a = hashes[rows].astype(np.float32) * 2 - 1
    b = (hashes if to is None else to).astype(np.float32) * 2 - 1
    return np.rint((hashes.shape[1] - a @ b.T) / 2).astype(np.int64)


def hash_pairs(hashes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """``(i, j)`` with i < j for every pair of rows within ``threshold`` bits of each other."""
    found_i, found_j = [], []
    for start in range(0, len(hashes), _BLOCK):
        d = hamming(hashes, slice(start, start + _BLOCK))
        i, j = np.nonzero(d <= threshold)
        i += start
        keep = i < j
        found_i.append(i[keep])
        found_j.append(j[keep])
    if not found_i:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.concatenate(found_i), np.concatenate(found_j)


def clusters_from_pairs(n: int, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Cluster id per row (0, 1, ... in order of each cluster's first row), -1 for a row alone."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    i = np.concatenate([p[0] for p in pairs] or [np.zeros(0, dtype=np.int64)])
    j = np.concatenate([p[1] for p in pairs] or [np.zeros(0, dtype=np.int64)])
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component, minlength=n)
    out = np.full(n, -1, dtype=np.int64)
    renumber: dict[int, int] = {}
    for row, c in enumerate(component):
        if sizes[c] > 1:
            out[row] = renumber.setdefault(int(c), len(renumber))
    return out


def near_clusters(images: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray]:
    """``(cluster, hashes)``: cluster id per image (-1 alone) by pHash distance, and the hashes."""
    hashes = perceptual_hashes(images)
    return clusters_from_pairs(len(hashes), [hash_pairs(hashes, check_threshold(threshold))]), hashes


@dataclass(frozen=True)
class NearMerge:
    """What ``--dedupe near`` merged before splitting, for the manifest and the run's output."""

    threshold: int
    clusters: int  # near-duplicate clusters (2+ images)
    images: int  # images in them
    groups_merged: int  # groups (patients) that stopped being separate because of them

    def as_dict(self) -> dict[str, int]:
        return {"threshold": self.threshold, "hash_bits": HASH_BITS, "clusters": self.clusters,
                "images": self.images, "groups_merged": self.groups_merged}

    def describe(self) -> str:
        return (f"--dedupe near: {self.images} images in {self.clusters} near-duplicate clusters (pHash within "
                f"{self.threshold} of {HASH_BITS} bits) kept on one side of every split; {self.groups_merged} "
                f"groups merged")


def merge_groups(groups: Sequence[str], cluster: np.ndarray, threshold: int) -> tuple[tuple[str, ...], NearMerge]:
    """Groups where every near-duplicate cluster shares one group (with all its images' patients)."""
    names, gid = np.unique(np.asarray(list(groups), dtype=str), return_inverse=True)
    rows = np.flatnonzero(cluster >= 0)
    first_group: dict[int, int] = {}
    for r in rows:
        first_group.setdefault(int(cluster[r]), int(gid[r]))
    links = (gid[rows], np.array([first_group[int(cluster[r])] for r in rows], dtype=np.int64))
    component = clusters_from_pairs(len(names), [links])
    # A merged group takes the name of its first (sorted) member; a lone group keeps its own.
    first_name: dict[int, str] = {}
    for g in np.flatnonzero(component >= 0):  # names are sorted: the first seen is the first
        first_name.setdefault(int(component[g]), str(names[g]))
    merged = tuple(first_name[int(component[g])] if component[g] >= 0 else str(names[g]) for g in gid)
    n_merged = len(names) - len(set(merged))
    return merged, NearMerge(threshold, int(cluster.max() + 1) if len(cluster) else 0, int(len(rows)), n_merged)
