"""Facts several tables state: the split a dataset's numbers come from, the trials of a study, their CV scores."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from bench import metrics as M
from bench.evaluation.grouping import Grouping
from bench.report.cells import (
    count,
    isnan,
)
from bench.report.collect import KEY_METRICS, Collection, Run, load_study
from bench.results import entry_keys, trial_params

# ---- shared facts ------------------------------------------------------------------------------------------


def split_facts(coll: Collection, dataset: str) -> dict[str, Any]:
    split = coll.manifest(dataset).get("split") or {}
    return {"folds": split.get("folds"), "cv_images": split.get("cv_images"),
            "test_images": split.get("test_images"), "cv_groups": split.get("cv_groups"),
            "test_groups": split.get("test_groups"), "rule": split.get("rule"),
            "fold_sizes": split.get("fold_sizes"), "digest": split.get("digest"),
            "folds_from": split.get("folds_from"), "official_test": split.get("official_test"),
            "shared_groups": split.get("shared_groups"), "shared_images": split.get("shared_images"),
            "excluded_images": split.get("excluded_images"), "dropped_classes": split.get("dropped_classes") or {},
            "min_class_images": split.get("min_class_images"),
            # e.g. "hold-out 20% (60 images, 20 patients)"; None for k-fold CV (and older runs)
            "protocol_label": split.get("protocol_label") if split.get("protocol", "kfold") != "kfold" else None}


def split_removals(sp: dict[str, Any]) -> str:
    """What the split took out of the data (patients shared with the test set, small classes), in words."""
    if sp["official_test"] is None:
        return "- (not recorded: a run made before bench checked for patients shared with the test set)"
    parts = []
    if sp["excluded_images"]:
        parts.append(f"{count(sp['excluded_images'])} images of {count(sp['shared_groups'])} patients/groups left out "
                     f"of CV: they also have images in the official test set (--official-test clean)")
    elif sp["shared_groups"]:
        parts.append(f"none: CV and test share {count(sp['shared_groups'])} patients/groups "
                     f"(--official-test {sp['official_test']})")
    for name, n in sp["dropped_classes"].items():
        parts.append(f"class '{name}' dropped (--min-class-images {sp['min_class_images']}): {count(n.get('cv_images'))} "
                     f"CV and {count(n.get('test_images'))} test images")
    return "; ".join(parts) or "none"


def split_warnings(coll: Collection, dataset: str) -> list[str]:
    """The overview's warnings: CV and test that share patients make every held-out number optimistic."""
    sp = split_facts(coll, dataset)
    if sp["shared_groups"] and not sp["excluded_images"]:
        return [f"Warning: CV and the held-out test set share {count(sp['shared_groups'])} patients/groups "
                f"({count(sp['shared_images'])} CV images), because the run kept the official test split's overlap "
                f"(--official-test {sp['official_test']}). Models were trained on patients they are then tested on: "
                f"the held-out numbers of {dataset} are optimistic."]
    return []


def cv_phrase(coll: Collection, dataset: str, folds: Any = None, images: Any = None) -> str:
    facts = split_facts(coll, dataset)
    folds = folds if folds is not None else facts["folds"]
    images = images if images is not None else facts["cv_images"]
    if facts.get("protocol_label") and folds == facts["folds"]:  # holdout / official: one scored split
        return f"{facts['protocol_label']} of {count(images)} CV images"
    return f"{folds if folds is not None else '?'}-fold CV on {count(images)} images"


def test_phrase(n: Any) -> str:
    return f"held-out test, {count(n)} images"


def resampled(n_units: Iterable[Any], units: Iterable[Any], n_images: Iterable[Any]) -> str:
    """What held-out CIs resampled, e.g. "bootstrap over 40 patients" (joined if models differ)."""
    phrases = dict.fromkeys(M.bootstrap_phrase(n, u, None if isnan(i) else i)
                            for n, u, i in zip(n_units, units, n_images) if not isnan(n) and isinstance(u, str))
    return " / ".join(phrases) if phrases else "bootstrap"


