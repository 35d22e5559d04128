"""Held-out test set and cross-validation folds, stratified and group-aware.

Groups (patients, videos) never straddle the test/train boundary or two folds. Exact duplicate
images (identical decoded pixels) are merged into one group first, so a copied image cannot
leak from training into validation.

An official test split is kept exactly as published, so results stay comparable with papers.
Published splits do not always keep patients whole (Kermany's shares patients between its train
and test folders): under the ``clean`` policy every image whose group also has an image in the
test set is *excluded*, in neither the CV pool nor the test set. ``as-published`` keeps those
images in the CV pool and only counts them, for the report's warning. The rule is the same for a
test set bench draws itself; there it never excludes anything, since it takes whole groups.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from bench.data.spec import OFFICIAL_TEST_POLICIES
from bench.errors import ConfigError, DataError

EXCLUDED_BECAUSE = "its group also has images in the test set"
EXCLUDED_FOR_VALIDATION = "its group also has images in the official validation split"
DEFAULT_HOLDOUT = 0.2


@dataclass(frozen=True)
class Protocol:
    """How the CV pool is scored: ``kfold`` (k folds), ``holdout`` (one stratified, group-aware
    split of ``fraction``) or ``official`` (the dataset's published validation split).

    The two single-split protocols give ``Splits`` one fold: fold 0 is the scored split, the rest
    of the pool carries fold 1 and is never scored.
    """

    kind: str = "kfold"
    fraction: float = DEFAULT_HOLDOUT  # holdout only

    @classmethod
    def parse(cls, text: str) -> Protocol:
        kind, _, value = text.strip().partition(":")
        if kind not in PROTOCOLS:
            raise ConfigError(f"--validation must be one of kfold, holdout[:FRACTION], official; got {text!r}.")
        if value and kind != "holdout":
            raise ConfigError(f"--validation {kind} takes no value, got {text!r}.")
        if not value:
            return cls(kind)
        try:
            fraction = float(value)
        except ValueError:
            fraction = math.nan
        if not 0 < fraction < 1:
            raise ConfigError(f"--validation holdout:FRACTION needs a fraction between 0 and 1, got {value!r}.")
        return cls(kind, fraction)

    def __str__(self) -> str:
        return f"holdout:{self.fraction:g}" if self.kind == "holdout" else self.kind


PROTOCOLS = ("kfold", "holdout", "official")


@dataclass(frozen=True)
class Splits:
    groups: np.ndarray  # group id (int) per image, after duplicate merging
    test: np.ndarray  # bool per image: held-out test set
    fold: np.ndarray  # int per image: CV fold 0..k-1; -1 for test and excluded images
    folds: int
    seed: int
    rule: str  # how the test set was chosen, for the manifest and reports
    duplicates: int  # images that duplicate another image's pixels
    duplicate_groups_merged: int
    # bool per image: in neither CV nor test, because its group also has test images ("clean")
    excluded: np.ndarray
    official_test: str = "clean"  # the policy (OFFICIAL_TEST_POLICIES)
    shared_groups: int = 0  # groups with images on both sides of the test split as chosen
    shared_images: int = 0  # their images outside the test set (excluded under "clean")
    # classes left out by --min-class-images: name -> {"cv_images": n, "test_images": m}
    dropped_classes: dict[str, dict[str, int]] = field(default_factory=dict)
    protocol: str = "kfold"  # str(Protocol): how the pool is scored

    @property
    def cv(self) -> np.ndarray:
        """bool per image: in the cross-validation pool (the only images a search or refit trains on)."""
        return self.fold >= 0

    @property
    def single_split(self) -> bool:
        """One scored split (holdout, official) instead of k folds."""
        return self.protocol != "kfold"

    def describe(self, group_word: str = "group") -> str:
        """The protocol in words for tables, e.g. "5-fold CV" or "hold-out 20% (60 images, 20 patients)"."""
        if not self.single_split:
            return f"{self.folds}-fold CV"
        val = self.fold == 0
        size = f"{int(val.sum())} images, {len(np.unique(self.groups[val]))} {group_word}s"
        if self.protocol == "official":
            return f"official validation split ({size})"
        return f"hold-out {float(self.protocol.partition(':')[2]):.0%} ({size})"

    def excluded_because(self) -> np.ndarray:
        """Why each excluded image is out of the pool ("" for the others)."""
        with_test = np.isin(self.groups, np.unique(self.groups[self.test]))
        return np.where(~self.excluded, "", np.where(with_test, EXCLUDED_BECAUSE, EXCLUDED_FOR_VALIDATION))

    def split_names(self) -> np.ndarray:
        """``cv``, ``test`` or ``excluded`` per image."""
        return np.where(self.test, "test", np.where(self.cv, "cv", "excluded"))

    def fold_masks(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(train, validation)`` bool masks of fold k."""
        val = self.fold == k
        return self.cv & ~val, val


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


@dataclass(frozen=True)
class HeldOut:
    """The test set and what it takes out of the CV pool (see the module docstring)."""

    test: np.ndarray  # bool per image
    excluded: np.ndarray  # bool per image: its group also has test images (policy "clean")
    rule: str
    shared_groups: int
    shared_images: int

    @property
    def pool(self) -> np.ndarray:
        return ~self.test & ~self.excluded


def hold_out(labels: np.ndarray, groups: np.ndarray, *, official_test: np.ndarray | None, test_fraction: float,
             seed: int, policy: str = "clean") -> HeldOut:
    """The test set (official, else a stratified fraction of whole groups) and the images it excludes.

    One path for every rule, so that "no group on both sides" holds whichever chose the test set.
    """
    if policy not in OFFICIAL_TEST_POLICIES:
        raise DataError(f"The official-test policy must be one of {', '.join(OFFICIAL_TEST_POLICIES)}, got {policy!r}.")
    if official_test is not None:
        test = official_test.astype(bool)
        rule = "official test split"
        if test.sum() == 0:
            raise DataError("The dataset's official test split selects no images: check the test rule in datasets.toml.")
    else:
        test = stratified_group_fraction(labels, groups, test_fraction, seed)
        rule = f"stratified group fraction {test_fraction:g} (seed {seed})"
    shared = np.isin(groups, np.unique(groups[test])) & ~test
    excluded = shared if policy == "clean" else np.zeros_like(shared)
    return HeldOut(test, excluded, rule, int(len(np.unique(groups[shared]))), int(shared.sum()))


def assign_folds(labels: np.ndarray, groups: np.ndarray, pool: np.ndarray, classes: tuple[str, ...], *,
                 folds: int, seed: int, group_word: str = "group") -> np.ndarray:
    """Fold 0..k-1 per image of ``pool`` (-1 elsewhere); a DataError naming every class too small for k."""
    if folds < 2:
        raise DataError(f"--folds must be at least 2, got {folds}.")
    rows = np.flatnonzero(pool)
    images = {name: int((labels[rows] == c).sum()) for c, name in enumerate(classes)}
    n_groups = {name: len(np.unique(groups[rows[labels[rows] == c]])) for c, name in enumerate(classes)}
    too_small = [name for name in classes if n_groups[name] < folds]
    if too_small:
        raise DataError(_too_small_message(too_small, images, n_groups, folds, group_word))
    fold = np.full(len(labels), -1, dtype=np.int64)
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(cv.split(np.zeros(len(rows)), labels[rows], groups[rows])):
        fold[rows[val]] = k
    return fold


def _too_small_message(too_small: list[str], images: dict[str, int], n_groups: dict[str, int], folds: int,
                       group_word: str) -> str:
    listing = "; ".join(f"Class '{c}' has {images[c]} image(s) from {n_groups[c]} {group_word}(s) in the "
                        f"cross-validation pool" for c in too_small)
    head = f"{listing}: fewer than --folds {folds}, and every fold needs one of each class."
    largest = min(n_groups.values())
    # The --min-class-images value that leaves out exactly the classes with at most as many images.
    n = max(images[c] for c in too_small) + 1
    dropped = [c for c, k in images.items() if k < n]
    drop = (f", or leave such classes out with --min-class-images {n} (it drops every class with fewer than {n} "
            f"images in the CV pool: {', '.join(repr(c) for c in dropped)})" if len(images) - len(dropped) >= 2 else "")
    if largest >= 2:
        return f"{head} Use --folds {largest} (the largest that works){drop}."
    return (f"{head} Not even 2 folds can work: add images of {', '.join(repr(c) for c in too_small)} from at least "
            f"2 {group_word}s{drop}.")


def classes_below(labels: np.ndarray, groups: tuple[str, ...], row_hashes: tuple[str, ...],
                  classes: tuple[str, ...], minimum: int, *, seed: int = 0,
                  official_test: np.ndarray | None = None, test_fraction: float = 0.2,
                  policy: str = "clean") -> dict[str, dict[str, int]]:
    """Classes with fewer than ``minimum`` images in the CV pool (``--min-class-images``).

    Returns name -> {"cv_images", "test_images"}: what leaving each class out takes away.
    """
    if minimum <= 0:
        return {}
    ids, _, _ = merge_duplicates(groups, row_hashes)
    held = hold_out(labels, ids, official_test=official_test, test_fraction=test_fraction, seed=seed, policy=policy)
    out = {}
    for c, name in enumerate(classes):
        in_class = labels == c
        n_cv = int((held.pool & in_class).sum())
        if n_cv < minimum:
            out[name] = {"cv_images": n_cv, "test_images": int((held.test & in_class).sum())}
    if len(classes) - len(out) < 2:
        raise DataError(f"--min-class-images {minimum} would leave fewer than two classes (it drops "
                        f"{', '.join(repr(c) for c in out)}): lower it.")
    return out


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
    policy: str = "clean",
    dropped_classes: dict[str, dict[str, int]] | None = None,
    protocol: Protocol = Protocol(),
    official_validation: np.ndarray | None = None,
) -> Splits:
    """Merge exact duplicates into groups, choose the test set, exclude what it shares, then the folds.

    ``dropped_classes`` only records what ``classes_below`` left out before these labels were made.
    """
    ids, duplicates, merged = merge_duplicates(groups, row_hashes)
    held = hold_out(labels, ids, official_test=official_test, test_fraction=test_fraction, seed=seed, policy=policy)
    excluded = held.excluded
    if protocol.kind == "kfold":
        fold = assign_folds(labels, ids, held.pool, classes, folds=folds, seed=seed, group_word=group_word)
    else:
        fold, excluded = single_split(labels, ids, held.pool, classes, protocol, official_validation, seed,
                                      excluded)
        folds = 1
    return Splits(
        groups=ids, test=held.test, fold=fold, folds=folds, seed=seed, rule=held.rule,
        duplicates=duplicates, duplicate_groups_merged=merged, excluded=excluded, official_test=policy,
        shared_groups=held.shared_groups, shared_images=held.shared_images,
        dropped_classes=dict(dropped_classes or {}), protocol=str(protocol),
    )


