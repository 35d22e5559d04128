"""bench.metrics against scikit-learn, hand-made confusion matrices and a coverage simulation."""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from bench.errors import ConfigError
from bench.metrics import (
    CI,
    METRICS,
    Metric,
    bootstrap_all,
    bootstrap_ci,
    bootstrap_phrase,
    compute_metrics,
    confusion,
    get_metric,
    normalize_rows,
    per_class_table,
    validate_inputs,
)
from bench.metrics.bootstrap import (
    _batched_confusion,
    _Clusters,
    _resample_indices,
    _resample_units,
)

ALL = ["accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity", "mcc", "log_loss", "ece",
       "brier"]
LOWER_IS_BETTER = ["log_loss", "ece", "brier"]


def make_data(n: int, k: int, seed: int, strength: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """A noisy but informative classifier: softmax of noise plus a bump on the true class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += strength
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    assert set(np.unique(y)) == set(range(k))
    return y, p


def proba_for(pred: np.ndarray, k: int, confidence: float = 0.7) -> np.ndarray:
    """Probabilities whose argmax is ``pred``."""
    p = np.full((pred.size, k), (1 - confidence) / (k - 1))
    p[np.arange(pred.size), pred] = confidence
    return p


def from_confusion(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) realising the confusion matrix ``cm`` (rows = truth)."""
    pairs = [(t, p) for t in range(len(cm)) for p in range(len(cm)) for _ in range(cm[t][p])]
    y, pred = map(np.array, zip(*pairs))
    return y, pred


@pytest.fixture(autouse=True)
def _no_warnings():
    # Undefined metrics must come back as NaN quietly, not as warnings.
    # (UndefinedMetricWarning is a UserWarning; numpy's 0/0 is a RuntimeWarning.)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.simplefilter("error", RuntimeWarning)
        yield


# ---------------------------------------------------------------------- registry


def test_registry_contents_and_directions():
    assert list(METRICS) == ALL
    assert all(isinstance(m, Metric) and m.name == n for n, m in METRICS.items())
    assert [n for n, m in METRICS.items() if not m.higher_is_better] == LOWER_IS_BETTER
    assert {n for n, m in METRICS.items() if m.needs_proba} == {"auc", *LOWER_IS_BETTER}


def test_unknown_metric_is_a_config_error_with_suggestion():
    with pytest.raises(ConfigError, match="Did you mean 'accuracy'"):
        get_metric("acuracy")
    y, p = make_data(50, 2, 0)
    with pytest.raises(ConfigError, match="macro_f2"):
        compute_metrics(y, p, names=["macro_f2"])


def test_names_selects_and_orders_and_accepts_a_single_string():
    y, p = make_data(100, 3, 0)
    assert list(compute_metrics(y, p, names=["mcc", "auc"])) == ["mcc", "auc"]
    assert list(compute_metrics(y, p, names="auc")) == ["auc"]
    assert list(compute_metrics(y, p)) == ALL


def test_metric_objects_are_callable():
    y, p = make_data(100, 2, 1)
    assert METRICS["auc"](y, p) == compute_metrics(y, p)["auc"]
    assert METRICS["sensitivity"](y, p, positive=0) == compute_metrics(y, p, positive=0)["sensitivity"]


# ---------------------------------------------------------------- vs scikit-learn


@pytest.mark.parametrize("k", [2, 3, 4, 8])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_sklearn(k, seed):
    y, p = make_data(400, k, seed)
    pred = p.argmax(axis=1)
    got = compute_metrics(y, p)
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro"))
    assert got["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, p))
    if k == 2:
        assert got["auc"] == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
        assert got["sensitivity"] == pytest.approx(skm.recall_score(y, pred, pos_label=1))
        assert got["specificity"] == pytest.approx(skm.recall_score(y, pred, pos_label=0))
    else:
        assert got["sensitivity"] == pytest.approx(skm.recall_score(y, pred, average="macro"))
        # Every class present: macro sensitivity is balanced accuracy.
        assert got["sensitivity"] == pytest.approx(got["balanced_accuracy"])


@pytest.mark.parametrize("k", [3, 4, 8])
def test_multiclass_auc_is_mean_of_per_class_ovr(k):
    y, p = make_data(500, k, k)
    per_class = [skm.roc_auc_score(y == c, p[:, c]) for c in range(k)]
    auc = compute_metrics(y, p)["auc"]
    assert auc == pytest.approx(np.mean(per_class))
    assert auc == pytest.approx(skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))


def test_binary_auc_positive_0_vs_1():
    y, p = make_data(300, 2, 3)
    m0 = compute_metrics(y, p, positive=0)
    m1 = compute_metrics(y, p, positive=1)
    # p0 = 1 - p1 and the labels flip too, so the ranking (and the AUC) is the same.
    assert m0["auc"] == pytest.approx(m1["auc"]) == pytest.approx(skm.roc_auc_score(y, p[:, 1]))
    assert m0["auc"] == pytest.approx(skm.roc_auc_score(y == 0, p[:, 0]))
    # Sensitivity and specificity swap roles.
    assert m0["sensitivity"] == pytest.approx(m1["specificity"])
    assert m0["specificity"] == pytest.approx(m1["sensitivity"])
    # Default positive is class 1.
    assert compute_metrics(y, p) == m1


# ---------------------------------------------------------------- by hand


def test_binary_sensitivity_specificity_by_hand():
    # rows = truth (0, 1): TN=16 FP=4 / FN=3 TP=7
    cm = np.array([[16, 4], [3, 7]])
    y, pred = from_confusion(cm)
    p = proba_for(pred, 2)
    m1 = compute_metrics(y, p, positive=1)
    assert m1["sensitivity"] == pytest.approx(7 / 10)
    assert m1["specificity"] == pytest.approx(16 / 20)
    m0 = compute_metrics(y, p, positive=0)
    assert m0["sensitivity"] == pytest.approx(16 / 20)
    assert m0["specificity"] == pytest.approx(7 / 10)
    assert m1["accuracy"] == pytest.approx(23 / 30)
    assert m1["balanced_accuracy"] == pytest.approx((0.7 + 0.8) / 2)
    np.testing.assert_array_equal(confusion(y, p, 2), cm)


def test_multiclass_sensitivity_specificity_by_hand():
    cm = np.array([[5, 1, 0], [2, 6, 2], [0, 1, 3]])
    y, pred = from_confusion(cm)
    p = proba_for(pred, 3)
    got = compute_metrics(y, p)
    sens = [5 / 6, 6 / 10, 3 / 4]
    # specificity of c = true negatives / images not of class c
    spec = [(14 - 2) / 14, (10 - 2) / 10, (16 - 2) / 16]
    assert got["sensitivity"] == pytest.approx(np.mean(sens))
    assert got["specificity"] == pytest.approx(np.mean(spec))
    table = per_class_table(y, p, ["a", "b", "c"])
    np.testing.assert_allclose(table["recall"], sens)
    np.testing.assert_allclose(table["specificity"], spec)
    np.testing.assert_allclose(table["precision"], [5 / 7, 6 / 8, 3 / 5])
    np.testing.assert_array_equal(table["support"], [6, 10, 4])


# ---------------------------------------------------------------- edge cases


def test_fold_missing_a_class():
    y, p = make_data(300, 4, 5)
    keep = y != 2
    y, p = y[keep], p[keep]
    pred = p.argmax(axis=1)
    assert (pred == 2).any()  # the model still predicts the missing class sometimes
    got = compute_metrics(y, p)
    assert np.isnan(got["auc"])
    assert np.isnan(got["sensitivity"])  # class 2's recall is 0/0
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, p, labels=range(4)))
    assert np.isfinite(got["specificity"])
    assert got["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert got["mcc"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))


def test_binary_fold_with_only_negatives():
    y = np.zeros(20, dtype=int)
    p = proba_for(np.r_[np.zeros(15, int), np.ones(5, int)], 2)
    got = compute_metrics(y, p)
    assert np.isnan(got["auc"]) and np.isnan(got["sensitivity"])
    assert got["specificity"] == pytest.approx(0.75)
    assert got["accuracy"] == pytest.approx(0.75)
    assert np.isfinite(got["log_loss"])
    # With positive=0 every image is positive: specificity has no negatives.
    got0 = compute_metrics(y, p, positive=0)
    assert got0["sensitivity"] == pytest.approx(0.75) and np.isnan(got0["specificity"])


@pytest.mark.parametrize("k", [2, 3, 8])
def test_perfect_classifier(k):
    y = np.repeat(np.arange(k), 5)
    got = compute_metrics(y, np.eye(k)[y])
    for name in ALL:
        if name in LOWER_IS_BETTER:
            assert got[name] == pytest.approx(0, abs=1e-12)
        else:
            assert got[name] == pytest.approx(1.0), name


def test_constant_predictor_mcc_is_zero():
    y = np.array([0, 1, 1, 2])
    assert compute_metrics(y, proba_for(np.zeros(4, int), 3))["mcc"] == 0.0


def test_float32_softmax_is_accepted_without_warnings():
    y, p = make_data(200, 8, 0)
    p32 = p.astype(np.float32)
    got = compute_metrics(y, p32)
    assert got["log_loss"] == pytest.approx(skm.log_loss(y, p), rel=1e-5)


# ---------------------------------------------------------------- fast paths


def _cases():
    for k in (2, 3, 4, 8):
        for seed in (0, 1):
            yield make_data(120, k, seed, strength=1.0)
    y, p = make_data(200, 4, 9)
    yield y[y != 1], p[y != 1]  # a missing class
    y = np.array([0, 1, 1, 2, 2, 2])
    yield y, proba_for(np.zeros(6, int), 3)  # constant predictor
    yield y, proba_for(y, 3)  # perfect


@pytest.mark.parametrize("name", [n for n, m in METRICS.items() if m.batched is not None])
def test_fast_paths_agree_with_sklearn_definitions(name):
    m = METRICS[name]
    for y, p in _cases():
        k = p.shape[1]
        for pos in ((0, 1) if k == 2 else (None,)):
            cm = confusion(y, p, k)[None]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fast = m.batched(cm, pos)[0]
            slow = m.fn(y, p, pos)
            np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12, err_msg=f"{name} k={k} pos={pos}")


