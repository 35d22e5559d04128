"""Classification metrics and confusion matrices.

Every function takes the same inputs:

* ``y_true`` - int array ``(n,)`` of class indices ``0..k-1``;
* ``proba``  - float array ``(n, k)`` of predicted class probabilities (rows sum to 1);
* ``positive`` - for binary sets (``k == 2``) the index of the positive class, default 1;
  must be ``None`` for multiclass sets.

The predicted class is ``argmax(proba)``. ``k`` always comes from ``proba.shape[1]``, never
from the labels that happen to occur, so a test fold that lacks a class is still scored
against the full label set.

Undefined is NaN, never an exception: a metric that has no value on the data it is given
(AUC or sensitivity when a class is absent from ``y_true``, specificity when every image is
positive) returns ``float("nan")``. Macro averages that we compute ourselves (``auc``,
``sensitivity``, ``specificity``) are NaN if *any* class term is undefined, because an
average over a subset of the classes is a different number and would not be comparable
across folds. ``balanced_accuracy`` and ``macro_f1`` keep scikit-learn's definitions, which
average over the classes that occur (in ``y_true``, or in ``y_true`` or the predictions);
``mcc`` keeps scikit-learn's 0.0 for a constant predictor. ``ece`` (expected calibration
error, 10 equal-mass bins of the top-class confidence) and ``brier`` (binary: squared error of
the positive class's probability; multiclass: sum over classes) measure calibration, as
``log_loss`` does; lower is better for all three.

Metrics live in the ``METRICS`` registry, filled by the ``@metric`` decorator; each is
defined by a call into scikit-learn. Metrics that are a function of the confusion matrix
also register a vectorised fast path (``@fast_path``) that scores a whole batch of
bootstrap resamples from batched confusion matrices at once; the tests check that it
agrees with the scikit-learn definition.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)
from sklearn.metrics import log_loss as _sk_log_loss

from bench.errors import ConfigError, close_matches

__all__ = [
    "ECE_BINS",
    "METRICS",
    "Metric",
    "compute_metrics",
    "confusion",
    "expected_calibration_error",
    "fast_path",
    "get_metric",
    "metric",
    "normalize_rows",
    "per_class_table",
    "validate_inputs",
]

# fn(y_true, proba, positive) with validated inputs and ``positive`` already resolved
# (an int for binary sets, None for multiclass).
MetricFn = Callable[[np.ndarray, np.ndarray, "int | None"], float]
# batched(cm, positive): cm is (B, k, k) counts, rows = truth; returns (B,) values.
BatchedFn = Callable[[np.ndarray, "int | None"], np.ndarray]

# Float32 softmax outputs sum to 1 within ~1e-6; this only has to catch logits, sigmoid
# outputs or a wrong axis, not rounding.
_ROW_SUM_TOL = 1e-3


@dataclass(frozen=True)
class Metric:
    """A registered metric. Call it like a function: ``METRICS["auc"](y_true, proba)``."""

    name: str
    fn: MetricFn
    higher_is_better: bool = True
    needs_proba: bool = False  # uses the probabilities, not just the argmax prediction
    batched: BatchedFn | None = None  # vectorised path from confusion counts, if any

    def __call__(
        self, y_true: np.ndarray, proba: np.ndarray, *, positive: int | None = None
    ) -> float:
        y_true, proba = validate_inputs(y_true, proba)
        return float(self.fn(y_true, proba, resolve_positive(positive, proba.shape[1])))


METRICS: dict[str, Metric] = {}


def metric(
    name: str, higher_is_better: bool = True, needs_proba: bool = False
) -> Callable[[MetricFn], MetricFn]:
    """Register ``fn(y_true, proba, positive) -> float`` under ``name``."""

    def register(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = Metric(name, fn, higher_is_better, needs_proba)
        return fn

    return register


def fast_path(name: str) -> Callable[[BatchedFn], BatchedFn]:
    """Attach a vectorised ``batched(cm, positive)`` to the already registered ``name``.

    Only for metrics that depend on the predictions alone: it sees the confusion counts of
    each resample, not the probabilities.
    """

    def attach(fn: BatchedFn) -> BatchedFn:
        METRICS[name] = replace(METRICS[name], batched=fn)
        return fn

    return attach


def get_metric(name: str) -> Metric:
    """The registered metric ``name``; ``ConfigError`` naming close matches if unknown."""
    try:
        return METRICS[name]
    except KeyError:
        # Metric names come from search-space files and command-line flags.
        raise ConfigError(
            f"Unknown metric {name!r}. Known metrics: {', '.join(METRICS)}."
            + close_matches(name, METRICS)
        ) from None


# --------------------------------------------------------------------------- inputs


def validate_inputs(y_true: object, proba: object) -> tuple[np.ndarray, np.ndarray]:
    """Check the shared inputs and return them as ``(int64 (n,), float64 (n, k))`` arrays.

    Raises ``ValueError`` if shapes disagree, labels are not integer indices in
    ``0..k-1``, or probabilities are non-finite, outside [0, 1] or rows do not sum to 1
    (within 1e-3). These are programming errors in the caller, not user errors.
    """
    y = np.asarray(y_true)
    p = np.asarray(proba)
    if y.ndim != 1:
        hint = " (labels stored as (n, 1), as MedMNIST does, need .ravel())" if y.ndim == 2 else ""
        raise ValueError(
            f"y_true must be 1-D with one class index per image; got shape {y.shape}{hint}"
        )
    if y.size and not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices; got dtype {y.dtype}")
    if p.ndim != 2:
        raise ValueError(f"proba must be 2-D (n_images, n_classes); got shape {p.shape}")
    if p.shape[1] < 2:
        raise ValueError(f"proba needs at least 2 class columns; got shape {p.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"y_true has {y.shape[0]} labels but proba has {p.shape[0]} rows")
    if y.shape[0] == 0:
        raise ValueError("no images: y_true and proba are empty")
    if not np.issubdtype(p.dtype, np.number) or np.issubdtype(p.dtype, np.complexfloating):
        raise ValueError(f"proba must be real numbers; got dtype {p.dtype}")
    p = p.astype(np.float64, copy=False)
    if not np.isfinite(p).all():
        bad = np.flatnonzero(~np.isfinite(p).all(axis=1))
        raise ValueError(f"proba has NaN or inf in {bad.size} rows, first row {bad[0]}")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(
            f"proba must be probabilities in [0, 1]; got values in [{p.min():.3g}, {p.max():.3g}]"
            " (logits? apply softmax first)"
        )
    sums = p.sum(axis=1)
    off = np.abs(sums - 1) > _ROW_SUM_TOL
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise ValueError(
            f"proba rows must sum to 1; {int(off.sum())} rows do not, e.g. row {row} sums to"
            f" {sums[row]:.6g} (sigmoid outputs or the wrong axis?)"
        )
    k = p.shape[1]
    if y.min() < 0 or y.max() >= k:
        raise ValueError(
            f"y_true must be class indices in 0..{k - 1} (proba has {k} columns);"
            f" got values in [{y.min()}, {y.max()}]"
        )
    return y.astype(np.int64, copy=False), p


def resolve_positive(positive: int | None, k: int) -> int | None:
    if k == 2:
        pos = 1 if positive is None else positive
        if pos not in (0, 1):
            raise ValueError(f"positive must be 0 or 1 for a binary set; got {positive!r}")
        return int(pos)
    if positive is not None:
        raise ValueError(f"positive is only for binary sets; proba has {k} classes")
    return None


def resolve_names(names: Iterable[str] | str | None) -> list[Metric]:
    if names is None:
        return list(METRICS.values())
    if isinstance(names, str):  # a lone name would otherwise iterate as characters
        names = [names]
    return [get_metric(n) for n in names]


# ------------------------------------------------------------------ shared arithmetic


def _ovr_auc(is_pos: np.ndarray, score: np.ndarray) -> float:
    # Explicit guard: scikit-learn < 1.6 raises here, newer versions warn and return NaN.
    if is_pos.all() or not is_pos.any():
        return float("nan")
    return float(roc_auc_score(is_pos, score))


def _ovr_rates(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-class one-vs-rest sensitivity and specificity of ``(..., k, k)`` counts; NaN if 0/0."""
    cm = cm.astype(np.float64, copy=False)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    actual = cm.sum(axis=-1)  # row sums: images of the class
    predicted = cm.sum(axis=-2)
    total = actual.sum(axis=-1, keepdims=True)
    tn = total - actual - predicted + tp
    with np.errstate(divide="ignore", invalid="ignore"):
        return tp / actual, tn / (total - actual)


