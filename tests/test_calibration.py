"""ECE and Brier against independent references; temperature scaling fitted on out-of-fold data only."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import brier_score_loss, log_loss

from bench.metrics import ECE_BINS, METRICS, bootstrap_ci, compute_metrics
from bench.metrics.calibration import (
    apply_temperature,
    calibration_table,
    fit_temperature,
    reliability,
)


def reference_ece(y: np.ndarray, proba: np.ndarray, bins: int) -> float:
    """Equal-mass ECE written out with a plain loop over quantile ranks (no array_split)."""
    n = len(y)
    conf = proba.max(axis=1)
    hit = proba.argmax(axis=1) == y
    order = sorted(range(n), key=lambda i: (conf[i], i))
    total = 0.0
    for b in range(bins):
        members = [order[i] for i in range(n) if i * bins // n == b]
        if members:
            total += len(members) / n * abs(np.mean(hit[members]) - np.mean(conf[members]))
    return total


def overconfident(n: int, k: int, seed: int, sharpen: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """A model whose logits are ``sharpen`` times too large: right more often than chance, far too sure."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    z = sharpen * logits
    p = np.exp(z - z.max(axis=1, keepdims=True))
    return y, p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("n, k", [(1000, 2), (997, 4), (7, 3)])
def test_ece_matches_an_independent_equal_mass_implementation(n, k):
    y, p = overconfident(n, k, seed=n)
    bins = min(ECE_BINS, n)
    assert compute_metrics(y, p, names=["ece"])["ece"] == pytest.approx(reference_ece(y, p, bins), abs=1e-12)
    # Equal-mass: bin sizes differ by at most one image.
    counts = reliability(y, p).count
    assert counts.sum() == n and counts.max() - counts.min() <= 1 and len(counts) == bins


def test_ece_of_a_calibrated_model_is_small_and_of_an_overconfident_one_large():
    rng = np.random.default_rng(0)
    p1 = rng.uniform(0, 1, 20000)
    y = (rng.uniform(0, 1, p1.size) < p1).astype(int)  # truth drawn from the stated probability
    calibrated = np.c_[1 - p1, p1]
    assert METRICS["ece"](y, calibrated) < 0.02
    y2, p2 = overconfident(20000, 2, 1)
    assert METRICS["ece"](y2, p2) > 0.1


def test_brier_matches_scikit_learn():
    y, p = overconfident(500, 2, 3)
    assert METRICS["brier"](y, p) == pytest.approx(brier_score_loss(y, p[:, 1]))
    assert METRICS["brier"](y, p, positive=0) == pytest.approx(brier_score_loss(y == 0, p[:, 0]))
    y4, p4 = overconfident(500, 4, 4)
    # Multiclass: the sum over classes (scikit-learn's multiclass Brier), written out by hand too.
    by_hand = np.mean([sum((p4[i, c] - (y4[i] == c)) ** 2 for c in range(4)) for i in range(500)])
    assert METRICS["brier"](y4, p4) == pytest.approx(by_hand)
    assert METRICS["brier"](y4, p4) == pytest.approx(brier_score_loss(y4, p4, labels=range(4)))


def test_temperature_scaling_lowers_held_out_nll_and_keeps_the_argmax():
    y_oof, p_oof = overconfident(600, 3, 10)
    y_test, p_test = overconfident(400, 3, 11)
    t = fit_temperature(y_oof, p_oof)
    assert 2.0 < t < 4.5  # the logits were 3x too large
    scaled = apply_temperature(p_test, t)
    assert log_loss(y_test, scaled) < 0.8 * log_loss(y_test, p_test)
    assert METRICS["ece"](y_test, scaled) < METRICS["ece"](y_test, p_test)
    assert (scaled.argmax(axis=1) == p_test.argmax(axis=1)).all()
    assert np.allclose(apply_temperature(p_test, 1.0), p_test)


def test_the_temperature_is_fitted_on_out_of_fold_predictions_only():
    y_oof, p_oof = overconfident(300, 2, 20)
    a = calibration_table(y_oof, p_oof, *overconfident(1000, 2, 21), n_boot=50)
    b = calibration_table(y_oof, p_oof, *overconfident(250, 2, 22, sharpen=0.3), n_boot=50)  # a very different test set
    assert a[0] == b[0] == fit_temperature(y_oof, p_oof)
    test_rows = a[1][a[1].split == "test"].set_index(["scaling", "metric"])
    assert test_rows.loc[("temperature", "ece"), "value"] < test_rows.loc[("none", "ece"), "value"]
    assert set(a[1].split) == {"cv", "test"} and set(a[1].scaling) == {"none", "temperature"}


def test_no_out_of_fold_predictions_means_no_temperature_and_only_raw_test_rows():
    t, rows = calibration_table(None, None, *overconfident(100, 2, 30))
    assert t is None and set(rows.split) == {"test"} and set(rows.scaling) == {"none"}


def test_calibration_cis_resample_patients():
    y, p = overconfident(120, 2, 40)
    groups = np.repeat(np.arange(30), 4)
    ci = bootstrap_ci(y, p, "ece", n_boot=200, groups=groups, unit="patients")
    assert (ci.unit, ci.n_units, ci.n) == ("patients", 30, 120)
    assert ci.low < ci.high