def test_batched_confusion_matches_per_row_confusion():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, (5, 30)), rng.integers(0, 4, (5, 30))
    cms = _batched_confusion(t, p, 4)
    for b in range(5):
        np.testing.assert_array_equal(cms[b], confusion(t[b], p[b], 4))


# ---------------------------------------------------------------- confusion & table


def test_confusion_keeps_absent_classes_and_normalizes():
    y = np.array([0, 0, 1, 3])
    pred = np.array([0, 1, 1, 0])
    cm = confusion(y, pred, 4)
    assert cm.shape == (4, 4)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, pred, labels=range(4)))
    np.testing.assert_array_equal(cm, confusion(y, proba_for(pred, 4), 4))
    norm = normalize_rows(cm)
    np.testing.assert_allclose(norm[[0, 1, 3]].sum(axis=1), 1.0)
    assert np.isnan(norm[2]).all()  # class 2 has no images
    np.testing.assert_allclose(norm[0], [0.5, 0.5, 0, 0])


def test_per_class_table_matches_sklearn():
    y, p = make_data(300, 4, 2)
    pred = p.argmax(axis=1)
    t = per_class_table(y, p, ["w", "x", "y", "z"])
    assert list(t.columns) == ["class", "precision", "recall", "f1", "support", "specificity", "auc"]
    assert list(t["class"]) == ["w", "x", "y", "z"]
    pr, rc, f1, sup = skm.precision_recall_fscore_support(y, pred)
    np.testing.assert_allclose(t["precision"], pr)
    np.testing.assert_allclose(t["recall"], rc)
    np.testing.assert_allclose(t["f1"], f1)
    np.testing.assert_array_equal(t["support"], sup)
    np.testing.assert_allclose(t["auc"], [skm.roc_auc_score(y == c, p[:, c]) for c in range(4)])
    assert t["auc"].mean() == pytest.approx(compute_metrics(y, p)["auc"])
    spec = [skm.recall_score(y != c, pred != c) for c in range(4)]
    np.testing.assert_allclose(t["specificity"], spec)


