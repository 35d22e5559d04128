"""bench.report.stats: corrected t-test, Holm, Friedman / Iman-Davenport / Nemenyi, CD diagram."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench.report import stats

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------------------------------------
# Corrected resampled t-test (Nadeau & Bengio 2003)

# 5-fold CV on 500 images: n_train = 400, n_test = 100.
A = [0.80, 0.82, 0.78, 0.85, 0.81]
B = [0.78, 0.80, 0.79, 0.81, 0.78]


def test_corrected_ttest_matches_hand_calculation():
    # d = [0.02, 0.02, -0.01, 0.04, 0.03]; mean = 0.10 / 5 = 0.02
    # squared deviations 0, 0, 0.0009, 0.0004, 0.0001 -> var = 0.0014 / 4 = 0.00035
    # correction 1/5 + 100/400 = 0.45 -> se = sqrt(0.45 * 0.00035) = sqrt(0.0001575)
    se = math.sqrt(0.0001575)
    t = 0.02 / se  # 1.59364
    t975_4 = 2.7764451051977987  # t_{0.975, 4} from the table
    res = stats.paired_corrected_ttest(A, B, n_train=400, n_test=100)
    assert res["k"] == 5 and res["df"] == 4 and res["n_train"] == 400 and res["n_test"] == 100
    assert res["mean_diff"] == pytest.approx(0.02)
    assert res["t"] == pytest.approx(t, rel=1e-9) and res["t"] == pytest.approx(1.59364, abs=1e-5)
    assert res["p_value"] == pytest.approx(2 * sps.t.sf(t, 4), rel=1e-9)
    assert res["p_value"] == pytest.approx(0.18624, abs=1e-5)
    assert res["ci_low"] == pytest.approx(0.02 - t975_4 * se, rel=1e-9)
    assert res["ci_high"] == pytest.approx(0.02 + t975_4 * se, rel=1e-9)
    assert res["note"] is None and res["n_dropped"] == 0


def test_corrected_ttest_is_more_conservative_than_plain_paired_ttest():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = rng.normal(0.85, 0.02, 10)
        b = a - rng.normal(0.01, 0.01, 10)
        plain = sps.ttest_rel(a, b)
        corrected = stats.paired_corrected_ttest(a, b, n_train=900, n_test=100)
        assert abs(corrected["t"]) < abs(plain.statistic)
        assert corrected["p_value"] > plain.pvalue
        lo, hi = plain.confidence_interval()
        assert corrected["ci_low"] < lo and corrected["ci_high"] > hi
    # With the 1/k term alone (n_test/n_train -> 0) it is exactly the plain paired t-test.
    res = stats.paired_corrected_ttest(A, B, n_train=10**12, n_test=1)
    assert res["t"] == pytest.approx(sps.ttest_rel(A, B).statistic, rel=1e-6)


def test_corrected_ttest_is_symmetric_in_a_and_b():
    ab = stats.paired_corrected_ttest(A, B, 400, 100)
    ba = stats.paired_corrected_ttest(B, A, 400, 100)
    assert ba["mean_diff"] == pytest.approx(-ab["mean_diff"])
    assert ba["t"] == pytest.approx(-ab["t"])
    assert ba["p_value"] == pytest.approx(ab["p_value"])
    assert (ba["ci_low"], ba["ci_high"]) == pytest.approx((-ab["ci_high"], -ab["ci_low"]))
    greater = stats.paired_corrected_ttest(A, B, 400, 100, alternative="greater")
    less = stats.paired_corrected_ttest(B, A, 400, 100, alternative="less")
    assert greater["p_value"] == pytest.approx(less["p_value"]) == pytest.approx(ab["p_value"] / 2)
    assert greater["ci_high"] == math.inf and less["ci_low"] == -math.inf


def test_identical_scores_give_p_one():
    res = stats.paired_corrected_ttest(A, list(A), 400, 100)
    assert res["p_value"] == 1.0 and res["t"] == 0.0 and res["mean_diff"] == 0.0
    assert res["ci_low"] == res["ci_high"] == 0.0
    assert "identical" in res["note"]


def test_constant_nonzero_difference_gives_p_zero_with_a_note():
    # 0.9 - 0.8 and 0.8 - 0.7 differ in the last bit: still a constant difference.
    res = stats.paired_corrected_ttest([0.9, 0.8, 0.7, 0.6], [0.8, 0.7, 0.6, 0.5], 300, 100)
    assert res["t"] == math.inf and res["p_value"] == 0.0 and "variance" in res["note"]
    assert res["ci_low"] == pytest.approx(0.1) and res["ci_high"] == pytest.approx(0.1)
    wrong_way = stats.paired_corrected_ttest([0.9, 0.8, 0.7], [0.8, 0.7, 0.6], 300, 100, alternative="less")
    assert wrong_way["p_value"] == 1.0


def test_nan_folds_are_dropped_pairwise():
    a = [0.80, np.nan, 0.82, 0.78, 0.85, 0.81]
    b = [0.78, 0.70, 0.80, 0.79, 0.81, np.nan]
    res = stats.paired_corrected_ttest(a, b, 400, 100)
    ref = stats.paired_corrected_ttest([0.80, 0.82, 0.78, 0.85], [0.78, 0.80, 0.79, 0.81], 400, 100)
    assert res["k"] == 4 and res["n_dropped"] == 2 and "dropped" in res["note"]
    assert res["t"] == pytest.approx(ref["t"]) and res["p_value"] == pytest.approx(ref["p_value"])


@pytest.mark.parametrize(
    "a, b, kwargs",
    [
        ([0.8, 0.9], [0.8], {}),  # different fold counts
        ([0.8, np.nan], [0.7, 0.6], {}),  # one usable fold
        ([0.8, 0.9], [0.7, 0.6], {"n_train": 0}),
        ([0.8, 0.9], [0.7, 0.6], {"alternative": "bigger"}),
        ([0.8, np.inf], [0.7, 0.6], {}),
    ],
)
def test_corrected_ttest_rejects_bad_input(a, b, kwargs):
    args = {"n_train": 90, "n_test": 10, **kwargs}
    with pytest.raises(ValueError):
        stats.paired_corrected_ttest(a, b, **args)


def test_holm_step_down():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_nadeau_bengio_table_tests_pairs_among_the_top_models():
    rng = np.random.default_rng(1)
    scores = {m: list(rng.normal(0.80 + 0.01 * i, 0.01, 10)) for i, m in enumerate(["a", "b", "c", "d", "e"])}
    table = stats.nadeau_bengio_table(scores, n_train=900, n_test=100, top=3)
    top3 = sorted(scores, key=lambda m: -np.mean(scores[m]))[:3]
    assert len(table) == 3
    assert set(table["model_a"]) | set(table["model_b"]) == set(top3)
    assert (table["mean_a"] >= table["mean_b"]).all()
    assert (table["p_holm"] >= table["p_value"] - 1e-15).all()
    assert (table["reject"] == (table["p_holm"] < 0.05)).all()
    first = table.iloc[0]
    ref = stats.paired_corrected_ttest(scores[first.model_a], scores[first.model_b], 900, 100)
    assert first.p_value == pytest.approx(ref["p_value"])
    # The order of the dict does not matter.
    shuffled = dict(reversed(list(scores.items())))
    pd.testing.assert_frame_equal(stats.nadeau_bengio_table(shuffled, 900, 100, top=3), table)
    lower = stats.nadeau_bengio_table(scores, 900, 100, top=2, higher_is_better=False)
    lowest2 = sorted(scores, key=lambda m: np.mean(scores[m]))[:2]
    assert len(lower) == 1 and [lower.loc[0, "model_a"], lower.loc[0, "model_b"]] == lowest2
    with pytest.raises(ValueError, match="same folds"):
        stats.nadeau_bengio_table({"a": [0.1, 0.2, 0.3], "b": [0.1, 0.2]}, 90, 10)


# ---------------------------------------------------------------------------------------------
# Friedman, Iman-Davenport, Nemenyi (Demšar 2006)


def random_table(n: int = 12, k: int = 5, seed: int = 0, decimals: int | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(n, k)) + np.linspace(0, 1, k)
    if decimals is not None:
        values = values.round(decimals)  # forces ties
    return pd.DataFrame(values, index=[f"ds{i}" for i in range(n)], columns=[f"m{j}" for j in range(k)])


@pytest.mark.parametrize("decimals", [None, 0])
def test_friedman_ranks_and_chi_square_agree_with_scipy(decimals):
    table = random_table(decimals=decimals)
    res = stats.friedman(table)
    values = table.to_numpy()
    ranks = np.vstack([sps.rankdata(-row) for row in values])  # 1 = highest score
    assert res["ranks"].to_numpy() == pytest.approx(ranks)
    assert res["avg_ranks"].reindex(table.columns).to_numpy() == pytest.approx(ranks.mean(axis=0))
    assert list(res["avg_ranks"]) == sorted(res["avg_ranks"])  # best first
    ref = sps.friedmanchisquare(*values.T)
    assert res["chi2"] == pytest.approx(ref.statistic) and res["chi2_p_value"] == pytest.approx(ref.pvalue)
    n, k = values.shape
    assert (res["n_datasets"], res["n_models"], res["chi2_df"]) == (n, k, k - 1)
    # Iman & Davenport (1980), Demšar eq. for F_F.
    f = (n - 1) * ref.statistic / (n * (k - 1) - ref.statistic)
    assert res["iman_davenport_f"] == pytest.approx(f)
    assert res["iman_davenport_df"] == (k - 1, (k - 1) * (n - 1))
    assert res["iman_davenport_p_value"] == pytest.approx(sps.f.sf(f, k - 1, (k - 1) * (n - 1)))
    if decimals is None:  # no ties: Demšar's chi2_F from the average ranks, exactly
        r = res["avg_ranks"].to_numpy()
        assert res["chi2"] == pytest.approx(12 * n / (k * (k + 1)) * (np.sum(r**2) - k * (k + 1) ** 2 / 4))


def test_lower_is_better_reverses_the_ranks():
    table = random_table()
    high, low = stats.friedman(table), stats.friedman(table, higher_is_better=False)
    k = table.shape[1]
    assert low["ranks"].to_numpy() == pytest.approx(k + 1 - high["ranks"].to_numpy())
    assert low["chi2"] == pytest.approx(high["chi2"])


def test_each_dataset_is_ranked_in_its_own_direction():
    # ds0 scores a loss: its row ranked low-is-best equals the same row negated and ranked high-is-best.
    table = random_table(n=6, k=4)
    directions = {d: d != "ds0" for d in table.index}
    mixed = stats.friedman(table, higher_is_better=directions)
    flipped = table.copy()
    flipped.loc["ds0"] = -flipped.loc["ds0"]
    same = stats.friedman(flipped)
    assert mixed["ranks"].to_numpy() == pytest.approx(same["ranks"].to_numpy())
    assert mixed["chi2"] == pytest.approx(same["chi2"]) and mixed["avg_ranks"].equals(same["avg_ranks"])
    k = table.shape[1]
    assert mixed["ranks"].loc["ds0"].to_numpy() == pytest.approx(k + 1 - stats.friedman(table)["ranks"].loc["ds0"])
    assert mixed["chi2"] != pytest.approx(stats.friedman(table)["chi2"])  # one direction for all is another test
    with pytest.raises(ValueError, match="no direction for dataset"):
        stats.friedman(table, higher_is_better={"ds0": False})


def test_nemenyi_cd_for_four_models_on_ten_datasets():
    expected = 2.569 * math.sqrt(4 * 5 / (6 * 10))
    assert stats.nemenyi_cd(4, 10) == pytest.approx(expected, rel=1e-12)
    res = stats.friedman(random_table(n=10, k=4))
    assert res["q_alpha"] == 2.569 and res["cd"] == pytest.approx(expected, rel=1e-12)
    # Demšar's worked example (sec. 3.2.4): 4 classifiers, 14 data sets, CD = 1.25.
    assert round(stats.nemenyi_cd(4, 14), 2) == 1.25


def test_q_alpha_table_is_the_studentized_range_over_sqrt2():
    for alpha in (0.05, 0.10):
        for k in range(2, 21):
            exact = sps.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
            # Demšar's Table 5 is printed to 3 decimals (and twice off by one in the last).
            assert stats.nemenyi_q(k, alpha) == pytest.approx(exact, abs=1.5e-3)
    assert stats.nemenyi_q(2) == 1.960 and stats.nemenyi_q(10, 0.10) == 2.920
    # Outside the table: computed.
    assert stats.nemenyi_q(4, 0.01) == pytest.approx(sps.studentized_range.ppf(0.99, 4, np.inf) / math.sqrt(2))


def test_friedman_needs_three_datasets_and_two_models():
    with pytest.raises(ValueError, match="at least 3 datasets"):
        stats.friedman(random_table(n=2))
    with pytest.raises(ValueError, match="2 models"):
        stats.friedman(random_table(k=1))
    # A dataset with a missing score is dropped, and that can leave too few.
    table = random_table(n=3)
    table.iloc[1, 2] = np.nan
    with pytest.raises(ValueError, match="dropped"):
        stats.friedman(table)
    table = random_table(n=4)
    table.iloc[1, 2] = np.nan
    assert stats.friedman(table)["dropped_datasets"] == ["ds1"]


def test_friedman_with_two_models_is_a_sign_test_statistic():
    table = random_table(n=9, k=2, seed=3)
    wins = int((table["m0"] > table["m1"]).sum())
    res = stats.friedman(table)
    assert res["chi2"] == pytest.approx((wins - (9 - wins)) ** 2 / 9)


def test_friedman_degenerate_tables():
    tied = pd.DataFrame(np.ones((4, 3)), columns=list("abc"))
    res = stats.friedman(tied)
    assert res["chi2"] == 0.0 and res["chi2_p_value"] == 1.0 and res["iman_davenport_p_value"] == 1.0
    same_order = pd.DataFrame(np.tile([0.9, 0.8, 0.7], (5, 1)) + np.arange(5)[:, None] / 100, columns=list("abc"))
    res = stats.friedman(same_order)
    assert res["iman_davenport_f"] == math.inf and res["iman_davenport_p_value"] == 0.0
    assert list(res["avg_ranks"].index) == ["a", "b", "c"]


def test_nemenyi_cliques():
    ranks = pd.Series({"a": 1.0, "b": 1.5, "c": 2.9, "d": 3.6})
    assert stats.nemenyi_cliques(ranks, cd=1.5) == [("a", "b"), ("b", "c"), ("c", "d")]
    assert stats.nemenyi_cliques(ranks, cd=0.4) == []
    assert stats.nemenyi_cliques(ranks, cd=3.0) == [("a", "b", "c", "d")]


# ---------------------------------------------------------------------------------------------
# Critical difference diagram


def test_cd_figure_writes_a_deterministic_png(tmp_path):
    res = stats.friedman(random_table(n=10, k=6))
    out = stats.critical_difference_figure(res["avg_ranks"], res["n_datasets"], tmp_path / "cd.png", title="AUC")
    assert out == tmp_path / "cd.png"
    data = out.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_SIGNATURE)
    again = stats.critical_difference_figure(res["avg_ranks"], res["n_datasets"], tmp_path / "again.png", title="AUC")
    assert again.read_bytes() == data


def test_cd_figure_svg_also_writes_png(tmp_path):
    ranks = pd.Series({"resnet50": 1.4, "densenet121": 2.1, "vgg16": 2.5})
    out = stats.critical_difference_figure(ranks, 3, tmp_path / "sub" / "cd.svg")
    assert out.read_text().lstrip().startswith("<?xml") and "<svg" in out.read_text()
    assert (tmp_path / "sub" / "cd.png").read_bytes().startswith(PNG_SIGNATURE)
    first = out.read_bytes()
    stats.critical_difference_figure(ranks, 3, out)
    assert out.read_bytes() == first
    with pytest.raises(ValueError, match=".png or .svg"):
        stats.critical_difference_figure(ranks, 3, tmp_path / "cd.pdf")
    with pytest.raises(ValueError, match="lie in"):
        stats.critical_difference_figure(pd.Series({"a": 0.5, "b": 2.5}), 3, tmp_path / "bad.png")
