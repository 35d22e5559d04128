"""Held-out test set and cross-validation folds, stratified and group-aware.

Groups (patients, videos) never straddle the test/train boundary or two folds. Exact duplicate
images (identical decoded pixels) are merged into one group first, so a copied image cannot
leak from training into validation.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from bench.errors import DataError


@dataclass(frozen=True)
class Splits:
    groups: np.ndarray  # group id (int) per image, after duplicate merging
    test: np.ndarray  # bool per image: held-out test set
    fold: np.ndarray  # int per image: CV fold 0..k-1, -1 for test images
    folds: int
    seed: int
    rule: str  # how the test set was chosen, for the manifest and reports
    duplicates: int  # images that duplicate another image's pixels
    duplicate_groups_merged: int

    def fold_masks(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(train, validation)`` bool masks of fold k."""
        val = self.fold == k
        return (self.fold >= 0) & ~val, val


def merge_duplicates(groups: list[str] | tuple[str, ...], row_hashes: tuple[str, ...]) -> tuple[np.ndarray, int, int]:
    """Integer group ids where images with identical pixels share one group.

    Returns ``(group_ids, n_duplicate_images, n_groups_merged)``.
    """
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    first_with_hash: dict[str, str] = {}
    duplicates = merged = 0
    for g, h in zip(groups, row_hashes):
        g_root = find(g)
        if h in first_with_hash:
            duplicates += 1
            other = find(first_with_hash[h])
            if other != g_root:
                parent[g_root] = other
                merged += 1
        else:
            first_with_hash[h] = g
    roots = [find(g) for g in groups]
    _, ids = np.unique(np.array(roots, dtype=object).astype(str), return_inverse=True)
    return ids.astype(np.int64), duplicates, merged


def _group_class_counts(labels: np.ndarray, groups: np.ndarray, n_classes: int) -> dict[int, np.ndarray]:
    counts: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(n_classes, dtype=np.int64))
    for y, g in zip(labels, groups):
        counts[int(g)][int(y)] += 1
    return counts


def stratified_group_fraction(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A test mask holding about ``fraction`` of each class, made of whole groups.

    Groups are visited in a seeded random order and taken when they bring the per-class test
    counts closer to their targets; unlike ``StratifiedGroupKFold`` this hits any fraction, not
    only 1/k.
    """
    n_classes = int(labels.max()) + 1
    target = fraction * np.bincount(labels, minlength=n_classes)
    per_group = _group_class_counts(labels, groups, n_classes)
    order = sorted(per_group)
    rng = np.random.default_rng(seed)
    rng.shuffle(order)
    taken = np.zeros(n_classes)
    chosen: set[int] = set()
    for g in order:
        c = per_group[g]
        if np.abs(taken + c - target).sum() < np.abs(taken - target).sum():
            taken += c
            chosen.add(g)
    return np.isin(groups, list(chosen))


def make_splits(
    labels: np.ndarray,
    groups: np.ndarray,
    classes: tuple[str, ...],
    *,
    folds: int,
    seed: int = 0,
    official_test: np.ndarray | None = None,
    test_fraction: float = 0.2,
    group_word: str = "group",
) -> tuple[np.ndarray, np.ndarray, str]:
    """``(test_mask, fold_per_image, rule)``; raises DataError when a class is too small for k folds."""
    if folds < 2:
        raise DataError(f"--folds must be at least 2, got {folds}.")
    if official_test is not None:
        test = official_test.astype(bool)
        rule = "official test split"
        if test.sum() == 0:
            raise DataError("The dataset's official test split selects no images: check the test rule in datasets.toml.")
    else:
        test = stratified_group_fraction(labels, groups, test_fraction, seed)
        rule = f"stratified group fraction {test_fraction:g} (seed {seed})"
    pool = np.flatnonzero(~test)
    for c, name in enumerate(classes):
        in_class = pool[labels[pool] == c]
        n_groups = len(np.unique(groups[in_class]))
        if n_groups < folds:
            raise DataError(
                f"Class '{name}' has {len(in_class)} image(s) from {n_groups} {group_word}(s) in the "
                f"cross-validation part, fewer than --folds {folds}: every fold needs one. "
                f"Use --folds {max(2, n_groups)} or fewer, or add images of '{name}'."
            )
    fold = np.full(len(labels), -1, dtype=np.int64)
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(cv.split(np.zeros(len(pool)), labels[pool], groups[pool])):
        fold[pool[val]] = k
    return test, fold, rule


def build_splits(
    labels: np.ndarray,
    groups: tuple[str, ...],
    row_hashes: tuple[str, ...],
    classes: tuple[str, ...],
    *,
    folds: int,
    seed: int = 0,
    official_test: np.ndarray | None = None,
    test_fraction: float = 0.2,
    group_word: str = "group",
) -> Splits:
    """Merge exact duplicates into groups, then choose the test set and the folds."""
    ids, duplicates, merged = merge_duplicates(groups, row_hashes)
    test, fold, rule = make_splits(
        labels, ids, classes, folds=folds, seed=seed, official_test=official_test,
        test_fraction=test_fraction, group_word=group_word,
    )
    return Splits(
        groups=ids, test=test, fold=fold, folds=folds, seed=seed, rule=rule,
        duplicates=duplicates, duplicate_groups_merged=merged,
    )