def test_per_class_table_missing_class_and_bad_names():
    y, p = make_data(200, 3, 4)
    keep = y != 0
    t = per_class_table(y[keep], p[keep], ["a", "b", "c"])
    assert t.loc[0, "support"] == 0
    assert np.isnan(t.loc[0, "auc"]) and np.isnan(t.loc[0, "recall"])
    assert t.loc[1:, "auc"].notna().all()
    assert isinstance(t, pd.DataFrame)
    with pytest.raises(ValueError, match="2 class names for 3"):
        per_class_table(y, p, ["a", "b"])


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("y", "p", "match"),
    [
        (np.zeros((4, 1), int), np.full((4, 2), 0.5), r"1-D.*ravel"),
        (np.zeros(4), np.full((4, 2), 0.5), "integer class indices"),
        (np.zeros(4, int), np.full(4, 0.5), "2-D"),
        (np.zeros(4, int), np.ones((4, 1)), "at least 2 class columns"),
        (np.zeros(3, int), np.full((4, 2), 0.5), "3 labels but proba has 4 rows"),
        (np.zeros(0, int), np.zeros((0, 2)), "empty"),
        (np.zeros(2, int), np.array([[0.5, np.nan], [0.5, 0.5]]), "NaN or inf"),
        (np.zeros(2, int), np.array([[2.0, -1.0], [0.5, 0.5]]), r"\[0, 1\].*logits"),
        (np.zeros(2, int), np.array([[0.9, 0.9], [0.5, 0.5]]), "sum to 1"),
        (np.array([0, 2]), np.full((2, 2), 0.5), r"0\.\.1"),
        (np.array([-1, 0]), np.full((2, 2), 0.5), r"0\.\.1"),
    ],
)
def test_validate_inputs_rejects(y, p, match):
    with pytest.raises(ValueError, match=match):
        validate_inputs(y, p)


