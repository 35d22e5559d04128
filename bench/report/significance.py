"""Significance tests between leaderboard entries: paired t-tests over folds (corrected for their overlap) and the Friedman test across datasets."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from bench.evaluation.grouping import DEFAULT_BY, Grouping
from bench.report.cells import (
    Table,
    slug,
)
from bench.report.collect import (
    Collection,
)
from bench.report.facts import (
    cv_phrase,
    factors_by_key,
    split_facts,
    trial_rows,
)


def plural(by: tuple[str, ...]) -> str:
    """What the rows compared are: "backbones", or "backbone · weights combinations" under --by."""
    return f"{Grouping(by).noun}s"


def cd_caption(by: tuple[str, ...] = DEFAULT_BY) -> str:
    return (f"Average rank of each {Grouping(by).noun} over the datasets (1 = best; Demšar 2006); {plural(by)} "
            f"joined by a thick bar are not significantly different (Nemenyi).")

# ---- 4. significance ---------------------------------------------------------------------------------------


def fold_scores(coll: Collection, dataset: str, board: pd.DataFrame, metric: str) -> dict[str, np.ndarray]:
    m = coll.metrics
    folds = int(split_facts(coll, dataset)["folds"] or 0)
    out = {}
    for r in board.itertuples(index=False):
        rows = trial_rows(m, dataset, r.study, r.trial) if not m.empty else m
        rows = rows[rows.metric == metric] if not rows.empty else rows
        a = np.full(folds, np.nan)
        for f in rows.itertuples(index=False):
            if 0 <= int(f.fold) < folds:
                a[int(f.fold)] = float(f.value)
        out[r.key] = a
    return out


def fold_sizes(coll: Collection, dataset: str, board: pd.DataFrame) -> tuple[int, int]:
    folds = coll.folds
    sizes = []
    for r in board.itertuples(index=False):
        rows = trial_rows(folds, dataset, r.study, r.trial)
        if {"n_train", "n_val"} <= set(rows.columns) and len(rows):
            sizes.append((rows.n_train.astype(float).mean(), rows.n_val.astype(float).mean()))
    if sizes:
        return int(round(np.mean([s[0] for s in sizes]))), int(round(np.mean([s[1] for s in sizes])))
    sp = split_facts(coll, dataset)
    k, n = int(sp["folds"] or 2), int(sp["cv_images"] or 2)
    return n - n // k, n // k


def ttest_table(coll: Collection, dataset: str, board: pd.DataFrame, stats: Any, top: int = 3,
                by: tuple[str, ...] = DEFAULT_BY) -> Table | str:
    """Corrected resampled t-tests between the top entries (backbones, or ``--by`` combinations); a
    string says why not."""
    metric = coll.objective(dataset)["metric"]
    rows_are = plural(by)
    if len(board) < 2:
        return f"Fewer than two {rows_are} completed: nothing to compare."
    digests = {(r.manifest.get("split") or {}).get("digest") for r in coll.runs_of(dataset)
               if r.study in set(board.study)}
    if len(digests) > 1:
        return ("The leaderboard's trials come from runs with different folds (split digests differ): "
                "fold scores are not paired, so no t-test.")
    scores = fold_scores(coll, dataset, board.head(top), metric)
    n_train, n_test = fold_sizes(coll, dataset, board.head(top))
    maximize = coll.objective(dataset).get("direction", "maximize") == "maximize"
    try:
        if hasattr(stats, "nadeau_bengio_table"):
            data = stats.nadeau_bengio_table(scores, n_train, n_test, top=top, higher_is_better=maximize)
        else:
            rows = []
            names = list(scores)
            for i in range(len(names)):
                for j in range(i + 1, len(names)):
                    res = stats.paired_corrected_ttest(scores[names[i]], scores[names[j]], n_train, n_test)
                    rows.append({"model_a": names[i], "model_b": names[j], **res})
            data = pd.DataFrame(rows)
    except ValueError as err:
        return f"No t-test: {err}."
    data = data.reset_index(drop=True)
    data.insert(0, "dataset", dataset)
    data.insert(1, "metric", metric)
    if not Grouping(by).is_default:  # each side's factors in columns of their own (weights_a, weights_b, ...)
        factors = factors_by_key(board)
        for side in ("a", "b"):
            for name in dict.fromkeys(n for f in factors.values() for n in f):
                data[f"{name}_{side}"] = [factors.get(k, {}).get(name) for k in data[f"model_{side}"]]
    display = pd.DataFrame({
        "A vs B": data.model_a + " vs " + data.model_b,
        "mean diff (A-B)": [f"{x:+.3f}" for x in data.mean_diff],
        "95% CI": [f"[{a:+.3f}, {b:+.3f}]" for a, b in zip(data.ci_low, data.ci_high)],
        "t": [f"{x:.2f}" for x in data.t], "df": data.df.astype(str),
        "p": [f"{x:.3g}" for x in data.p_value],
        **({"p (Holm)": [f"{x:.3g}" for x in data.p_holm]} if "p_holm" in data else {}),
        "note": [str(x) if isinstance(x, str) else "" for x in data.get("note", [""] * len(data))],
    })
    caption = (f"Corrected resampled t-test (Nadeau & Bengio 2003) on the {metric} of each fold "
               f"({cv_phrase(coll, dataset)}; n_train ≈ {n_train}, n_test ≈ {n_test} per fold), "
               f"top {min(top, len(board))} {rows_are}; p (Holm) adjusts for the pairs. The models were picked on "
               f"these folds, so read the p-values as a screen, not a proof.")
    return Table(slug("ttest", dataset), f"{dataset}: are the top {rows_are} different?", caption, data, display)


def friedman_table(coll: Collection, cross: Table, stats: Any,
                   by: tuple[str, ...] = DEFAULT_BY) -> tuple[Table | None, Any, str]:
    """Friedman / Iman-Davenport / Nemenyi over the datasets; (table, result, message)."""
    data = cross.data.set_index(cross.data.columns[0])  # the rows' names: backbone, or "backbone · weights"
    datasets = [c for c in data.columns if f"{c}_source" in data.columns]
    scores = data[datasets].T.astype(float)  # datasets x backbones
    complete = [b for b in scores.columns if scores[b].notna().all()]
    dropped = sorted(set(scores.columns) - set(complete))
    if len(datasets) < 3:
        return None, None, f"The Friedman test needs at least 3 datasets; the report has {len(datasets)}."
    if len(complete) < 2:
        return None, None, f"Fewer than two {plural(by)} were run on every dataset: no Friedman test."
    # Each dataset's own objective direction (its manifest's): a loss is ranked low-is-best there only.
    maximize = {d: coll.objective(d).get("direction", "maximize") == "maximize" for d in datasets}
    try:
        res = stats.friedman(scores[complete], higher_is_better=maximize)
    except ValueError as err:
        return None, None, f"No Friedman test: {err}."
    avg = res["avg_ranks"]
    table = pd.DataFrame({"backbone": [str(b) for b in avg.index], "mean_rank": avg.to_numpy(dtype=float)})
    summary = (f"Friedman chi² = {res['chi2']:.3f} (df {res['chi2_df']}, p = {res['chi2_p_value']:.3g}); "
               f"Iman-Davenport F = {res['iman_davenport_f']:.3f} (df {res['iman_davenport_df'][0]}, "
               f"{res['iman_davenport_df'][1]}; p = {res['iman_davenport_p_value']:.3g}); Nemenyi critical "
               f"difference {res['cd']:.3f} at alpha {res['alpha']} over {res['n_datasets']} datasets and "
               f"{res['n_models']} {plural(by)}.")
    if dropped:
        summary += f" Left out (not run on every dataset): {', '.join(dropped)}."
    for key in ("chi2", "chi2_p_value", "iman_davenport_f", "iman_davenport_p_value", "cd"):
        table[key] = float(res[key])
    grouping = Grouping(by)
    display = pd.DataFrame({grouping.title: table.backbone, "mean rank": [f"{x:.2f}" for x in table.mean_rank]})
    if not grouping.is_default:  # the label in its own column, then one column per factor (the cross table's)
        labels = table.pop("backbone")
        factors = [c for c in dict.fromkeys(("backbone", *grouping.by)) if c in data.columns]
        table = pd.concat([pd.DataFrame({grouping.title: labels}),
                           pd.DataFrame({n: [data.loc[k, n] for k in labels] for n in factors}), table], axis=1)
    return (Table("friedman", "Ranks across datasets", summary, table, display), res, summary)