def single_split(labels: np.ndarray, groups: np.ndarray, pool: np.ndarray, classes: tuple[str, ...],
                 protocol: Protocol, official_validation: np.ndarray | None, seed: int,
                 excluded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fold, excluded)`` for a single scored split: fold 0 is scored, fold 1 trains.

    ``holdout`` takes whole groups, so no group is on both sides. ``official`` keeps the published
    validation split as it is; pool images whose group also has validation images are excluded
    (as the "clean" test policy does), so again no group is on both sides.
    """
    rows = np.flatnonzero(pool)
    if protocol.kind == "holdout":
        val = np.zeros(len(labels), dtype=bool)
        val[rows] = stratified_group_fraction(labels[rows], groups[rows], protocol.fraction, seed)
    else:
        if official_validation is None:
            raise DataError("--validation official needs the dataset's published validation split.")
        val = official_validation.astype(bool) & pool
        shared = pool & ~val & np.isin(groups, np.unique(groups[val]))
        excluded = excluded | shared
    fold = np.full(len(labels), -1, dtype=np.int64)
    fold[pool & ~excluded] = 1
    fold[val] = 0
    for side, name in ((fold == 0, "validation"), (fold == 1, "training")):
        missing = [c for i, c in enumerate(classes) if not (side & (labels == i)).any()]
        if missing:
            raise DataError(f"--validation {protocol}: the {name} side has no images of class(es) "
                            f"{', '.join(repr(c) for c in missing)}; use a larger fraction or --validation kfold.")
    return fold, excluded
