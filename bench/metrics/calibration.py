"""Calibration: reliability bins and temperature scaling fitted on out-of-fold CV predictions.

Temperature scaling (Guo et al. 2017) divides the log-probabilities by one number T and takes
the softmax again: T > 1 softens an over-confident model, T < 1 sharpens an under-confident
one, and the argmax (so accuracy, sensitivity, the confusion matrix) never changes. T is
chosen by minimising the negative log-likelihood of the *out-of-fold* CV predictions of the
trial being refit: each of those images was predicted by a fold model that did not train on
it, so they stand in for unseen data without touching the held-out test set. ``fit_temperature``
takes those predictions only; the test set is scored with the T it returns, never used to pick it.

The refit model is not one of the fold models, so a T fitted on the folds is an estimate for
it; the held-out ECE before and after says whether it carried over.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench import metrics as M

__all__ = ["CALIBRATION_METRICS", "Reliability", "apply_temperature", "calibration_rows", "calibration_table",
           "fit_temperature", "reliability"]

CALIBRATION_METRICS = ("ece", "brier", "log_loss")
# T is searched on log T in [log 0.05, log 20]: far beyond any softmax we have seen, and
# bounded so a separable fold set (NLL -> 0 as T -> 0) cannot run away.
_LOG_T_BOUNDS = (float(np.log(0.05)), float(np.log(20.0)))
# Probabilities of exactly 0 have log -inf; 1e-12 keeps their order and costs nothing.
_FLOOR = 1e-12


def _log(proba: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(proba, dtype=np.float64), _FLOOR, 1.0))


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(proba) / T)``: the same argmax, softer (T > 1) or sharper (T < 1)."""
    z = _log(proba) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(y: np.ndarray, proba: np.ndarray, temperature: float) -> float:
    z = _log(proba) / temperature
    z -= z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(y.size), y]))


def fit_temperature(y_oof: np.ndarray, proba_oof: np.ndarray) -> float:
    """The T minimising the NLL of out-of-fold predictions (bounded scalar search on log T)."""
    from scipy.optimize import minimize_scalar

    y, proba = M.validate_inputs(y_oof, proba_oof)
    result = minimize_scalar(lambda log_t: _nll(y, proba, float(np.exp(log_t))), bounds=_LOG_T_BOUNDS,
                             method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))


@dataclass(frozen=True)
class Reliability:
    """Equal-mass bins of the top-class confidence: what a reliability diagram plots."""

    confidence: np.ndarray  # mean confidence per bin
    accuracy: np.ndarray  # share correct per bin
    count: np.ndarray  # images per bin


def reliability(y: np.ndarray, proba: np.ndarray, bins: int = M.ECE_BINS) -> Reliability:
    """The bins ``ece`` averages over (the same sort and ``array_split``)."""
    y, proba = M.validate_inputs(y, proba)
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)
    parts = np.array_split(np.argsort(confidence, kind="stable"), min(bins, y.size))
    return Reliability(np.array([confidence[b].mean() for b in parts]), np.array([correct[b].mean() for b in parts]),
                       np.array([b.size for b in parts]))


def calibration_rows(y: np.ndarray, proba: np.ndarray, temperature: float | None, *, split: str,
                     groups: Any = None, unit: str = "images", n_boot: int = 1000, seed: int = 0,
                     positive: int | None = None) -> list[dict[str, Any]]:
    """ECE, Brier and log loss before ("none") and after ("temperature") scaling, with bootstrap CIs.

    One row per scaling x metric; the resampling is the same as every other CI (patients where
    ``groups`` are given). Without a temperature only the "none" rows are returned.
    """
    scalings = {"none": proba} if temperature is None else {"none": proba,
                                                            "temperature": apply_temperature(proba, temperature)}
    rows = []
    for scaling, p in scalings.items():
        cis = M.bootstrap_all(y, p, CALIBRATION_METRICS, n_boot=n_boot, seed=seed, positive=positive,
                              groups=groups, unit=unit if groups is not None else None)
        rows += [{"split": split, "scaling": scaling, "temperature": temperature if scaling != "none" else 1.0,
                  "metric": name, "value": ci.value, "low": ci.low, "high": ci.high, "n_images": ci.n,
                  "n_boot": ci.n_boot, "unit": ci.unit, "n_units": ci.n_units} for name, ci in cis.items()]
    return rows


def calibration_table(y_oof: np.ndarray | None, proba_oof: np.ndarray | None, y_test: np.ndarray,
                      proba_test: np.ndarray, *, groups_oof: Any = None, groups_test: Any = None,
                      unit: str = "images", n_boot: int = 1000, seed: int = 0,
                      positive: int | None = None) -> tuple[float | None, pd.DataFrame]:
    """Fit T on the out-of-fold predictions (if any) and score both splits before and after it.

    Returns (T or None, the rows). The CV "temperature" rows are in-sample (T was fitted on
    them) and say only how far scaling can go; the test rows are the honest ones.
    """
    temperature = None if y_oof is None or not len(y_oof) else fit_temperature(y_oof, proba_oof)
    rows = []
    if temperature is not None:
        rows += calibration_rows(y_oof, proba_oof, temperature, split="cv", groups=groups_oof, unit=unit,
                                 n_boot=n_boot, seed=seed, positive=positive)
    rows += calibration_rows(y_test, proba_test, temperature, split="test", groups=groups_test, unit=unit,
                             n_boot=n_boot, seed=seed, positive=positive)
    return temperature, pd.DataFrame(rows)