def test_validate_inputs_returns_clean_arrays():
    y, p = validate_inputs([0, 1, 1], [[0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    assert y.dtype == np.int64 and p.dtype == np.float64 and p.shape == (3, 2)


def test_positive_must_fit_the_task():
    y, p = make_data(50, 2, 0)
    with pytest.raises(ValueError, match="0 or 1"):
        compute_metrics(y, p, positive=2)
    y, p = make_data(50, 3, 0)
    with pytest.raises(ValueError, match="only for binary"):
        compute_metrics(y, p, positive=1)


# ---------------------------------------------------------------- bootstrap


def test_resamples_are_stratified():
    y = np.r_[np.zeros(90, int), np.ones(7, int), np.full(3, 2)]
    (idx,) = list(_resample_indices(y, 50, np.random.default_rng(0)))
    assert idx.shape == (50, 100)
    for c, count in [(0, 90), (1, 7), (2, 3)]:
        assert ((y[idx] == c).sum(axis=1) == count).all()
    assert len({tuple(r) for r in np.sort(idx, axis=1)}) > 1  # rows actually differ


def test_resampling_in_chunks_covers_n_boot(monkeypatch):
    monkeypatch.setattr("bench.metrics.bootstrap._CHUNK_ELEMENTS", 1000)
    y, p = make_data(300, 3, 0)
    blocks = list(_resample_indices(y, 10, np.random.default_rng(0)))
    assert [b.shape for b in blocks] == [(3, 300)] * 3 + [(1, 300)]
    ci = bootstrap_ci(y, p, "accuracy", n_boot=10)
    assert ci.n_boot == 10


@pytest.mark.parametrize("name", ALL)
def test_ci_contains_point_estimate(name):
    y, p = make_data(150, 3, 7)
    n_boot = 60 if name in ("auc", *LOWER_IS_BETTER) else 500  # no fast path: one call per resample
    ci = bootstrap_ci(y, p, name, n_boot=n_boot)
    assert isinstance(ci, CI)
    assert ci.value == pytest.approx(compute_metrics(y, p)[name])
    assert ci.low <= ci.value <= ci.high
    assert ci.low < ci.high
    assert (ci.n, ci.n_boot) == (150, n_boot)


def test_ci_narrows_with_more_data():
    small = bootstrap_ci(*make_data(200, 2, 0), "accuracy")
    large = bootstrap_ci(*make_data(3200, 2, 0), "accuracy")
    ratio = (small.high - small.low) / (large.high - large.low)
    assert 2.5 < ratio < 6  # ~sqrt(16) = 4


def test_ci_is_reproducible_and_shared_across_metrics():
    y, p = make_data(200, 4, 1)
    a = bootstrap_ci(y, p, "balanced_accuracy", n_boot=100, seed=5)
    assert a == bootstrap_ci(y, p, "balanced_accuracy", n_boot=100, seed=5)
    assert a != bootstrap_ci(y, p, "balanced_accuracy", n_boot=100, seed=6)
    both = bootstrap_all(y, p, ["mcc", "balanced_accuracy", "auc"], n_boot=100, seed=5)
    assert list(both) == ["mcc", "balanced_accuracy", "auc"]
    assert both["balanced_accuracy"] == a  # same resamples whatever else is computed


def test_bootstrap_all_defaults_to_every_metric():
    y, p = make_data(80, 2, 3)
    cis = bootstrap_all(y, p, n_boot=20, positive=0)
    assert list(cis) == ALL
    assert cis["sensitivity"].value == pytest.approx(compute_metrics(y, p, positive=0)["sensitivity"])


def test_nan_resamples_are_dropped(monkeypatch):
    # A metric that is undefined on some resamples: accuracy, NaN when below the median.
    y, p = make_data(200, 2, 0)
    acc = METRICS["accuracy"]

    def sometimes(yt, pr, pos):
        v = acc.fn(yt, pr, pos)
        return v if v >= acc.fn(y, p, pos) else float("nan")

    monkeypatch.setitem(METRICS, "sometimes", Metric("sometimes", sometimes))
    ci = bootstrap_ci(y, p, "sometimes", n_boot=200)
    assert 50 < ci.n_boot < 200
    assert ci.low >= ci.value


def test_undefined_metric_gives_nan_interval():
    y, p = make_data(200, 3, 0)
    keep = y != 1
    ci = bootstrap_ci(y[keep], p[keep], "auc", n_boot=20)
    assert np.isnan(ci.value) and np.isnan(ci.low) and np.isnan(ci.high) and ci.n_boot == 0


def test_bootstrap_argument_checks():
    y, p = make_data(50, 2, 0)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(y, p, "accuracy", n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(y, p, "accuracy", alpha=1.5)
    with pytest.raises(ConfigError):
        bootstrap_ci(y, p, "nope")


def test_bootstrap_accuracy_is_fast():
    y, p = make_data(1000, 8, 0)
    bootstrap_ci(y, p, "accuracy", n_boot=10)  # warm-up
    t0 = time.perf_counter()
    bootstrap_ci(y, p, "accuracy", n_boot=1000)
    assert time.perf_counter() - t0 < 0.5


def test_coverage_on_simulated_classifier():
    """A classifier right with probability 0.8 on every image: ~95% of CIs contain 0.8."""
    rng = np.random.default_rng(123)
    true_acc, n, k, reps = 0.8, 200, 3, 300
    hits = 0
    for r in range(reps):
        y = rng.integers(0, k, n)
        right = rng.random(n) < true_acc
        wrong = (y + rng.integers(1, k, n)) % k
        pred = np.where(right, y, wrong)
        ci = bootstrap_ci(y, proba_for(pred, k), "accuracy", n_boot=300, seed=r)
        hits += ci.low <= true_acc <= ci.high
    coverage = hits / reps
    # Binomial sd of the estimate is ~1.3 points at 95%; percentile intervals run a bit short.
    assert 0.90 <= coverage <= 0.99, coverage


# -------------------------------------------------------- bootstrap over patients


def reference_ci(y, p, groups, name, n_boot, seed, alpha=0.05, positive=None):
    """The cluster bootstrap written out plainly, one resample at a time: groups in order of
    their first image, stratified by the set of classes they hold (single classes first), each
    resample the drawn groups' images concatenated. Same generator calls as bench (one chunk)."""
    rng = np.random.default_rng(seed)
    ids = list(dict.fromkeys(groups.tolist()))
    members = {g: np.flatnonzero(groups == g) for g in ids}
    holds = {g: tuple(sorted(set(y[members[g]].tolist()))) for g in ids}
    keys = sorted(set(holds.values()), key=lambda key: (len(key), key))
    strata = [[g for g in ids if holds[g] == key] for key in keys]
    draws = [rng.integers(0, len(s), size=(n_boot, len(s))) for s in strata]
    values = []
    for i in range(n_boot):
        images = np.concatenate([members[s[j]] for s, d in zip(strata, draws) for j in d[i]])
        values.append(METRICS[name](y[images], p[images], positive=positive))
    v = np.asarray(values)
    v = v[np.isfinite(v)]
    return np.quantile(v, [alpha / 2, 1 - alpha / 2]), v.size


def patients(n_groups: int, k: int, seed: int, mixed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images of ``n_groups`` patients (1-6 images each), one class per patient except ``mixed``
    patients that hold two classes; predictions correlated within a patient."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, n_groups)
    sizes[:mixed] = np.maximum(sizes[:mixed], 2)
    groups = np.repeat([f"patient-{g}" for g in rng.permutation(n_groups)], sizes)
    cls = np.repeat(np.arange(n_groups) % k, sizes)
    for g in range(mixed):  # the first images of these patients get the next class too
        at = np.flatnonzero(np.repeat(np.arange(n_groups), sizes) == g)
        cls[at[0]] = (cls[at[0]] + 1) % k
    skill = np.repeat(rng.normal(1.0, 1.0, n_groups), sizes)  # how well the model reads each patient
    logits = rng.normal(size=(cls.size, k))
    logits[np.arange(cls.size), cls] += skill
    proba = np.exp(logits)
    return cls, proba / proba.sum(axis=1, keepdims=True), groups


def one_patient_many_images(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """60 images of 40 patients like the demo's test set: 39 patients with one image each, scored
    right 80% of the time, and one class-1 patient with 21 images, all scored wrong."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.zeros(30, int), np.ones(9, int), np.ones(21, int)]
    groups = np.r_[np.arange(39), np.full(21, 39)]
    right = np.r_[rng.random(39) < 0.8, np.zeros(21, bool)]
    score = np.where(right == (y == 1), 0.5 + 0.5 * rng.random(60), 0.5 * rng.random(60))
    return y, np.c_[1 - score, score], groups


@pytest.mark.parametrize("name", ["balanced_accuracy", "auc"])
def test_one_patient_with_many_images_widens_the_interval(name):
    y, p, groups = one_patient_many_images(0)
    images = bootstrap_ci(y, p, name, n_boot=300)
    by_patient = bootstrap_ci(y, p, name, n_boot=300, groups=groups, unit="patients")
    assert (images.unit, images.n_units, images.n) == ("images", 60, 60)
    assert (by_patient.unit, by_patient.n_units, by_patient.n) == ("patients", 40, 60)
    assert by_patient.value == images.value
    assert (by_patient.high - by_patient.low) > 1.5 * (images.high - images.low)
    # The same images as 60 separate patients: independent again, so exactly the image interval.
    apart = bootstrap_ci(y, p, name, n_boot=300, groups=np.arange(60), unit="patients")
    assert (apart.low, apart.high) == (images.low, images.high)


@pytest.mark.parametrize("k, positive", [(2, 1), (3, None)])
def test_one_image_per_group_is_exactly_the_image_bootstrap(k, positive):
    y, p = make_data(90, k, 4)
    names = np.array([f"id-{i}" for i in np.random.default_rng(0).permutation(90)])  # order of ids is irrelevant
    images = bootstrap_all(y, p, n_boot=80, seed=3, positive=positive)
    groups = bootstrap_all(y, p, n_boot=80, seed=3, positive=positive, groups=names, unit="images")
    assert groups == images  # every field, bit for bit, slow metrics (auc, log_loss) included


def test_image_bootstrap_matches_the_plain_reference():
    """No groups: the class-stratified image bootstrap, as it always was (same draws, same values)."""
    y, p = make_data(70, 3, 2)
    for name in ("balanced_accuracy", "auc", "log_loss"):
        ci = bootstrap_ci(y, p, name, n_boot=150, seed=9)
        (low, high), n_ok = reference_ci(y, p, np.arange(70), name, 150, 9)
        assert (ci.low, ci.high, ci.n_boot) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12), n_ok)


@pytest.mark.parametrize("k, mixed", [(2, 0), (2, 3), (4, 2)])
@pytest.mark.parametrize("name", ["balanced_accuracy", "mcc", "sensitivity", "auc", "log_loss"])
def test_cluster_bootstrap_matches_the_slow_reference(k, mixed, name):
    y, p, groups = patients(25, k, seed=k + mixed, mixed=mixed)
    positive = 1 if k == 2 else None
    if name == "sensitivity" and k > 2:
        positive = None
    ci = bootstrap_ci(y, p, name, n_boot=120, seed=11, positive=positive, groups=groups, unit="patients")
    (low, high), n_ok = reference_ci(y, p, groups, name, 120, 11, positive=positive)
    assert ci.n_boot == n_ok
    assert ci.low == pytest.approx(low, rel=1e-12) and ci.high == pytest.approx(high, rel=1e-12)
    assert (ci.n, ci.n_units) == (y.size, 25)


def test_cluster_resamples_keep_every_class_and_every_stratum():
    # Class 2 occurs only inside patients that also hold class 1: resampling classes of single-class
    # patients alone could lose it; stratifying by each patient's set of classes cannot.
    y = np.r_[0, 0, 0, 1, 1, 0, 1, 1, 2, 1, 2, 2, 0]
    groups = np.r_[0, 0, 1, 2, 2, 3, 4, 5, 5, 6, 6, 6, 7]
    p = proba_for(y, 3)
    units = _Clusters(y, p.argmax(axis=1), 3, groups, "patients")
    assert [s.tolist() for s in units.strata] == [[0, 1, 3, 7], [2, 4], [5, 6]]  # {0}, {1}, {1, 2}
    (drawn,) = list(_resample_units(units.strata, units.n_units, 300, np.random.default_rng(0)))
    assert drawn.shape == (300, 8)
    for row in drawn:
        assert set(y[units.images(row)]) == {0, 1, 2}
        assert (np.isin(row[:4], units.strata[0]).all() and np.isin(row[4:6], units.strata[1]).all()
                and np.isin(row[6:], units.strata[2]).all())
    assert len({tuple(sorted(r)) for r in drawn}) > 1  # resamples actually differ
    ci = bootstrap_ci(y, p, "auc", n_boot=200, groups=groups)
    assert ci.n_boot == 200 and ci.unit == "groups"  # no resample lost a class, so none was NaN


def test_cluster_confusion_counts_every_image_of_every_drawn_group():
    y, p, groups = patients(30, 3, seed=5, mixed=2)
    pred = p.argmax(axis=1)
    units = _Clusters(y, pred, 3, groups, "patients")
    (drawn,) = list(_resample_units(units.strata, units.n_units, 40, np.random.default_rng(1)))
    cm = units.confusion(drawn)
    for row, counts in zip(drawn, cm):
        images = units.images(row)
        assert images.size == sum((groups == groups[units.members[units.starts[g]]]).sum() for g in row)
        np.testing.assert_array_equal(counts, confusion(y[images], pred[images], 3))


def test_cluster_resampling_in_chunks_covers_n_boot(monkeypatch):
    monkeypatch.setattr("bench.metrics.bootstrap._CHUNK_ELEMENTS", 100)
    y, p, groups = patients(30, 2, seed=1)
    blocks = list(_resample_units(_Clusters(y, p.argmax(1), 2, groups, "p").strata, 30, 10, np.random.default_rng(0)))
    assert [b.shape for b in blocks] == [(3, 30)] * 3 + [(1, 30)]
    assert bootstrap_ci(y, p, "auc", n_boot=10, groups=groups).n_boot == 10


def test_groups_must_match_the_images():
    y, p = make_data(50, 2, 0)
    with pytest.raises(ValueError, match="one group id per image"):
        bootstrap_ci(y, p, "accuracy", groups=np.arange(49))


def test_cluster_bootstrap_is_fast():
    y, p = make_data(1000, 8, 0)
    groups = np.random.default_rng(0).integers(0, 300, 1000)
    bootstrap_all(y, p, ["accuracy"], n_boot=10, groups=groups)  # warm-up
    t0 = time.perf_counter()
    bootstrap_all(y, p, ["accuracy", "balanced_accuracy", "mcc", "macro_f1"], n_boot=1000, groups=groups)
    assert time.perf_counter() - t0 < 0.5


def test_bootstrap_phrase_names_the_unit():
    assert bootstrap_phrase(40, "patients", 60) == "bootstrap over 40 patients"
    assert bootstrap_phrase(1200, "images", 1200) == "bootstrap over 1,200 images"
    assert bootstrap_phrase(58, "images", 60) == "bootstrap over 58 images (exact duplicates resampled together)"
