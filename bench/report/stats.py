"""Significance tests for comparing models: on the folds of one dataset, and across datasets.

Two questions, two tools:

* **Is model A better than model B on this dataset?** The k folds of one cross-validation
  share most of their training images, so the per-fold scores are correlated and the plain
  paired t-test (``scipy.stats.ttest_rel``) underestimates the variance of the mean and
  rejects far too often. ``paired_corrected_ttest`` is the corrected resampled t-test of
  Nadeau & Bengio, "Inference for the Generalization Error", Machine Learning 52:239-281
  (2003), which inflates the variance by ``1/k + n_test/n_train``; Bouckaert & Frank,
  "Evaluating the Replicability of Significance Tests for Comparing Learning Algorithms",
  PAKDD 2004, LNCS 3056:3-12, recommend it for (repeated) k-fold cross-validation.
  ``nadeau_bengio_table`` runs it for every pair of the best few models, with Holm's
  step-down correction (Holm, Scand. J. Statist. 6:65-70, 1979) for the multiple pairs.

* **Which models are better across datasets?** Scores of different datasets are not
  commensurable, so we compare ranks: ``friedman`` computes the average ranks, the Friedman
  test, its Iman-Davenport F version and the Nemenyi critical difference, and
  ``critical_difference_figure`` draws the diagram, all as in Demšar, "Statistical
  Comparisons of Classifiers over Multiple Data Sets", JMLR 7:1-30 (2006).

Results are plain dicts (typed with ``TypedDict``) so they go straight into JSON and
``pandas.DataFrame``; ``ValueError`` is raised for inputs a test cannot be computed on.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "MIN_DATASETS",
    "MIN_MODELS",
    "CorrectedTTest",
    "FriedmanResult",
    "critical_difference_figure",
    "friedman",
    "holm",
    "nadeau_bengio_table",
    "nemenyi_cd",
    "nemenyi_cliques",
    "nemenyi_q",
    "paired_corrected_ttest",
]

Alternative = Literal["two-sided", "greater", "less"]
_ALTERNATIVES = ("two-sided", "greater", "less")

# Friedman needs >= 3 datasets for its chi-square approximation to be more than a formality
# (and Iman-Davenport's denominator degrees of freedom (k-1)(N-1) to be > k-1); a ranking
# needs >= 2 models.
MIN_DATASETS = 3
MIN_MODELS = 2

# Nemenyi q_alpha = studentized range quantile (k groups, infinite df) / sqrt(2), indexed
# by k - 2. k = 2..10 are Demšar (2006), Table 5(a), as printed, so our CDs reproduce the
# published ones; two of them are off by one in the last digit (k=3: 2.3437 -> 2.343,
# k=7: 2.9483 -> 2.949). k = 11..20 are scipy.stats.studentized_range.ppf(1 - alpha, k,
# inf) / sqrt(2) rounded to 3 decimals (they agree with the extended tables of Orange and
# autorank). Other alphas and k > 20 are computed the same way on demand.
_Q_ALPHA: dict[float, tuple[float, ...]] = {
    0.05: (1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164,
           3.219, 3.268, 3.313, 3.354, 3.391, 3.426, 3.458, 3.489, 3.517, 3.544),
    0.10: (1.645, 2.052, 2.291, 2.459, 2.589, 2.693, 2.780, 2.855, 2.920,
           2.978, 3.030, 3.077, 3.120, 3.159, 3.196, 3.230, 3.261, 3.291, 3.319),
}  # fmt: skip

# A difference whose spread is within this many ulps of the scores is rounding, not signal:
# 0.9 - 0.8 and 0.8 - 0.7 differ in the last bit, and treating that as a real (tiny)
# variance would turn a constant difference into t = 1e15 instead of the zero-variance case.
_ZERO_SPREAD_ULPS = 64


class CorrectedTTest(TypedDict):
    """Result of ``paired_corrected_ttest``; differences are ``a - b``."""

    mean_diff: float
    t: float
    df: int
    p_value: float
    ci_low: float
    ci_high: float
    k: int  # folds used (after dropping NaN pairs)
    n_train: int
    n_test: int
    n_dropped: int  # folds dropped because a or b was NaN
    note: str | None  # why a result is degenerate, or which folds were dropped


class FriedmanResult(TypedDict):
    """Result of ``friedman``. Ranks: 1 = best; ties get the average rank."""

    avg_ranks: pd.Series  # per model, best first
    ranks: pd.DataFrame  # datasets x models
    n_datasets: int
    n_models: int
    chi2: float  # Friedman chi-square, tie-corrected as in scipy
    chi2_df: int
    chi2_p_value: float
    iman_davenport_f: float
    iman_davenport_df: tuple[int, int]
    iman_davenport_p_value: float
    alpha: float
    q_alpha: float
    cd: float  # Nemenyi critical difference of average ranks
    dropped_datasets: list  # rows dropped because some model had no score
    higher_is_better: bool | Mapping[Any, bool]


# --------------------------------------------------------------------------------------------
# One dataset, k folds: the corrected resampled t-test


def paired_corrected_ttest(
    scores_a: Sequence[float] | np.ndarray,
    scores_b: Sequence[float] | np.ndarray,
    n_train: int,
    n_test: int,
    *,
    alternative: Alternative = "two-sided",
    confidence: float = 0.95,
) -> CorrectedTTest:
    """Corrected resampled t-test of two models scored on the same k folds.

    Nadeau & Bengio (2003), Machine Learning 52:239-281, eq. (corrected resampled t):
    with ``d_j = a_j - b_j`` over ``k`` folds,

        t = mean(d) / sqrt((1/k + n_test/n_train) * var(d)),   df = k - 1

    where ``var`` is the sample variance (ddof 1). The plain paired t-test uses ``1/k``
    alone, which assumes independent folds; overlapping training sets make them positively
    correlated, and ``n_test/n_train`` is Nadeau & Bengio's heuristic for that correlation.
    Bouckaert & Frank (PAKDD 2004) found it has the right size and good replicability for
    k-fold CV, best with repeated CV (e.g. 10 x 10): pass all r*k fold scores, with
    ``n_train`` / ``n_test`` the sizes of one fold's training and validation sets.

    ``alternative`` is about ``mean(a - b)``: ``"greater"`` tests whether A scores higher.
    The confidence interval is the one that inverts the test under the same correction, so
    it is one-sided (an infinite end) for a one-sided alternative, as in ``scipy``.

    Folds where either score is NaN are dropped pairwise. With zero spread of the
    differences the t statistic is 0/0 or x/0: identical scores give t = 0, p = 1;
    a constant nonzero difference gives t = +-inf, p = 0 (in the direction of the
    alternative), and ``note`` says so. Raises ``ValueError`` for mismatched lengths,
    infinite scores, fewer than 2 usable folds, or non-positive set sizes.
    """
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n_train, n_test = _positive_int(n_train, "n_train"), _positive_int(n_test, "n_test")
    a = np.asarray(scores_a, dtype=float)
    b = np.asarray(scores_b, dtype=float)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(
            f"scores_a and scores_b must be 1-D per-fold scores on the same folds; got shapes {a.shape} and {b.shape}"
        )
    if np.isinf(a).any() or np.isinf(b).any():
        raise ValueError("scores must be finite or NaN (a failed fold); got an infinite score")

    keep = ~(np.isnan(a) | np.isnan(b))
    n_dropped = int((~keep).sum())
    a, b = a[keep], b[keep]
    k = int(a.size)
    if k < 2:
        raise ValueError(f"need at least 2 folds scored by both models, got {k} ({n_dropped} dropped for NaN)")

    d = a - b
    mean = float(d.mean())
    df = k - 1
    notes = [f"{n_dropped} fold(s) dropped because a score was NaN"] if n_dropped else []

    spread = float(d.std(ddof=1))
    scale = float(max(np.abs(a).max(), np.abs(b).max(), np.finfo(float).tiny))
    if spread <= _ZERO_SPREAD_ULPS * np.finfo(float).eps * scale:
        if abs(mean) <= _ZERO_SPREAD_ULPS * np.finfo(float).eps * scale:
            # Nothing to test: the models agree on every fold.
            notes.append("identical scores on every fold: no difference to test")
            t, p = 0.0, 1.0
        else:
            # The variance estimate is 0, so any nonzero mean is "infinitely" significant.
            # That is a property of too few or too coarse scores, not certainty; say so.
            notes.append(
                "the difference is the same on every fold, so its variance estimate is 0 and "
                "t is infinite; p = 0 reflects too few or too coarse scores, not certainty"
            )
            t = math.copysign(math.inf, mean)
            p = 1.0 if (alternative == "greater" and mean < 0) or (alternative == "less" and mean > 0) else 0.0
        low, high = _ci(mean, 0.0, df, alternative, confidence)
    else:
        se = math.sqrt((1.0 / k + n_test / n_train) * spread**2)
        t = mean / se
        if alternative == "two-sided":
            p = float(2 * stats.t.sf(abs(t), df))
        elif alternative == "greater":
            p = float(stats.t.sf(t, df))
        else:
            p = float(stats.t.cdf(t, df))
        low, high = _ci(mean, se, df, alternative, confidence)

    return CorrectedTTest(
        mean_diff=mean,
        t=float(t),
        df=df,
        p_value=min(p, 1.0),
        ci_low=low,
        ci_high=high,
        k=k,
        n_train=n_train,
        n_test=n_test,
        n_dropped=n_dropped,
        note="; ".join(notes) or None,
    )


def _ci(mean: float, se: float, df: int, alternative: str, confidence: float) -> tuple[float, float]:
    if alternative == "two-sided":
        h = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
        return mean - h, mean + h
    h = float(stats.t.ppf(confidence, df)) * se
    return (mean - h, math.inf) if alternative == "greater" else (-math.inf, mean + h)


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not float(value).is_integer() or value <= 0:
        raise ValueError(f"{name} must be a positive number of images, got {value!r}")
    return int(value)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, in the input order.

    ``p_(i)`` (sorted ascending, i = 1..m) becomes ``max_{j<=i} min(1, (m - j + 1) p_(j))``;
    reject where the adjusted value is below alpha. Controls the family-wise error rate
    under any dependence, which we need: pairs sharing a model are correlated.
    """
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adjusted
    return out