def params_of(row: Any) -> dict[str, Any]:
    return trial_params(row.get("params") if isinstance(row, dict | pd.Series) else getattr(row, "params", None))


def trials_of(coll: Collection, dataset: str, study: str | None = None) -> pd.DataFrame:
    t = coll.trials
    if t.empty:
        return t
    t = t[t.dataset == dataset]
    return t[t.study == study] if study is not None else t


def trial_rows(frame: pd.DataFrame, dataset: str, study: str, trial: int) -> pd.DataFrame:
    if frame.empty:
        return frame
    return frame[(frame.dataset == dataset) & (frame.study == study) & (frame.trial == trial)]


def trial_cv_scores(coll: Collection, dataset: str) -> pd.DataFrame:
    """Per (study, trial, metric): mean and std (ddof 1) over the folds, as the objective computes them."""
    m = coll.metrics
    if m.empty or not {"metric", "value", "trial"} <= set(m.columns):
        return pd.DataFrame(columns=["study", "trial", "metric", "mean", "std", "folds"])
    m = m[m.dataset == dataset]
    if "split" in m:
        m = m[m.split.astype(str) == "cv"]
    m = m.sort_values(["study", "trial", "metric", "fold"])

    def stats(v: pd.Series) -> pd.Series:
        a = v.to_numpy(dtype=float)
        ok = a[np.isfinite(a)]
        return pd.Series({"mean": float(np.mean(ok)) if ok.size else math.nan,
                          "std": float(np.std(ok, ddof=1)) if ok.size > 1 else math.nan,
                          "folds": int(a.size)})

    out = m.groupby(["study", "trial", "metric"], sort=True)["value"].apply(stats).unstack().reset_index()
    return out


def run_path(coll: Collection, label: str) -> Any:
    for run in coll.runs:
        if run.label == label:
            return run.path
    return label


