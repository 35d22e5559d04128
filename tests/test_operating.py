"""Operating points: chosen on out-of-fold scores, applied unchanged elsewhere; parsing at the CLI."""

from __future__ import annotations

import numpy as np
import pytest

from bench.cli import main
from bench.metrics.operating import (
    OperatingPoint,
    Threshold,
    apply_operating_points,
    choose_thresholds,
    parse_point,
)


def scores(n: int, seed: int, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.2
    p = np.exp(logits)
    return y, p / p.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_sensitivity_target_is_reached_on_cv_with_the_most_specific_threshold(target):
    y, p = scores(503, 1)
    (t,) = choose_thresholds([OperatingPoint("sens", target)], y, p, ["neg", "pos"], positive=1)
    pos = p[y == 1, 1]
    assert (pos >= t.threshold).mean() >= target
    # Any higher threshold (the next score up among positives) misses the target.
    higher = pos[pos > t.threshold]
    if higher.size:
        assert (pos >= higher.min()).mean() < target


@pytest.mark.parametrize("target", [0.7, 0.9, 0.99, 1.0])
def test_specificity_target_is_reached_on_cv_with_the_most_sensitive_threshold(target):
    y, p = scores(498, 2)
    (t,) = choose_thresholds([OperatingPoint("spec", target)], y, p, ["neg", "pos"], positive=1)
    neg = p[y == 0, 1]
    assert (neg < t.threshold).mean() >= target
    lower = p[:, 1][p[:, 1] < t.threshold]
    if lower.size:  # the next score down would let too many negatives through
        assert (neg < lower.max()).mean() < target


def test_thresholds_are_applied_unchanged_to_the_test_set():
    y_cv, p_cv = scores(400, 3)
    y_te, p_te = scores(300, 4)
    thresholds = choose_thresholds([parse_point("sens=0.9"), parse_point("spec=0.9")], y_cv, p_cv, ["a", "b"], 1)
    # The positive class is the registry's: with positive=0 the threshold is on column 0.
    (on_a,) = choose_thresholds([parse_point("sens=0.9")], y_cv, p_cv, ["a", "b"], 0)
    assert (on_a.cls, on_a.class_index) == ("a", 0)
    test = apply_operating_points(thresholds, y_te, p_te, None, n_boot=100)
    again = apply_operating_points([t.to_dict() for t in thresholds], y_te, p_te, None, n_boot=100)
    assert test.equals(again)  # the dict form that final.json and the card keep works the same
    for t, row in zip(thresholds, test.itertuples()):
        called = p_te[:, 1] >= t.threshold
        assert row.threshold == t.threshold
        assert row.sensitivity == pytest.approx(called[y_te == 1].mean())
        assert row.specificity == pytest.approx((~called)[y_te == 0].mean())
        assert row.sensitivity_low <= row.sensitivity <= row.sensitivity_high
    # The test set does not move the threshold: choosing again on another test set gives the same one.
    other = apply_operating_points(thresholds, *scores(300, 5), None, n_boot=100)
    assert list(other.threshold) == [t.threshold for t in thresholds]


def test_multiclass_gets_one_threshold_per_class_one_vs_rest():
    y, p = scores(600, 6, k=3)
    thresholds = choose_thresholds([OperatingPoint("sens", 0.9)], y, p, ["x", "y", "z"], positive=None)
    assert [t.cls for t in thresholds] == ["x", "y", "z"]
    rates = apply_operating_points(thresholds, y, p, None, split="cv", n_boot=50)
    assert (rates.sensitivity >= 0.9).all()
    assert list(rates.n_positive) == [int((y == c).sum()) for c in range(3)]


def test_ci_resamples_patients_when_groups_are_given():
    y, p = scores(200, 7)
    groups = np.repeat(np.arange(50), 4)
    (t,) = choose_thresholds([OperatingPoint("sens", 0.9)], y, p, ["a", "b"], 1)
    row = apply_operating_points([t], y, p, groups, unit="patients", n_boot=200).iloc[0]
    assert (row.unit, row.n_units, row.n_images) == ("patients", 50, 200)


def test_a_class_missing_from_the_out_of_fold_predictions_is_a_clear_error():
    y, p = scores(50, 8)
    with pytest.raises(ValueError, match="no images of it"):
        choose_thresholds([OperatingPoint("sens", 0.9)], np.zeros(50, int), p, ["a", "b"], 1)


def test_parse_point_and_threshold_round_trip():
    assert parse_point(" SPEC=0.90 ") == OperatingPoint("spec", 0.9)
    assert parse_point("spec=0.90").name == "spec=0.9"
    t = Threshold("sens=0.95", "sens", 0.95, "PNEUMONIA", 1, 0.25)
    assert Threshold.from_dict(t.to_dict()) == t


@pytest.mark.parametrize("bad", ["sens", "sens=", "sens=abc", "sens=0", "sens=1.5", "sens=nan", "ppv=0.9", "0.95"])
def test_bench_final_refuses_a_malformed_operating_point(bad, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["final", "--run", str(tmp_path), "--operating-point", bad])
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--operating-point" in err and "sens=0.95" in err and repr(bad) in err
