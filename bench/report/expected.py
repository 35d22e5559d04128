"""Expected best validation score at a budget of k trials (Dodge et al. 2019, "Show Your Work").

An entry that got 20 trials has had more chances at a lucky score than one that got 2, so its best
is not comparable with the other's. The expected maximum of k trials drawn with replacement from
an entry's n observed scores is, with v_1 <= ... <= v_n sorted,

    E[max_k] = sum_i v_i * ((i/n)^k - ((i-1)/n)^k)

(P(max_k <= v_i) = (i/n)^k; ties are handled by the sort, each copy taking its own share).
Evaluating every entry at the same k compares them at an equal budget. For a lower-is-better
metric the minimum is used, symmetrically. The band resamples the n trial scores with replacement
and recomputes the curve: it shows how much the curve rests on the particular trials observed.
Pure numpy: the report and tests call it directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAPS = 1000
LEVEL = 0.95


def _weights(n: int, ks: np.ndarray) -> np.ndarray:
    """(len(ks), n): the probability that sorted value i is the maximum of k draws."""
    i = np.arange(1, n + 1, dtype=float)
    k = ks.astype(float)[:, None]
    return (i / n) ** k - ((i - 1) / n) ** k


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    if v.size == 0 or np.isnan(v).any():
        raise ValueError(f"expected best needs one or more scores and no NaN, got {v.tolist()!r}")
    return v


def expected_best(values: Sequence[float] | np.ndarray, ks: Sequence[int] | np.ndarray | None = None,
                  maximize: bool = True) -> np.ndarray:
    """E[best of k trials] for each k in ``ks`` (default 1..n), k draws with replacement from ``values``."""
    v = _clean(values)
    n = v.size
    k = np.arange(1, n + 1) if ks is None else np.asarray(ks, dtype=int)
    if (k < 1).any():
        raise ValueError(f"k must be 1 or more, got {k.tolist()!r}")
    if not maximize:  # the expected minimum is minus the expected maximum of the negated scores
        return -expected_best(-v, k, maximize=True)
    return _weights(n, k) @ np.sort(v)


@dataclass(frozen=True)
class Curve:
    """One entry's expected best for k = 1..n, with a bootstrap band over its trials."""

    k: np.ndarray
    expected: np.ndarray
    low: np.ndarray
    high: np.ndarray


def curve(values: Sequence[float] | np.ndarray, maximize: bool = True, *, boots: int = BOOTSTRAPS,
          level: float = LEVEL, seed: int = 0) -> Curve:
    """The expected-best curve of ``values`` and its percentile band from ``boots`` resamples of the
    trials (the same seed gives the same band: the report's files are reproducible)."""
    v = _clean(values)
    n = v.size
    k = np.arange(1, n + 1)
    sign = 1.0 if maximize else -1.0
    rng = np.random.default_rng(seed)
    samples = np.sort(sign * v[rng.integers(0, n, size=(boots, n))], axis=1)
    curves = sign * (samples @ _weights(n, k).T)  # (boots, n): every resample's curve at once
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(curves, [tail, 100 - tail], axis=0)
    return Curve(k, expected_best(v, k, maximize), low, high)
