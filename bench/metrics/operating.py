"""Operating points: a threshold that reaches a target sensitivity or specificity.

``sens=0.95`` asks for the threshold on a class's probability that catches at least 95% of that
class; ``spec=0.90`` for the one that clears at least 90% of the others. An image counts as
positive when its probability is >= the threshold. The threshold is chosen on the out-of-fold
CV predictions of the trial being refit (each predicted by a fold model that did not train on
it) and then applied unchanged to the held-out test set and to any external set: choosing it on
the set it is scored on would report the target back, not what the model reaches.

Binary sets: one threshold on the positive class (the registry's ``positive``). Multiclass sets:
one per class, one-vs-rest. Of the thresholds that reach the target on CV, the one that gives
the most of the other rate is taken (the largest threshold for a sensitivity target, the
smallest for a specificity target).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["KINDS", "OperatingPoint", "Threshold", "apply_operating_points", "choose_thresholds", "decide",
           "parse_point"]

# A rate of 19/20 must count as reaching 0.95 although 0.95 is not exact in binary.
_EPS = 1e-9


def _for_sensitivity(target: float, fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray) -> float:
    # roc_curve's thresholds fall; the first that reaches the target is the most specific one.
    return float(thresholds[np.flatnonzero(tpr >= target - _EPS)[0]])


def _for_specificity(target: float, fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray) -> float:
    return float(thresholds[np.flatnonzero(1 - fpr >= target - _EPS)[-1]])


# kind -> (what it is called, how its threshold is chosen from a ROC curve)
KINDS: dict[str, tuple[str, Callable[[float, np.ndarray, np.ndarray, np.ndarray], float]]] = {
    "sens": ("sensitivity", _for_sensitivity),
    "spec": ("specificity", _for_specificity),
}


@dataclass(frozen=True)
class OperatingPoint:
    kind: str  # a key of KINDS
    target: float  # in (0, 1]

    @property
    def name(self) -> str:
        return f"{self.kind}={self.target:g}"


def parse_point(text: str) -> OperatingPoint:
    """``"sens=0.95"`` -> ``OperatingPoint("sens", 0.95)``; ``ValueError`` saying what is expected."""
    expected = f"KIND=TARGET with KIND one of {', '.join(KINDS)} and TARGET in (0, 1], e.g. sens=0.95 or spec=0.90"
    kind, sep, value = str(text).strip().partition("=")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS:
        raise ValueError(f"must be {expected}; got {text!r}")
    try:
        target = float(value)
    except ValueError:
        raise ValueError(f"must be {expected}; got {text!r}") from None
    if not 0 < target <= 1:  # also refuses nan
        raise ValueError(f"must be {expected}; got {text!r} (the target is a rate between 0 and 1)")
    return OperatingPoint(kind, target)


@dataclass(frozen=True)
class Threshold:
    """One chosen threshold: ``point`` on class ``cls`` (index ``class_index``)."""

    point: str  # OperatingPoint.name
    kind: str
    target: float
    cls: str
    class_index: int
    threshold: float

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Threshold:
        return cls(str(data["point"]), str(data["kind"]), float(data["target"]), str(data["cls"]),
                   int(data["class_index"]), float(data["threshold"]))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_thresholds(points: Sequence[OperatingPoint], y: np.ndarray, proba: np.ndarray, classes: Sequence[str],
                      positive: int | None) -> list[Threshold]:
    """Thresholds reaching each point on ``(y, proba)`` (out-of-fold CV predictions): binary sets
    on the ``positive`` class only, multiclass sets one per class (one-vs-rest).

    ``ValueError`` if a class has no images or no other images there (its rate is undefined).
    """
    from sklearn.metrics import roc_curve

    y = np.asarray(y)
    proba = np.asarray(proba, dtype=np.float64)
    targets = [positive] if positive is not None else range(proba.shape[1])
    chosen = []
    for point in points:
        _, rule = KINDS[point.kind]
        for c in targets:
            is_pos = y == c
            if is_pos.all() or not is_pos.any():
                raise ValueError(f"cannot choose a threshold for {point.name} on class {classes[c]!r}: the "
                                 f"out-of-fold predictions hold {'only' if is_pos.all() else 'no'} images of it")
            fpr, tpr, thresholds = roc_curve(is_pos, proba[:, c], drop_intermediate=False)
            t = rule(point.target, fpr, tpr, thresholds)
            if not np.isfinite(t):  # roc_curve's "nothing positive": just above every score
                t = float(np.nextafter(proba[:, c].max(), np.inf))
            chosen.append(Threshold(point.name, point.kind, point.target, str(classes[c]), int(c), t))
    return chosen


def decide(threshold: Threshold, proba: np.ndarray) -> np.ndarray:
    """Which images the threshold calls positive for its class."""
    return np.asarray(proba, dtype=np.float64)[:, threshold.class_index] >= threshold.threshold


def apply_operating_points(thresholds: Sequence[Threshold | dict[str, Any]], y: np.ndarray, proba: np.ndarray,
                           groups: Any = None, *, unit: str = "patients", split: str = "test",
                           n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Sensitivity and specificity each threshold reaches on ``(y, proba)``, with bootstrap 95% CIs.

    ``thresholds`` as chosen on CV (``Threshold`` or its ``to_dict()``, as final.json and the model
    card store them); applied unchanged. With ``groups`` (one id per image) the CI resamples whole
    groups, named ``unit``; without, images. One row per threshold.
    """
    from bench import metrics as M

    y = np.asarray(y)
    rows = []
    for t in thresholds:
        t = t if isinstance(t, Threshold) else Threshold.from_dict(t)
        is_pos = (y == t.class_index).astype(np.int64)
        called = decide(t, proba).astype(np.float64)
        # The decision as a two-column "probability" whose argmax is it: the metrics registry's
        # sensitivity, specificity and cluster bootstrap then apply exactly as everywhere else.
        hard = np.column_stack([1 - called, called])
        cis = M.bootstrap_all(is_pos, hard, ("sensitivity", "specificity"), n_boot=n_boot, seed=seed, positive=1,
                              groups=groups, unit=unit if groups is not None else None)
        sens, spec = cis["sensitivity"], cis["specificity"]
        rows.append({"point": t.point, "kind": t.kind, "target": t.target, "class": t.cls, "threshold": t.threshold,
                     "split": split, "sensitivity": sens.value, "sensitivity_low": sens.low,
                     "sensitivity_high": sens.high, "specificity": spec.value, "specificity_low": spec.low,
                     "specificity_high": spec.high, "n_images": sens.n, "n_positive": int(is_pos.sum()),
                     "n_boot": min(sens.n_boot, spec.n_boot), "unit": sens.unit, "n_units": sens.n_units})
    return pd.DataFrame(rows)