def _pick(per_class: np.ndarray, positive: int | None) -> np.ndarray:
    # Binary: the positive class. Multiclass: macro mean, NaN if any class is undefined.
    return per_class[..., positive] if positive is not None else per_class.mean(axis=-1)


# --------------------------------------------------------------------------- metrics


@metric("accuracy")
def _accuracy(y_true: np.ndarray, proba: np.ndarray, positive: int | None) -> float:
    return float(accuracy_score(y_true, proba.argmax(axis=1)))


@fast_path("accuracy")
def _accuracy_batched(cm: np.ndarray, positive: int | None) -> np.ndarray:
    return np.trace(cm, axis1=-2, axis2=-1) / cm.sum(axis=(-2, -1))


@metric("balanced_accuracy")
def _balanced_accuracy(y_true: np.ndarray, proba: np.ndarray, positive: int | None) -> float:
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": expected on a fold missing a class; the
        # score then averages recall over the classes present, which is what we document.
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y_true, proba.argmax(axis=1)))


@fast_path("balanced_accuracy")
def _balanced_accuracy_batched(cm: np.ndarray, positive: int | None) -> np.ndarray:
    recall, _ = _ovr_rates(cm)
    return np.nanmean(recall, axis=-1)  # like scikit-learn: skip classes absent from y_true


