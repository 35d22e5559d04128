"""Calibration and operating points of one refit model, beside its held-out metrics (``bench final``).

Both are chosen on the out-of-fold CV predictions of the trial being refit (predictions.csv)
and only applied to the held-out test predictions: the temperature (``bench.metrics.calibration``) and
the thresholds (``bench.metrics.operating``). Results go to calibration.csv and operating_points.csv
through ``RunDir``; what a model card or ``bench predict`` needs goes into final.json.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bench import metrics as M
from bench.errors import DataError
from bench.evaluation.grouping import Entry
from bench.metrics.calibration import calibration_table
from bench.metrics.operating import (
    OperatingPoint,
    apply_operating_points,
    choose_thresholds,
)
from bench.results import RunDir


def oof_arrays(run: RunDir, trial: int, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(y, proba, groups)`` of ``trial``'s out-of-fold predictions, or None if it has none."""
    frame = run.oof_predictions(trial)
    if frame.empty:
        return None
    columns = [f"p_{c}" for c in classes]
    missing = [c for c in columns if c not in frame]
    if missing:
        raise DataError(f"{run.file('predictions')}: trial {trial} lacks the probability columns {missing}.")
    proba = frame[columns].to_numpy(dtype=np.float64)
    return frame["target"].to_numpy(dtype=np.int64), proba / proba.sum(axis=1, keepdims=True), \
        frame["group"].astype(str).to_numpy()


def require_oof(run: RunDir, trials: dict[str, int], points: Sequence[OperatingPoint]) -> None:
    """Before any refit: operating points need each chosen trial's out-of-fold predictions."""
    if not points:
        return
    frame = run.table("predictions")
    have = set(frame.trial.astype(int)) if len(frame) else set()
    lacking = {b: t for b, t in trials.items() if t not in have}
    if lacking:
        raise DataError(f"{run.path}: --operating-point is chosen on the out-of-fold CV predictions, but "
                        f"predictions.csv has none for {', '.join(f'{b} (trial {t})' for b, t in lacking.items())}. "
                        f"Run `bench final` without --operating-point, or re-run the search.")


def evaluate_clinical(run: RunDir, entry: Entry, trial: int, classes: Sequence[str], positive: int | None,
                      y_test: np.ndarray, proba_test: np.ndarray, groups_test: np.ndarray, *, unit: str,
                      points: Sequence[OperatingPoint] = (), n_boot: int = 1000, seed: int = 0,
                      say: Callable[[str], Any] = lambda text: None) -> dict[str, Any]:
    """Write ``entry``'s calibration and operating-point rows; return what final.json keeps of them."""
    oof = oof_arrays(run, trial, classes)
    y_oof, p_oof, g_oof = oof if oof is not None else (None, None, None)
    grouped = unit != "images"  # without patient ids the CIs resample images
    temperature, calib = calibration_table(
        y_oof, p_oof, y_test, proba_test, groups_oof=g_oof if grouped else None,
        groups_test=groups_test if grouped else None, unit=unit, n_boot=n_boot, seed=seed, positive=positive)
    run.write_backbone_table("calibration", entry.columns, calib.assign(trial=trial))
    say(_calibration_line(calib, temperature, 0 if y_oof is None else len(y_oof)))
    info: dict[str, Any] = {"calibration": {
        "temperature": temperature, "ece_bins": M.ECE_BINS, "n_fitted_on": 0 if y_oof is None else int(len(y_oof)),
        "fitted_on": f"out-of-fold CV predictions of trial {trial}" if temperature is not None else
                     "nothing: the trial has no out-of-fold predictions, so no temperature was fitted"}}
    if points:
        thresholds = choose_thresholds(points, y_oof, p_oof, classes, positive)
        rates = pd.concat([
            apply_operating_points(thresholds, y_oof, p_oof, g_oof if grouped else None, unit=unit, split="cv",
                                   n_boot=n_boot, seed=seed),
            apply_operating_points(thresholds, y_test, proba_test, groups_test if grouped else None, unit=unit,
                                   split="test", n_boot=n_boot, seed=seed)], ignore_index=True)
        run.write_backbone_table("operating_points", entry.columns, rates.assign(trial=trial))
        for line in _operating_lines(rates):
            say(line)
        info["operating_points"] = [t.to_dict() for t in thresholds]
    elif run.file("operating_points").exists():  # thresholds of an earlier refit do not belong to this model
        run.write_backbone_table("operating_points", entry.columns, pd.DataFrame(columns=["entry"]))
    return info


def _ci(value: float, low: float, high: float) -> str:
    return f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _calibration_line(calib: pd.DataFrame, temperature: float | None, n_oof: int) -> str:
    ece = calib[(calib.split == "test") & (calib.metric == "ece")].set_index("scaling")
    before = _ci(*ece.loc["none", ["value", "low", "high"]])
    if temperature is None:
        return f"  held-out ECE ({M.ECE_BINS} equal-mass bins) {before}; no temperature (no out-of-fold predictions)"
    after = _ci(*ece.loc["temperature", ["value", "low", "high"]])
    return (f"  calibration: temperature {temperature:.3f} fitted on {n_oof} out-of-fold CV predictions; held-out "
            f"ECE ({M.ECE_BINS} equal-mass bins) {before} -> {after} after scaling")


def _operating_lines(rates: pd.DataFrame) -> list[str]:
    def rate(row: Any, name: str) -> str:
        return f"{name} {_ci(row[name], row[name + '_low'], row[name + '_high'])}"

    lines = []
    for (point, cls), rows in rates.groupby(["point", "class"], sort=False):
        cv, test = (rows[rows.split == s].iloc[0] for s in ("cv", "test"))
        lines.append(f"  operating point {point} on {cls} (threshold {cv.threshold:.4f}, chosen on CV): CV "
                     f"{rate(cv, 'sensitivity')}, {rate(cv, 'specificity')}; held-out {rate(test, 'sensitivity')}, "
                     f"{rate(test, 'specificity')}")
    return lines
