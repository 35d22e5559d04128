"""Bootstrap confidence intervals for the metrics of ``bench.metrics.scores``.

Bootstrap CIs resample images within each class, or, given one group id per image (the
patient), whole groups: a cluster bootstrap, since images of one patient are not
independent evidence. Each ``CI`` says which unit it resampled and how many there were.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from bench.metrics.scores import (
    Metric,
    get_metric,
    resolve_names,
    resolve_positive,
    validate_inputs,
)

__all__ = ["CI", "bootstrap_all", "bootstrap_ci", "bootstrap_paired_difference", "bootstrap_phrase"]


@dataclass(frozen=True)
class CI:
    """A point estimate with a percentile-bootstrap confidence interval.

    ``n`` is the number of images; ``n_boot`` the number of resamples that gave a finite
    value (NaN resamples are dropped), so it can be below the number requested. If none
    did, ``low`` and ``high`` are NaN. ``unit`` names what was resampled ("images", or the
    groups' name, e.g. "patients") and ``n_units`` how many there were: an interval is only
    as wide as the number of independent units allows, not the number of images.
    """

    value: float
    low: float
    high: float
    n: int
    n_boot: int
    n_units: int
    unit: str


def bootstrap_phrase(n_units: int, unit: str, n_images: int | None = None) -> str:
    """What a CI resampled, in words for a caption: ``"bootstrap over 40 patients"``."""
    text = f"bootstrap over {int(n_units):,} {unit}"
    if unit == "images" and n_images is not None and int(n_units) < int(n_images):
        text += " (exact duplicates resampled together)"
    return text


# Bound the (resamples x units) index block to ~16 MB of int64 per array so large test
# sets do not need n_boot * n memory at once.
_CHUNK_ELEMENTS = 1 << 21


def _resample_units(
    strata: list[np.ndarray], n_units: int, n_boot: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Yield ``(b, n_units)`` blocks of unit indices, drawn with replacement within each stratum.

    Each stratum keeps its size in every resample, so a unit kind that the data has (a class,
    for images) is never lost to luck, which would make AUC and the macro averages NaN.
    """
    chunk = max(1, _CHUNK_ELEMENTS // n_units)
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        yield np.concatenate([s[rng.integers(0, s.size, size=(b, s.size))] for s in strata], axis=1)


def _class_strata(y_true: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(y_true == c) for c in np.unique(y_true)]


def _resample_indices(
    y_true: np.ndarray, n_boot: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Yield ``(b, n)`` blocks of image indices, resampled with replacement within each class."""
    return _resample_units(_class_strata(y_true), y_true.shape[0], n_boot, rng)


def _batched_confusion(t: np.ndarray, p: np.ndarray, k: int) -> np.ndarray:
    """``(b, k, k)`` confusion counts for ``(b, n)`` true and predicted labels, one bincount."""
    b = t.shape[0]
    codes = (np.arange(b)[:, None] * k + t) * k + p
    return np.bincount(codes.ravel(), minlength=b * k * k).reshape(b, k, k)


class _Images:
    """The image bootstrap: every image is a unit, stratified by class."""

    unit = "images"

    def __init__(self, y_true: np.ndarray, y_pred: np.ndarray, k: int) -> None:
        self.y_true, self.y_pred, self.k = y_true, y_pred, k
        self.strata = _class_strata(y_true)
        self.n_units = y_true.shape[0]

    def confusion(self, drawn: np.ndarray) -> np.ndarray:
        return _batched_confusion(self.y_true[drawn], self.y_pred[drawn], self.k)

    def images(self, drawn_row: np.ndarray) -> np.ndarray:
        return drawn_row


class _Clusters:
    """The cluster bootstrap: whole groups (patients) are the units.

    Images of one patient are not independent (same lungs, same scanner, often the same
    error), so resampling them one by one gives intervals that are too narrow. Groups are
    numbered in order of their first image and stratified by the set of classes they hold:
    one stratum per class for single-class groups, then one per class combination for
    groups holding several, so every resample holds every class the data holds. When every
    group is one image this draws exactly what ``_Images`` draws from the same generator.
    """

    def __init__(self, y_true: np.ndarray, y_pred: np.ndarray, k: int, groups: object, unit: str) -> None:
        groups = np.asarray(groups)
        if groups.shape != y_true.shape:
            raise ValueError(f"groups must hold one group id per image: got shape {groups.shape} "
                             f"for {y_true.shape[0]} images")
        _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
        rank = np.empty(first.size, dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(first.size)
        gid = rank[inverse.ravel()]  # group number by first appearance
        self.n_units = n_groups = first.size
        self.unit = unit
        # Per-group confusion counts: a resample's matrix is its group counts times these.
        cm = np.zeros((n_groups, k, k), dtype=np.int64)
        np.add.at(cm, (gid, y_true, y_pred), 1)
        self.group_cm = cm.reshape(n_groups, k * k).astype(np.float64)
        self.k = k
        # Members of each group, contiguous: images of group g are members[starts[g]:starts[g] + sizes[g]].
        self.members = np.argsort(gid, kind="stable")
        self.sizes = np.bincount(gid, minlength=n_groups)
        self.starts = np.cumsum(self.sizes) - self.sizes
        holds = cm.sum(axis=2) > 0  # (groups, k): which classes each group holds
        keys = [tuple(np.flatnonzero(row)) for row in holds]
        order = sorted(set(keys), key=lambda key: (len(key), key))
        by_key: dict[tuple[int, ...], list[int]] = {key: [] for key in order}
        for g, key in enumerate(keys):
            by_key[key].append(g)
        self.strata = [np.asarray(by_key[key], dtype=np.int64) for key in order]

    def confusion(self, drawn: np.ndarray) -> np.ndarray:
        b, n_groups = drawn.shape[0], self.n_units
        counts = np.bincount((np.arange(b)[:, None] * n_groups + drawn).ravel(), minlength=b * n_groups)
        # Float64 matrix product of whole numbers far below 2**53: exact, and BLAS-fast.
        cm = counts.reshape(b, n_groups).astype(np.float64) @ self.group_cm
        return np.rint(cm).astype(np.int64).reshape(b, self.k, self.k)

    def images(self, drawn_row: np.ndarray) -> np.ndarray:
        """Image indices of the drawn groups, group after group in the order drawn."""
        sizes = self.sizes[drawn_row]
        offsets = np.cumsum(sizes) - sizes
        within = np.arange(int(sizes.sum())) - np.repeat(offsets, sizes)
        return self.members[np.repeat(self.starts[drawn_row], sizes) + within]


def _bootstrap(
    y_true: np.ndarray,
    proba: np.ndarray,
    metrics: list[Metric],
    *,
    n_boot: int,
    alpha: float,
    seed: int,
    positive: int | None,
    groups: object | None,
    unit: str | None,
) -> dict[str, CI]:
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1; got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha}")
    y_true, proba = validate_inputs(y_true, proba)
    k = proba.shape[1]
    pos = resolve_positive(positive, k)
    y_pred = proba.argmax(axis=1)
    units = _units(y_true, y_pred, k, groups, unit)
    fast = [m for m in metrics if m.batched is not None]
    slow = [m for m in metrics if m.batched is None]
    values = {m.name: np.empty(n_boot) for m in metrics}

    # One stream of resamples shared by all metrics: bootstrap_ci(name) and
    # bootstrap_all()[name] agree for the same seed, and the intervals are paired.
    rng = np.random.default_rng(seed)
    start = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # undefined resamples become NaN and are dropped
        for drawn in _resample_units(units.strata, units.n_units, n_boot, rng):
            stop = start + drawn.shape[0]
            if fast:
                cm = units.confusion(drawn)
                for m in fast:
                    values[m.name][start:stop] = m.batched(cm, pos)
            rows = [units.images(row) for row in drawn] if slow else []
            for m in slow:
                values[m.name][start:stop] = [m.fn(y_true[r], proba[r], pos) for r in rows]
            start = stop

    return {m.name: _percentile_ci(float(m.fn(y_true, proba, pos)), values[m.name], alpha, units, len(y_true))
            for m in metrics}


def _units(y_true: np.ndarray, y_pred: np.ndarray, k: int, groups: object | None,
           unit: str | None) -> _Images | _Clusters:
    return _Images(y_true, y_pred, k) if groups is None else _Clusters(y_true, y_pred, k, groups, unit or "groups")


def _percentile_ci(point: float, values: np.ndarray, alpha: float, units: _Images | _Clusters, n: int) -> CI:
    """The percentile interval of the finite resampled ``values`` around ``point`` (``n`` images)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    low, high = np.quantile(v, [alpha / 2, 1 - alpha / 2]) if v.size else (np.nan, np.nan)
    return CI(point, float(low), float(high), n, int(v.size), int(units.n_units), units.unit)


def bootstrap_ci(
    y_true: np.ndarray,
    proba: np.ndarray,
    metric: str,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    positive: int | None = None,
    groups: object | None = None,
    unit: str | None = None,
) -> CI:
    """Percentile-bootstrap ``1 - alpha`` CI of ``metric``.

    Without ``groups`` it resamples images within each class. With ``groups`` (one id per
    image, e.g. the patient) it resamples whole groups, stratified by the classes each group
    holds (a cluster bootstrap); ``unit`` names them in the result (default "groups").
    Metrics with a fast path (all but ``auc`` and ``log_loss``) score every resample in a
    few vectorised numpy operations; the others call scikit-learn once per resample.
    """
    return _bootstrap(
        y_true,
        proba,
        [get_metric(metric)],
        n_boot=n_boot,
        alpha=alpha,
        seed=seed,
        positive=positive,
        groups=groups,
        unit=unit,
    )[metric]


def bootstrap_all(
    y_true: np.ndarray,
    proba: np.ndarray,
    names: Iterable[str] | None = None,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    positive: int | None = None,
    groups: object | None = None,
    unit: str | None = None,
) -> dict[str, CI]:
    """``bootstrap_ci`` for each of ``names`` (default: all metrics) on the same resamples."""
    return _bootstrap(
        y_true,
        proba,
        resolve_names(names),
        n_boot=n_boot,
        alpha=alpha,
        seed=seed,
        positive=positive,
        groups=groups,
        unit=unit,
    )


def bootstrap_paired_difference(
    y_true: np.ndarray,
    proba: np.ndarray,
    reference: np.ndarray,
    names: Iterable[str] | None = None,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    positive: int | None = None,
    groups: object | None = None,
    unit: str | None = None,
) -> dict[str, CI]:
    """``metric(proba) - metric(reference)`` on the same images, with a paired percentile CI.

    Both are scored on the same resamples (images within each class, or whole ``groups``, as in
    ``bootstrap_ci``), so what the two share cancels and the interval is that of the difference,
    narrower than comparing two separate intervals.
    """
    y_true, proba = validate_inputs(y_true, proba)
    _, reference = validate_inputs(y_true, reference)
    if reference.shape != proba.shape:
        raise ValueError(f"reference has shape {reference.shape}, proba {proba.shape}")
    metrics = resolve_names(names)
    k = proba.shape[1]
    pos = resolve_positive(positive, k)
    y_pred = proba.argmax(axis=1)
    units = _units(y_true, y_pred, k, groups, unit)
    values = {m.name: [] for m in metrics}
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for drawn in _resample_units(units.strata, units.n_units, n_boot, rng):
            for row in drawn:
                r = units.images(row)
                for m in metrics:
                    values[m.name].append(m.fn(y_true[r], proba[r], pos) - m.fn(y_true[r], reference[r], pos))
    return {m.name: _percentile_ci(float(m.fn(y_true, proba, pos) - m.fn(y_true, reference, pos)),
                                   values[m.name], alpha, units, len(y_true)) for m in metrics}