@metric("macro_f1")
def _macro_f1(y_true: np.ndarray, proba: np.ndarray, positive: int | None) -> float:
    # Default labels (classes in y_true or y_pred) with zero_division=0 give the same
    # number on every scikit-learn >= 1.4; labels=range(k) with zero_division=nan does not.
    return float(f1_score(y_true, proba.argmax(axis=1), average="macro", zero_division=0))


@fast_path("macro_f1")
def _macro_f1_batched(cm: np.ndarray, positive: int | None) -> np.ndarray:
    cm = cm.astype(np.float64, copy=False)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    seen = cm.sum(axis=-1) + cm.sum(axis=-2)  # 0 only for a class neither true nor predicted
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.nanmean(2 * tp / seen, axis=-1)


@metric("auc", needs_proba=True)
def _auc(y_true: np.ndarray, proba: np.ndarray, positive: int | None) -> float:
    if positive is not None:
        return _ovr_auc(y_true == positive, proba[:, positive])
    # MedMNIST's evaluator: unweighted mean of per-class one-vs-rest AUCs. Written out
    # rather than roc_auc_score(multi_class="ovr") because that raises on a fold missing a
    # class unless given labels, and its behaviour there differs across versions.
    return float(np.mean([_ovr_auc(y_true == c, proba[:, c]) for c in range(proba.shape[1])]))


@metric("sensitivity")
def _sensitivity(y_true: np.ndarray, proba: np.ndarray, positive: int | None) -> float:
    return float(_sensitivity_batched(_confusion(y_true, proba, proba.shape[1])[None], positive)[0])


@fast_path("sensitivity")
def _sensitivity_batched(cm: np.ndarray, positive: int | None) -> np.ndarray:
    return _pick(_ovr_rates(cm)[0], positive)


@metric("specificity")
def _specificity(y_true: np.ndarray, proba: np.ndarray, positive: int | None) -> float:
    return float(_specificity_batched(_confusion(y_true, proba, proba.shape[1])[None], positive)[0])


@fast_path("specificity")
def _specificity_batched(cm: np.ndarray, positive: int | None) -> np.ndarray:
    return _pick(_ovr_rates(cm)[1], positive)


@metric("mcc")
def _mcc(y_true: np.ndarray, proba: np.ndarray, positive: int | None) -> float:
    return float(matthews_corrcoef(y_true, proba.argmax(axis=1)))


@fast_path("mcc")
def _mcc_batched(cm: np.ndarray, positive: int | None) -> np.ndarray:
    # scikit-learn's multiclass formula, one value per batch row.
    cm = cm.astype(np.float64, copy=False)
    t_sum = cm.sum(axis=-1)
    p_sum = cm.sum(axis=-2)
    n = t_sum.sum(axis=-1)
    cov_tp = np.trace(cm, axis1=-2, axis2=-1) * n - (t_sum * p_sum).sum(axis=-1)
    cov_pp = n**2 - (p_sum * p_sum).sum(axis=-1)
    cov_tt = n**2 - (t_sum * t_sum).sum(axis=-1)
    denom = cov_pp * cov_tt
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom == 0, 0.0, cov_tp / np.sqrt(denom))


@metric("log_loss", higher_is_better=False, needs_proba=True)
def _log_loss(y_true: np.ndarray, proba: np.ndarray, positive: int | None) -> float:
    # scikit-learn warns unless rows sum to 1 within ~1.5e-8; float32 softmax is off by
    # ~1e-7, so renormalise (validate_inputs already rejected anything really off).
    proba = proba / proba.sum(axis=1, keepdims=True)
    return float(_sk_log_loss(y_true, proba, labels=np.arange(proba.shape[1])))