def one_entry(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of one `bench final` entry: a trial refit both by backbone and by a combination has two."""
    if rows.empty:
        return rows
    keys = entry_keys(rows)
    return rows[keys == keys.iloc[0]]


def entry_trials(coll: Collection, dataset: str, grouping: Grouping) -> pd.DataFrame:
    """Every COMPLETE trial with a score: its entry (``key``), CV means and stds, and ``objective_value``
    (the objective's CV mean, or the search's recorded value where metrics.csv has none). The leaderboard
    keeps each entry's best; the expected-best curves use them all."""
    metric = coll.objective(dataset)["metric"]
    trials = trials_of(coll, dataset)
    if trials.empty:
        return pd.DataFrame()
    done = trials[trials.state == "COMPLETE"].copy()
    if done.empty:
        return pd.DataFrame()
    scores = trial_cv_scores(coll, dataset)
    by_key = {(r.study, int(r.trial), r.metric): r for r in scores.itertuples(index=False)}
    rows = []
    for t in done.itertuples(index=False):
        config = {**params_of(t), "backbone": str(t.backbone)}
        entry = grouping.entry(config)
        row: dict[str, Any] = {"dataset": dataset, "key": entry.label, "entry": entry.key,
                               **{n: v for n, v in entry.factors if n != "backbone"}, "backbone": entry.backbone,
                               "study": t.study, "run": t.run, "trial": int(t.trial)}
        for m in dict.fromkeys((metric, *KEY_METRICS)):
            s = by_key.get((t.study, int(t.trial), m))
            row[f"cv_{m}_mean"] = s.mean if s is not None else math.nan
            row[f"cv_{m}_std"] = s.std if s is not None else math.nan
        s = by_key.get((t.study, int(t.trial), metric))
        row["folds_scored"] = int(s.folds) if s is not None else 0
        if isnan(row[f"cv_{metric}_mean"]):  # no metrics.csv: the search's own record of the value
            row[f"cv_{metric}_mean"] = float(t.value) if not isnan(t.value) else math.nan
        row["objective_value"] = row[f"cv_{metric}_mean"]
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame = frame[frame.objective_value.notna()]
    if frame.empty:
        return pd.DataFrame()
    return frame


def coll_study(coll: Collection, run: Run) -> Any:
    """``RunDir.study()`` of a run, loaded once; None (with a note) when it cannot be read."""
    return load_study(run, coll.study_cache, coll.notes)


def progress(coll: Collection, dataset: str, study_name: str) -> pd.DataFrame:
    """Complete trials in number order with their value and elapsed seconds since the search began."""
    trials = trials_of(coll, dataset, study_name).sort_values("trial")
    if trials.empty:
        return pd.DataFrame(columns=["trial", "value", "elapsed"])
    elapsed = pd.to_numeric(trials.get("seconds"), errors="coerce").fillna(0).cumsum() \
        if "seconds" in trials else pd.Series(np.nan, index=trials.index)
    by_number = dict(zip(trials.trial, elapsed))
    for run in coll.runs_of(dataset, study_name):
        study = coll_study(coll, run) if run.engine == "optuna" else None
        if study is None:
            continue
        frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
        starts = [t.datetime_start for t in frozen.values() if t.datetime_start]
        if starts and all(n in frozen and frozen[n].datetime_complete for n in trials.trial):
            t0 = min(starts)
            by_number = {n: (frozen[n].datetime_complete - t0).total_seconds() for n in trials.trial}
            break
    done = trials[(trials.state == "COMPLETE") & pd.to_numeric(trials.value, errors="coerce").notna()]
    return pd.DataFrame({"trial": done.trial.to_numpy(), "value": done.value.astype(float).to_numpy(),
                         "elapsed": [by_number[n] for n in done.trial]})


def identity(row: Any) -> dict[str, Any]:
    """A leaderboard row's identity columns, in the board's order: ``key`` (the display label),
    ``entry`` (the key `bench final` names its files by), one column per ``--by`` factor, ``backbone``:
    every report table of entries carries them, so ``df.groupby("weights")`` needs no parsing."""
    d = row._asdict()
    names = list(d)
    if "entry" not in d or "backbone" not in d:
        return {n: d[n] for n in ("key", "backbone") if n in d}
    return {n: d[n] for n in names[names.index("key"):names.index("backbone") + 1]}


def with_identity(frame: pd.DataFrame, ident: dict[str, Any]) -> pd.DataFrame:
    """``frame`` with the identity columns ``ident`` (``identity``) in front, on every row."""
    return pd.concat([pd.DataFrame(ident, index=frame.index), frame.drop(columns=[c for c in ident if c in frame])],
                     axis=1) if ident else frame


def factor_columns(board: pd.DataFrame) -> list[str]:
    """The leaderboard's ``--by`` factor columns other than backbone (between ``entry`` and ``backbone``)."""
    cols = list(board.columns)
    return cols[cols.index("entry") + 1:cols.index("backbone")] if {"entry", "backbone"} <= set(cols) else []


def factors_by_key(board: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Each leaderboard row's factor values (backbone first), by its label (``key``)."""
    names = ["backbone", *factor_columns(board)]
    return {r["key"]: {n: r[n] for n in names} for _, r in board.iterrows()}


def entry_rows(frame: pd.DataFrame, dataset: str, row: Any) -> pd.DataFrame:
    """A held-out table's rows of one leaderboard row: its study, trial and backbone, and of its own
    entry (``row.entry``) when `bench final` refit that trial under several ``--by`` (else the first).

    Matching on the trial, not on a name, is what lets a report by any ``--by`` find a refit made
    under another; the backbone column is the backbone's name in every file (``RunDir.table``).
    """
    if frame.empty:
        return frame
    sub = frame[(frame.dataset == dataset) & (frame.study == row.study)
                & (frame.backbone.astype(str) == str(row.backbone))]
    if "trial" in sub:
        sub = sub[sub.trial == row.trial]
    if sub.empty:
        return sub
    keys = entry_keys(sub)
    mine = sub[keys == str(getattr(row, "entry", None))]
    return mine if len(mine) else one_entry(sub)
