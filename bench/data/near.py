"""Near-duplicate images: shift-tolerant perceptual hashes of the decoded cache, clustered by distance.

Exact copies share a group already (``splits.merge_duplicates``); a copy that was re-encoded,
resized, shifted by a few pixels or cropped has other pixels and slips through, and when it
lands in another fold than its original every score is inflated. Consecutive video frames are
such copies. ``bench.data.phash`` hashes each image in a few shifted and shrunk windows and
measures two images by the closest of them, in bits of a 256-bit pHash.

On the 976 shared X-rays (see ``bench.data.phash`` for the whole measurement), no two images of
different patients came closer than 40 bits, while 1, 2 and 3 px shifts of them stayed within 20
and 5% crops within 26; ``DEFAULT_THRESHOLD`` (32, ``bench.data.spec.DEFAULT_NEAR_THRESHOLD``)
sits in that gap. JPEG re-encoding and resizing move the hash less than a 1 px shift does.

Clusters are the connected components of "within the threshold" (single linkage, as a union
of pairs): a chain of small edits stays one cluster even when its ends are further apart.
This module knows no networks; other kinds of pairs (feature similarity, ``bench.training.audit``) are
clustered by the same ``clusters_from_pairs``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.atomic import write_atomic
from bench.data.phash import HASH_BITS, shift_hashes, shift_pairs
from bench.data.spec import DEDUPE_MODES
from bench.data.spec import (
    DEFAULT_NEAR_THRESHOLD as DEFAULT_THRESHOLD,  # bits of HASH_BITS (see above)
)
from bench.errors import ConfigError

# Above a quarter of the bits, two unrelated images of a dataset pass for copies.
MAX_THRESHOLD = HASH_BITS // 4
# Bump when the hashing (bench.data.phash) changes which pairs come out, so stored pairs are not reused.
PAIRS_VERSION = 1


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
    """``(cluster, hashes)``: cluster id per image (-1 alone) by shift-tolerant pHash distance, and the hashes."""
    hashes = shift_hashes(images)
    return clusters_from_pairs(len(hashes), [shift_pairs(hashes, check_threshold(threshold))]), hashes


def pairs_file(image_cache: Path, threshold: int) -> Path:
    """Where the near pairs of the image cache ``image_cache`` (its .npy) at ``threshold`` are stored."""
    return image_cache.with_name(f"{image_cache.stem}.near{PAIRS_VERSION}-{threshold}.npz")


def stored_near_clusters(images: np.ndarray, threshold: int, image_cache: Path) -> np.ndarray:
    """Cluster id per image, as ``near_clusters``, with the pairs kept beside the image cache.

    Comparing every pair is quadratic (about 1 s for 1,000 images, 2 minutes for 10,000 on two
    busy cores) and a search prepares the same data in its supervisor, in every worker and in
    ``bench final``: the pairs of one decoded cache at one threshold are found once. The cache's
    key already covers the files, the size and the decoder, so the images cannot have changed.
    """
    path = pairs_file(image_cache, check_threshold(threshold))
    try:
        with np.load(path) as stored:
            if int(stored["images"]) == len(images):
                return clusters_from_pairs(len(images), [(stored["i"], stored["j"])])
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile):
        pass  # not there yet, or unreadable: find the pairs again
    i, j = shift_pairs(shift_hashes(images), threshold)
    try:
        write_atomic(path, lambda f: np.savez(f, images=len(images), i=i, j=j), binary=True)
    except OSError:
        pass  # a read-only cache folder still gets the right clusters, only not faster next time
    return clusters_from_pairs(len(images), [(i, j)])


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
                f"{self.threshold} of {HASH_BITS} bits under small shifts) kept on one side of every split; {self.groups_merged} "
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