# Calibration: do the probabilities mean what they say? Both are NaN-free on any valid input.
ECE_BINS = 10


def expected_calibration_error(y_true: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top-class confidence with ``bins`` equal-mass bins.

    Images are sorted by their confidence (the largest probability) and cut into ``bins`` groups
    of equal size (``np.array_split``; sizes differ by at most one; fewer images than bins gives
    one image per bin). ECE = sum over bins of (bin size / n) * |accuracy - mean confidence|,
    where accuracy is the share of the bin whose argmax is the true class. Equal-mass rather than
    equal-width bins: softmax confidences crowd near 1, which would leave most equal-width bins
    empty and the crowded one holding nearly everything (Nixon et al. 2019, "Measuring
    Calibration in Deep Learning").
    """
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y_true).astype(np.float64)
    order = np.argsort(confidence, kind="stable")
    n = y_true.shape[0]
    gap = sum(abs(correct[b].sum() - confidence[b].sum()) for b in np.array_split(order, min(bins, n)))
    return float(gap / n)


@metric("ece", higher_is_better=False, needs_proba=True)
def _ece(y_true: np.ndarray, proba: np.ndarray, positive: int | None) -> float:
    return expected_calibration_error(y_true, proba, ECE_BINS)


@metric("brier", higher_is_better=False, needs_proba=True)
def _brier(y_true: np.ndarray, proba: np.ndarray, positive: int | None) -> float:
    # Multi-class: mean over images of the sum over classes of the squared error against the
    # one-hot truth (Brier 1950; 0..2). Binary: the usual mean squared error of the positive
    # class's probability (0..1), which is half that sum. scikit-learn's brier_score_loss with
    # scale_by_half="auto" makes the same choice, so binary numbers read as clinicians expect.
    onehot = np.eye(proba.shape[1])[y_true]
    total = float(((proba - onehot) ** 2).sum(axis=1).mean())
    return total / 2 if proba.shape[1] == 2 else total


# ----------------------------------------------------------------------- public API


def compute_metrics(
    y_true: np.ndarray,
    proba: np.ndarray,
    *,
    positive: int | None = None,
    names: Iterable[str] | None = None,
) -> dict[str, float]:
    """Score ``proba`` against ``y_true``: ``{name: value}`` for ``names`` (default: all).

    Undefined metrics are NaN (see the module docstring); unknown names raise ConfigError.
    """
    metrics = resolve_names(names)
    y_true, proba = validate_inputs(y_true, proba)
    pos = resolve_positive(positive, proba.shape[1])
    return {m.name: float(m.fn(y_true, proba, pos)) for m in metrics}


def _confusion(y_true: np.ndarray, proba: np.ndarray, k: int) -> np.ndarray:
    return confusion_matrix(y_true, proba.argmax(axis=1), labels=np.arange(k))


def confusion(y_true: np.ndarray, y_pred_or_proba: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` int counts, rows = true class, columns = predicted class.

    Accepts predicted labels ``(n,)`` or probabilities ``(n, k)`` (argmax is taken). Every
    class gets a row and a column, including classes absent from this data.
    """
    pred = np.asarray(y_pred_or_proba)
    if pred.ndim == 2:
        pred = pred.argmax(axis=1)
    return confusion_matrix(np.asarray(y_true), pred, labels=np.arange(n_classes))


def normalize_rows(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its sum (row = per-class recall profile).

    A class with no images gets a row of NaN rather than zeros: zeros would read as
    "never recognised", which is not what happened.
    """
    cm = np.asarray(cm, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return cm / cm.sum(axis=1, keepdims=True)


def per_class_table(
    y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str]
) -> pd.DataFrame:
    """One row per class: class, precision, recall, f1, support, specificity, auc.

    All one-vs-rest. Undefined entries (precision of a never-predicted class, recall and
    auc of a class with no images) are NaN.
    """
    y_true, proba = validate_inputs(y_true, proba)
    k = proba.shape[1]
    if len(class_names) != k:
        raise ValueError(f"{len(class_names)} class names for {k} probability columns")
    labels = np.arange(k)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, proba.argmax(axis=1), labels=labels, zero_division=np.nan
    )
    _, specificity = _ovr_rates(_confusion(y_true, proba, k))
    auc = [_ovr_auc(y_true == c, proba[:, c]) for c in labels]
    return pd.DataFrame(
        {
            "class": list(class_names),
            "precision": precision.astype(float),
            "recall": recall.astype(float),
            "f1": f1.astype(float),
            "support": support.astype(int),
            "specificity": specificity,
            "auc": np.asarray(auc, dtype=float),
        }
    )
