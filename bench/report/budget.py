"""Trials per entry and the comparison at equal budget (Dodge et al. 2019).

An entry's best trial is a maximum over however many trials it got, so a leaderboard of bests
favours the entry the search spent most on. The leaderboard therefore also shows each entry's
expected best of m trials, m being the fewest completed trials of any entry shown, and the report
draws every entry's expected best against k = 1..n on one figure per dataset.

Pruned trials are left out of n and of the curves: their last reported value is a score on part
of a fold (or on fewer folds), not a CV mean like the others', so counting it would mix two kinds
of number. The table says so, with how many were left out.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.evaluation.grouping import Grouping
from bench.report import expected as E
from bench.report import facts as FA
from bench.report import figures as F
from bench.report.cells import LABELS, Table, slug
from bench.report.collect import Collection

COLUMNS = ("trials_complete", "trials_pruned", "expected_k", "expected_best")


def pruned_by_entry(coll: Collection, dataset: str, grouping: Grouping) -> dict[str, int]:
    """How many PRUNED trials each entry (by its label) had."""
    trials = FA.trials_of(coll, dataset)
    if trials.empty:
        return {}
    counts: dict[str, int] = {}
    for t in trials[trials.state == "PRUNED"].itertuples(index=False):
        key = grouping.label({**FA.params_of(t), "backbone": str(t.backbone)})
        counts[key] = counts.get(key, 0) + 1
    return counts


def equal_budget(scored: pd.DataFrame, pruned: dict[str, int], maximize: bool) -> pd.DataFrame:
    """Per entry of ``scored`` (``FA.entry_trials``): n completed trials, pruned trials, m and the
    expected best of m trials. m is the same for every row: the smallest n."""
    if scored.empty:
        return pd.DataFrame(columns=["key", *COLUMNS])
    values = {k: g.objective_value.to_numpy(dtype=float) for k, g in scored.groupby("key", sort=True)}
    m = min(v.size for v in values.values())
    return pd.DataFrame([{"key": k, "trials_complete": v.size, "trials_pruned": pruned.get(k, 0), "expected_k": m,
                          "expected_best": float(E.expected_best(v, [m], maximize)[0])} for k, v in values.items()])


def column_title(board: pd.DataFrame) -> str:
    return f"expected best at k = {int(board.expected_k.iloc[0])}"


def caption(board: pd.DataFrame, metric: str) -> str:
    """The sentence under the leaderboard: what m is and what n counts."""
    m, pruned = int(board.expected_k.iloc[0]), int(board.trials_pruned.sum())
    return (f"Expected best at k = {m}: the expected best CV {metric} of {m} trial{'' if m == 1 else 's'} drawn with "
            f"replacement from each entry's n completed trials (Dodge et al. 2019); m = {m} is the fewest completed "
            f"trials of any entry shown, so this column compares the entries at an equal budget. n counts completed "
            f"trials; pruned trials ({pruned} of them) are left out: their last value is a partial fold.")


def expected_section(builder: Any, dataset: str, board: pd.DataFrame) -> None:
    """The figure of expected best against trials (and its numbers in tables/expected_<dataset>.csv).
    Expected wherever the leaderboard has an entry: a figure that cannot be drawn is a problem."""
    coll, grouping = builder.coll, Grouping(builder.by)
    objective = coll.objective(dataset)
    metric, maximize = objective["metric"], objective.get("direction", "maximize") == "maximize"
    scored = FA.entry_trials(coll, dataset, grouping)
    values = {} if scored.empty else {k: g.objective_value.to_numpy(dtype=float) for k, g in scored.groupby("key")}
    curves = [(key, E.curve(values[key], maximize)) for key in board.key if key in values]  # leaderboard order
    if not curves:
        builder.problem(f"No expected-best figure for {dataset}: none of its leaderboard entries has a scored "
                        f"completed trial.")
        return
    m = min(c.k.size for _, c in curves)
    label = LABELS.get(metric, metric)
    builder.figure(F.expected_best_figure(
        curves, m, label, builder.figdir, slug("expected", dataset), f"{dataset}: expected best at equal budget",
        f"Expected best CV {label} of k trials drawn with replacement from each {grouping.noun}'s n completed "
        f"trials, k = 1..n (Dodge et al. 2019, exact order statistics); band: {E.LEVEL:.0%} percentile interval of "
        f"the curve over {E.BOOTSTRAPS} bootstrap resamples of those trials. The dotted line marks k = {m}, where "
        f"the leaderboard compares entries. Pruned trials are left out ({FA.cv_phrase(coll, dataset)})."))
    data = pd.DataFrame([{"dataset": dataset, "key": key, "n": c.k.size, "k": int(k), "expected": e, "low": lo,
                          "high": hi} for key, c in curves for k, e, lo, hi in zip(c.k, c.expected, c.low, c.high)])
    # Only the CSV: the curve's numbers are long, the figure shows them.
    builder.tables.append(Table(slug("expected", dataset), f"{dataset}: expected best by trials", "", data,
                                pd.DataFrame()))