def nadeau_bengio_table(
    fold_scores: Mapping[str, Sequence[float]],
    n_train: int,
    n_test: int,
    top: int = 3,
    *,
    higher_is_better: bool = True,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Corrected t-tests for every pair among the ``top`` models by mean fold score.

    ``fold_scores`` maps model -> per-fold scores on the same folds (NaN = failed fold).
    One row per pair, ``model_a`` the better-ranked of the two, so ``mean_diff`` (a - b, over
    the folds both scored) is normally positive when higher is better. ``p_holm`` is Holm-
    adjusted over the rows of this table and ``reject`` is ``p_holm < alpha``.

    The models were chosen as the best on these same folds, so even the adjusted p-values
    are optimistic (selection is not accounted for); read them as a screen, not a proof.
    Raises ``ValueError`` if the fold counts differ or a pair shares fewer than 2 scored folds.
    """
    if top < 2:
        raise ValueError(f"top must be at least 2 to form a pair, got {top}")
    if len(fold_scores) < 2:
        raise ValueError(f"need at least 2 models to compare, got {len(fold_scores)}")
    arrays = {str(name): np.asarray(v, dtype=float) for name, v in fold_scores.items()}
    lengths = {name: a.size for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"every model must be scored on the same folds; fold counts differ: {lengths}")

    with np.errstate(invalid="ignore"):
        means = pd.Series({name: np.nanmean(a) if np.isfinite(a).any() else np.nan for name, a in arrays.items()})
    # Rank by mean (ties and models without any score: by name, NaN last) so the table is
    # the same whatever order the dict came in.
    ordered = sorted(
        means.index,
        key=lambda n: (np.isnan(means[n]), -means[n] if higher_is_better else means[n], n),
    )
    chosen = [n for n in ordered if not np.isnan(means[n])][:top]
    if len(chosen) < 2:
        raise ValueError("need at least 2 models with a score on some fold")

    rows = []
    for a, b in itertools.combinations(chosen, 2):
        res = paired_corrected_ttest(arrays[a], arrays[b], n_train, n_test)
        rows.append(
            {
                "model_a": a,
                "model_b": b,
                "mean_a": float(means[a]),
                "mean_b": float(means[b]),
                **{key: res[key] for key in ("mean_diff", "t", "df", "p_value")},
                "p_holm": np.nan,
                "reject": False,
                **{key: res[key] for key in ("ci_low", "ci_high", "k", "note")},
            }
        )
    table = pd.DataFrame(rows)
    table["p_holm"] = holm(table["p_value"].to_numpy())
    table["reject"] = table["p_holm"] < alpha
    return table


# --------------------------------------------------------------------------------------------
# Many datasets: Friedman, Iman-Davenport, Nemenyi


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Nemenyi ``q_alpha`` for ``k`` models: studentized range (k, inf df) / sqrt(2).

    Demšar (2006), Table 5(a), for alpha 0.05 and 0.10 and k <= 10; see ``_Q_ALPHA`` for
    k up to 20; computed from ``scipy.stats.studentized_range`` otherwise.
    """
    if k < 2:
        raise ValueError(f"Nemenyi needs at least 2 models, got {k}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    for a, table in _Q_ALPHA.items():
        if math.isclose(alpha, a) and k - 2 < len(table):
            return table[k - 2]
    return float(stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2))


def nemenyi_cd(k: int, n_datasets: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference ``q_alpha * sqrt(k (k + 1) / (6 N))`` (Demšar 2006, sec. 3.2.2).

    Two models whose average ranks over N datasets differ by at least this are significantly
    different at level alpha.
    """
    if n_datasets < 1:
        raise ValueError(f"n_datasets must be positive, got {n_datasets}")
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n_datasets))


def friedman(table: pd.DataFrame, *, higher_is_better: bool | Mapping[Any, bool] = True,
             alpha: float = 0.05) -> FriedmanResult:
    """Friedman test with Iman-Davenport correction and Nemenyi CD, after Demšar (2006).

    ``table``: rows = datasets, columns = models, values = one score per dataset and model.
    Each row is ranked (1 = best, ties averaged); a row with a missing score cannot be ranked
    fairly, so it is dropped and listed in ``dropped_datasets``. ``higher_is_better`` is one
    direction for every row, or one per row (dataset name -> bool): datasets whose objectives
    point opposite ways are each ranked their own way.

    * ``chi2`` is Friedman's statistic with scipy's correction for ties (it equals Demšar's
      eq. for chi2_F when no row has ties and is slightly larger otherwise), on ``k - 1`` df;
      from ``scipy.stats.friedmanchisquare`` for k >= 3, the same formula here for k = 2.
    * ``iman_davenport_f = (N-1) chi2 / (N(k-1) - chi2)`` on ``(k-1, (k-1)(N-1))`` df
      (Iman & Davenport 1980), which Demšar recommends over the conservative chi-square.
    * ``cd`` is the Nemenyi critical difference at ``alpha`` (see ``nemenyi_cd``).

    Needs at least ``MIN_DATASETS`` (3) datasets and ``MIN_MODELS`` (2) models after
    dropping incomplete rows; raises ``ValueError`` otherwise.
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(
            f"table must be a pandas DataFrame (rows = datasets, columns = models), not {type(table).__name__}"
        )
    if table.columns.has_duplicates:
        raise ValueError(f"model (column) names must be unique: {list(table.columns[table.columns.duplicated()])}")
    try:
        values = table.astype(float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"table must hold numeric scores: {err}") from None
    if np.isinf(values.to_numpy()).any():
        raise ValueError("table must hold finite scores (NaN marks a missing one)")

    complete = values.notna().all(axis=1)
    dropped = list(values.index[~complete])
    values = values[complete]
    n, k = values.shape
    if k < MIN_MODELS or n < MIN_DATASETS:
        extra = f" ({len(dropped)} dropped for a missing score: {dropped})" if dropped else ""
        raise ValueError(
            f"the Friedman test needs at least {MIN_DATASETS} datasets (rows) and {MIN_MODELS} "
            f"models (columns); got {n} complete datasets{extra} and {k} models"
        )

    # Negating a higher-is-better row makes "smaller is better" hold in every row (ties stay ties).
    better_high = _row_directions(higher_is_better, values.index)
    ranks = values.mul(np.where(better_high, -1.0, 1.0), axis=0).rank(axis=1, method="average")
    # Stable sort keeps column order among equal average ranks, so output is reproducible.
    avg_ranks = ranks.mean(axis=0).sort_values(kind="stable")
    avg_ranks.name = "avg_rank"

    chi2, chi2_p = _friedman_chi2(ranks.to_numpy())
    f, f_p = _iman_davenport(chi2, n, k)
    return FriedmanResult(
        avg_ranks=avg_ranks,
        ranks=ranks,
        n_datasets=n,
        n_models=k,
        chi2=chi2,
        chi2_df=k - 1,
        chi2_p_value=chi2_p,
        iman_davenport_f=f,
        iman_davenport_df=(k - 1, (k - 1) * (n - 1)),
        iman_davenport_p_value=f_p,
        alpha=alpha,
        q_alpha=nemenyi_q(k, alpha),
        cd=nemenyi_cd(k, n, alpha),
        dropped_datasets=dropped,
        higher_is_better=higher_is_better,
    )


def _row_directions(higher_is_better: bool | Mapping[Any, bool], rows: pd.Index) -> np.ndarray:
    if isinstance(higher_is_better, bool):
        return np.full(len(rows), higher_is_better)
    missing = [r for r in rows if r not in higher_is_better]
    if missing:
        raise ValueError(f"higher_is_better has no direction for dataset(s) {missing}")
    return np.array([bool(higher_is_better[r]) for r in rows])


def _friedman_chi2(ranks: np.ndarray) -> tuple[float, float]:
    n, k = ranks.shape
    # Tie correction 1 - sum(t^3 - t) / (N (k^3 - k)); 0 when every row is one big tie, and
    # then there is no ranking at all to test (scipy would return NaN with a warning).
    ties = sum(float(np.sum(c**3 - c)) for c in (np.unique(row, return_counts=True)[1] for row in ranks))
    correction = 1.0 - ties / (n * (k**3 - k))
    if correction <= 0:
        return 0.0, 1.0
    if k >= 3:
        res = stats.friedmanchisquare(*ranks.T)  # the ranks, not the scores: they carry each row's direction
        return float(res.statistic), float(res.pvalue)
    # scipy insists on >= 3 samples; for k = 2 use its formula (it reduces to a sign test).
    sums = ranks.sum(axis=0)
    chi2 = (12.0 / (n * k * (k + 1)) * float(np.sum(sums**2)) - 3.0 * n * (k + 1)) / correction
    chi2 = max(chi2, 0.0)
    return chi2, float(stats.chi2.sf(chi2, k - 1))


def _iman_davenport(chi2: float, n: int, k: int) -> tuple[float, float]:
    denom = n * (k - 1) - chi2
    # chi2 reaches N(k-1) when every dataset ranks the models identically: F is infinite.
    if denom <= 1e-12 * n * k:
        return math.inf, 0.0
    f = (n - 1) * chi2 / denom
    return float(f), float(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))


def nemenyi_cliques(avg_ranks: pd.Series, cd: float) -> list[tuple[str, ...]]:
    """Maximal groups of models (best first) whose average ranks all differ by less than ``cd``.

    These are the thick bars of the CD diagram: no two models in a group are significantly
    different by the Nemenyi test. Groups of one are left out.
    """
    r = avg_ranks.sort_values(kind="stable")
    values, names = r.to_numpy(dtype=float), [str(x) for x in r.index]
    groups: list[tuple[str, ...]] = []
    last_end = -1
    for i in range(len(values)):
        # "significantly different if the ranks differ by at least the CD" (Demšar, sec. 3.2.2)
        j = int(np.searchsorted(values, values[i] + cd, side="left")) - 1
        if j > i and j > last_end:  # not contained in the previous, longer-reaching group
            groups.append(tuple(names[i : j + 1]))
            last_end = j
    return groups


# --------------------------------------------------------------------------------------------
# The critical difference diagram


def critical_difference_figure(
    avg_ranks: pd.Series,
    n_datasets: int,
    path: Path,
    *,
    alpha: float = 0.05,
    title: str | None = None,
) -> Path:
    """Draw Demšar's (2006, Fig. 1) critical difference diagram and save it.

    A rank axis (1 = best, on the left), each model hanging off its average rank, the better
    half labelled on the left and the rest on the right, the Nemenyi CD as a bar above the
    axis, and a thick line joining each maximal group of models not significantly different.

    ``path`` ending in ``.png`` writes a PNG; ending in ``.svg`` writes that SVG and a PNG
    next to it (same stem). Output is byte-for-byte reproducible for a given matplotlib:
    no timestamps, a fixed SVG id salt, and no global pyplot state (safe in threads).
    Returns ``path``.
    """
    # Import here so the tests and the CLI do not pay for matplotlib unless they draw.
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".png", ".svg"):
        raise ValueError(f"path must end in .png or .svg, got {path.name!r}")
    r = pd.Series(avg_ranks, dtype=float).sort_values(kind="stable")
    k = len(r)
    if k < 2:
        raise ValueError(f"a CD diagram needs at least 2 models, got {k}")
    if r.isna().any():
        raise ValueError(f"average ranks must not be NaN: {list(r.index[r.isna()])}")
    if r.iloc[0] < 1 - 1e-9 or r.iloc[-1] > k + 1e-9:
        raise ValueError(f"average ranks of {k} models must lie in [1, {k}], got {r.iloc[0]:g}..{r.iloc[-1]:g}")
    cd = nemenyi_cd(k, n_datasets, alpha)
    cliques = nemenyi_cliques(r, cd)
    names = [str(x) for x in r.index]
    ranks = r.to_numpy()

    # Layout in inches, y growing downwards; rank units are mapped onto the axis span.
    n_left = math.ceil(k / 2)
    row, fs = 0.22, 9
    label_w = 0.08 * max(len(f"{n} ({v:.2f})") for n, v in zip(names, ranks)) + 0.3
    axis_w = max(3.0, 0.45 * max(k, math.ceil(1 + cd)))

    def x_of(rank: float) -> float:
        return label_w + (rank - 1) / (k - 1) * axis_w

    y_axis = 0.75 if title is None else 1.05
    y_clique0, clique_gap = y_axis + 0.18, 0.1
    y_label0 = y_clique0 + clique_gap * len(cliques) + 0.15
    height = y_label0 + row * max(n_left, k - n_left) + 0.1
    # Room for the CD bar too, which overhangs the axis when CD > k - 1 (few datasets).
    width = max(2 * label_w + axis_w, x_of(1 + cd) + 0.2)

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    line: dict[str, Any] = {"color": "black", "linewidth": 0.9, "solid_capstyle": "butt"}

    if title:
        ax.text(width / 2, 0.25, title, ha="center", va="center", fontsize=fs + 2)

    # The rank axis with a tick and number at each integer rank, minor ticks at halves.
    ax.plot([x_of(1), x_of(k)], [y_axis, y_axis], **line)
    for v in np.arange(1, k + 0.01, 0.5):
        major = float(v).is_integer()
        ax.plot([x_of(v)] * 2, [y_axis, y_axis - (0.08 if major else 0.045)], **line)
        if major:
            ax.text(x_of(v), y_axis - 0.11, f"{int(v)}", ha="center", va="bottom", fontsize=fs)

    # The CD bar, starting at rank 1 (it may overhang the axis when CD > k - 1).
    y_cd = y_axis - 0.45
    x0, x1 = x_of(1), x_of(1 + cd)
    ax.plot([x0, x1], [y_cd, y_cd], **line)
    for x in (x0, x1):
        ax.plot([x, x], [y_cd - 0.04, y_cd + 0.04], **line)
    ax.text((x0 + x1) / 2, y_cd - 0.06, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=fs)

    # Models: a drop line from the axis, then across to the label. Better half on the left,
    # best highest; worse half on the right, worst highest; so no two lines cross.
    for i, (name, v) in enumerate(zip(names, ranks)):
        left = i < n_left
        y = y_label0 + row * (i if left else k - 1 - i)
        x_end = label_w - 0.1 if left else label_w + axis_w + 0.1
        ax.plot([x_of(v), x_of(v), x_end], [y_axis, y, y], **line)
        ax.text(
            x_end + (-0.05 if left else 0.05), y, f"{name} ({v:.2f})",
            ha="right" if left else "left", va="center", fontsize=fs,
        )  # fmt: skip

    # Groups not significantly different: thick bars just under the axis, slightly wider
    # than the span of their ranks so a bar is visible over its end drop lines.
    position = {n: v for n, v in zip(names, ranks)}
    for j, group in enumerate(cliques):
        y = y_clique0 + clique_gap * j
        lo, hi = x_of(position[group[0]]) - 0.05, x_of(position[group[-1]]) + 0.05
        ax.plot([lo, hi], [y, y], color="black", linewidth=3.0, solid_capstyle="butt")

    path.parent.mkdir(parents=True, exist_ok=True)
    png = path.with_suffix(".png")
    # Fixed metadata and SVG hash salt: the same ranks give the same bytes, run after run.
    with matplotlib.rc_context({"svg.hashsalt": "bench-cd-diagram", "svg.fonttype": "path"}):
        # The label widths above are estimates from character counts; "tight" trims the slack.
        tight: dict[str, Any] = {"bbox_inches": "tight", "pad_inches": 0.1}
        fig.savefig(png, dpi=150, metadata={"Software": None}, **tight)
        if suffix == ".svg":
            fig.savefig(path, metadata={"Date": None, "Creator": None}, **tight)
    return path
