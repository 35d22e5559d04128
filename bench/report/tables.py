"""The report's tables, computed from a ``Collection``.

Each builder returns a ``Table``: ``data`` is the numeric frame written to ``tables/<name>.csv``
(deterministic: sorted rows, no timestamps), ``display`` the formatted strings shown in
Markdown, HTML and the terminal, ``bold`` marks the best value of a column. Every caption
says which split the numbers come from and how many images.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench import metrics as M
from bench.grouping import DEFAULT_BY, Grouping
from bench.report.collect import KEY_METRICS, Collection, Note, Run, load_study, proba_matrix
from bench.results import entry_keys, trial_params

LABELS = {
    "accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro-F1", "auc": "AUC",
    "sensitivity": "sensitivity", "specificity": "specificity", "mcc": "MCC", "log_loss": "log loss",
}
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "INTERRUPTED")


@dataclass
class Table:
    name: str  # tables/<name>.csv
    title: str
    caption: str
    data: pd.DataFrame
    display: pd.DataFrame
    bold: pd.DataFrame | None = None
    terminal: bool = False  # also printed in the terminal

    def __post_init__(self) -> None:
        if self.bold is None:
            self.bold = pd.DataFrame(False, index=self.display.index, columns=self.display.columns)


# ---- formatting --------------------------------------------------------------------------------------------


def slug(*parts: Any) -> str:
    text = "_".join(str(p) for p in parts if p is not None and str(p) != "")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def isnan(x: Any) -> bool:
    try:
        return x is None or (isinstance(x, float | np.floating) and math.isnan(x)) or pd.isna(x)
    except (TypeError, ValueError):
        return False


def f3(x: Any) -> str:
    return "-" if isnan(x) else f"{float(x):.3f}"


def pruned_where(fold: Any, epoch: Any) -> str:
    """'fold 1, epoch 2' (cut on its learning curve), 'fold 2 end' (on its fold score) or '-'."""
    if isnan(fold):
        return "-"
    if isnan(epoch) or int(float(epoch)) < 0:
        return f"fold {int(float(fold)) + 1} end"
    return f"fold {int(float(fold)) + 1}, epoch {int(float(epoch)) + 1}"


def pm(mean: Any, std: Any) -> str:
    if isnan(mean):
        return "-"
    return f"{float(mean):.3f}" if isnan(std) else f"{float(mean):.3f} ± {float(std):.3f}"


def ci(value: Any, low: Any, high: Any) -> str:
    if isnan(value):
        return "-"
    if isnan(low) or isnan(high):
        return f"{float(value):.3f}"
    return f"{float(value):.3f} [{float(low):.3f}, {float(high):.3f}]"


def count(x: Any) -> str:
    return "-" if isnan(x) else f"{int(x):,}"


def millions(x: Any) -> str:
    """A parameter count: 23.59 M, 390.4 k, 812."""
    if isnan(x):
        return "-"
    x = float(x)
    return f"{x / 1e6:.2f} M" if x >= 1e6 else (f"{x / 1e3:.1f} k" if x >= 1e3 else f"{int(x)}")


def seconds(x: Any) -> str:
    if isnan(x):
        return "-"
    x = float(x)
    if x < 120:
        return f"{x:.1f} s"
    if x < 7200:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.1f} h"


def short(x: Any, digits: int = 3) -> str:
    if isnan(x):
        return "-"
    if isinstance(x, bool | np.bool_):
        return str(bool(x)).lower()
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        return f"{float(x):.{digits}g}"
    return str(x)


def best_mask(data: pd.DataFrame, display: pd.DataFrame, rules: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """``rules``: display column -> (data column, "max"|"min"); ties are all marked."""
    bold = pd.DataFrame(False, index=display.index, columns=display.columns)
    if len(data) < 2:
        return bold
    for col, (source, how) in rules.items():
        if col not in display or source not in data:
            continue
        values = pd.to_numeric(data[source], errors="coerce").to_numpy(dtype=float)
        if np.isfinite(values).sum() < 2:  # a lone value is not "the best" of anything
            continue
        target = np.nanmax(values) if how == "max" else np.nanmin(values)
        bold[col] = np.isclose(values, target, rtol=0, atol=1e-12) & np.isfinite(values)
    return bold


def higher_is_better(metric: str) -> bool:
    m = M.METRICS.get(metric)
    return m.higher_is_better if m is not None else True


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


def _rows(frame: pd.DataFrame, dataset: str, study: str, trial: int) -> pd.DataFrame:
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


# ---- 1. overview -------------------------------------------------------------------------------------------


def dataset_overview(coll: Collection, dataset: str) -> Table:
    man = coll.manifest(dataset)
    ds = man.get("dataset") or {}
    sp = split_facts(coll, dataset)
    classes = ds.get("classes") or []
    per_class = ds.get("per_class") or {}
    skipped = ds.get("skipped") or []
    rows = [
        ("title", ds.get("title", "")),
        ("classes", f"{len(classes)}: " + ", ".join(map(str, classes))),
        ("images per class", ", ".join(f"{c} {count(per_class.get(c))}" for c in classes) or "-"),
        ("images", count(ds.get("images"))),
        ("patients / groups", count(ds.get("groups"))),
        ("split rule", sp["rule"] or "-"),
        ("removed by the split", split_removals(sp)),
        ("cross-validation", f"{sp['folds']} folds" + (f" ({sp['folds_from']})" if sp["folds_from"] else "") + f" on {count(sp['cv_images'])} images ({count(sp['cv_groups'])} "
                             f"groups); fold sizes {', '.join(map(str, sp['fold_sizes'] or [])) or '-'}"),
        ("held-out test", f"{count(sp['test_images'])} images ({count(sp['test_groups'])} groups)"),
        ("exact duplicates found", count(ds.get("duplicates"))),
        ("identical images with different labels", _conflicts(ds.get("label_conflicts") or [])),
        ("passed over (links, names)", str(len(ds.get("passed_over") or []))),
        ("skipped (unreadable) files", str(len(skipped)) + (": " + ", ".join(map(str, skipped[:5])) +
                                                          (" ..." if len(skipped) > 5 else "") if skipped else "")),
        ("licence", ds.get("license") or "-"),
        ("citation", ds.get("citation") or "-"),
    ]
    data = pd.DataFrame(rows, columns=["field", "value"])
    return Table(slug("overview", dataset), f"{dataset}: the data",
                 f"From the run manifests of {dataset}; the held-out test set is never used by the search.",
                 data, data.copy())


def _conflicts(conflicts: list[dict[str, list[str]]]) -> str:
    """How many sets of identical images carry different labels, and the first few of them."""
    if not conflicts:
        return "0"
    shown = "; ".join(" = ".join(f"{p} ({c})" for p, c in zip(x["paths"], x["labels"])) for x in conflicts[:3])
    return f"{len(conflicts)}: {shown}" + (" ..." if len(conflicts) > 3 else "")


def _versions(env: dict[str, Any]) -> str:
    versions = env.get("versions") or {}
    keep = ("keras", env.get("backend"), "tensorflow", "torch", "jax", "optuna", "keras-tuner", "scikit-learn", "numpy")
    return ", ".join(f"{k} {versions[k]}" for k in dict.fromkeys(keep) if k and k in versions)


def _study_span(coll: Collection, run: Run) -> float:
    """Seconds from the first trial's start to the last trial's end, from the Optuna study."""
    study = coll_study(coll, run)
    if study is None:
        return math.nan
    trials = study.get_trials(deepcopy=False)
    starts = [t.datetime_start for t in trials if t.datetime_start]
    ends = [t.datetime_complete for t in trials if t.datetime_complete]
    return (max(ends) - min(starts)).total_seconds() if starts and ends else math.nan


def coll_study(coll: Collection, run: Run) -> Any:
    """``RunDir.study()`` of a run, loaded once; None (with a note) when it cannot be read."""
    return load_study(run, coll.study_cache, coll.notes)


def runs_overview(coll: Collection, dataset: str) -> Table:
    rows = []
    trials = trials_of(coll, dataset)
    for run in coll.runs_of(dataset):
        env = run.manifest.get("environment") or {}
        mine = trials[trials.run == run.label] if not trials.empty else trials
        states = mine.state.value_counts().to_dict() if not mine.empty else {}
        wall = run.manifest.get("seconds")
        if wall is None and run.kind == "search":
            wall = _study_span(coll, run)
        rows.append({
            "run": run.label, "study": run.study, "kind": run.kind, "engine": run.engine, "strategy": run.strategy,
            "status": run.status, **{s.lower(): int(states.get(s, 0)) for s in STATES},
            "wall_seconds": wall if wall is not None else math.nan,
            "trial_seconds": float(pd.to_numeric(mine.seconds, errors="coerce").sum())
            if "seconds" in mine else math.nan,
            "backend": env.get("backend", "-"), "device": env.get("device", "-"),
            "gpus": ", ".join(env.get("gpus") or []) or "-", "precision": env.get("mixed_precision", "-"),
            "python": env.get("python", "-"), "versions": _versions(env),
        })
    data = pd.DataFrame(rows)
    display = pd.DataFrame({
        "run": data.run, "study": data.study, "search": data.engine + " / " + data.strategy, "status": data.status,
        "trials (complete / pruned / failed / other)": [
            f"{r.complete} / {r.pruned} / {r.fail} / {r.running + r.interrupted}" for r in data.itertuples()],
        "wall time": [seconds(x) for x in data.wall_seconds],
        "trial time (sum)": [seconds(x) for x in data.trial_seconds],
        "backend / device": data.backend + " / " + data.device + np.where(data.gpus != "-", " (" + data.gpus + ")", ""),
        "versions": data.versions,
    })
    return Table(slug("runs", dataset), f"{dataset}: runs and search budget",
                 "Wall time: from the manifest (bench cv) or from the first trial's start to the last trial's end "
                 "(Optuna study); trial time sums each trial's own seconds.", data, display, terminal=True)


# ---- 2. leaderboard ----------------------------------------------------------------------------------------


def searched_parameters(coll: Collection) -> set[str]:
    """Every parameter named in the trials' configurations (what ``--by`` can group by)."""
    trials = coll.trials
    if trials.empty:
        return set()
    return {"backbone"} | {k for _, r in trials.iterrows() for k in params_of(r)}


def leaderboard(coll: Collection, dataset: str, by: tuple[str, ...] = DEFAULT_BY) -> pd.DataFrame:
    """One row per backbone (per combination of the ``by`` parameters): its best COMPLETE trial by
    the dataset's objective (CV mean), best first. ``key`` names the row ("resnet50 · imagenet")."""
    grouping = Grouping(by)
    objective = coll.objective(dataset)
    metric, maximize = objective["metric"], objective.get("direction", "maximize") == "maximize"
    trials = trials_of(coll, dataset)
    cols = ["dataset", "rank", "key", "backbone", "study", "run", "trial"]
    if trials.empty:
        return pd.DataFrame(columns=cols)
    done = trials[trials.state == "COMPLETE"].copy()
    if done.empty:
        return pd.DataFrame(columns=cols)
    scores = trial_cv_scores(coll, dataset)
    by_key = {(r.study, int(r.trial), r.metric): r for r in scores.itertuples(index=False)}
    rows = []
    for t in done.itertuples(index=False):
        config = {**params_of(t), "backbone": str(t.backbone)}
        row: dict[str, Any] = {"dataset": dataset, "key": grouping.label(config), "backbone": str(t.backbone),
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
        return pd.DataFrame(columns=cols)
    # Among equally good trials prefer one with a held-out result, then the first study and trial.
    tm = coll.test_metrics
    tested = set() if tm.empty else {(s, str(b), int(t)) for s, b, t in
                                     tm[tm.dataset == dataset][["study", "backbone", "trial"]].itertuples(index=False)}
    frame["_tested"] = [(r.study, r.backbone, r.trial) in tested for r in frame.itertuples(index=False)]
    frame = frame.sort_values(["objective_value", "_tested", "study", "trial"],
                              ascending=[not maximize, False, True, True], kind="stable").drop(columns="_tested")
    members = {k: set(zip(g.study, g.trial)) for k, g in frame.groupby("key")}
    best = frame.drop_duplicates("key", keep="first").reset_index(drop=True)
    best.insert(1, "rank", np.arange(1, len(best) + 1))

    # Cost: parameters, seconds per epoch and images/s, averaged over the folds that finished.
    extra = []
    for r in best.itertuples(index=False):
        folds = _rows(coll.folds, dataset, r.study, r.trial)
        ok = folds[folds.status == "ok"] if "status" in folds else folds
        num = lambda c: pd.to_numeric(ok[c], errors="coerce") if c in ok else pd.Series(dtype=float)  # noqa: E731
        extra.append({
            "folds": split_facts(coll, dataset)["folds"],
            "cv_images": int(num("n_val").sum()) if len(num("n_val")) else split_facts(coll, dataset)["cv_images"],
            "total_params": num("total_params").iloc[0] if len(num("total_params")) else math.nan,
            "trainable_params": num("trainable_params").iloc[0] if len(num("trainable_params")) else math.nan,
            "seconds_per_epoch": float(num("seconds_per_epoch").mean()) if len(num("seconds_per_epoch")) else math.nan,
            "images_per_second": float(num("images_per_second").mean()) if len(num("images_per_second")) else math.nan,
            **_test_values(coll, dataset, r.study, r.backbone, r.trial, metric,
                           None if grouping.is_default else members[r.key]),
        })
    best = pd.concat([best, pd.DataFrame(extra)], axis=1)
    order = ["dataset", "rank", "key", "backbone", "study", "run", "trial", "folds", "folds_scored", "cv_images",
             "objective_value"]
    order += [c for c in best.columns if c.startswith("cv_") and c not in order]
    order += [c for c in best.columns if c not in order]
    return best[order]


def _test_values(coll: Collection, dataset: str, study: str, backbone: str, trial: int, metric: str,
                 members: set[tuple[str, int]] | None = None) -> dict:
    """The held-out result of this trial; ``members``: the (study, trial)s of the row's combination
    (grouped by several factors), so a result of another combination is not named as this one's."""
    out = {"test_value": math.nan, "test_low": math.nan, "test_high": math.nan, "test_images": math.nan,
           "test_units": math.nan, "test_unit": None, "test_of": ""}
    tm = coll.test_metrics
    if tm.empty:
        return out
    rows = tm[(tm.dataset == dataset) & (tm.backbone.astype(str) == backbone)]
    if members is not None:
        rows = rows[[(s, int(t)) in members for s, t in zip(rows.study, rows.trial)]]
    if rows.empty:
        return out
    exact = rows[(rows.study == study) & (rows.trial == trial)]
    if exact.empty:  # a held-out result of another trial of this backbone: say so, do not show it as this one's
        out["test_of"] = "; ".join(sorted({f"{s} #{int(t)}" for s, t in zip(rows.study, rows.trial)}))
        return out
    row = exact[exact.metric == metric]
    if row.empty:
        return out
    r = row.iloc[0]
    out.update(test_value=float(r.value), test_low=float(r.get("low", math.nan)),
               test_high=float(r.get("high", math.nan)), test_images=r.get("n_images", math.nan),
               test_units=r.get("n_units", math.nan), test_unit=r.get("unit"))
    return out


def leaderboard_notes(coll: Collection, dataset: str, board: pd.DataFrame) -> list[Note]:
    """What the leaderboard lacks (problems: a held-out value or metrics missing) and how it ranks."""
    notes = []
    metric = coll.objective(dataset)["metric"]

    def add(text: str, problem: bool = True) -> None:
        notes.append(Note(text, dataset, "leaderboard", problem))

    for r in board.itertuples(index=False):
        if r.test_of:
            add(f"{r.key}: the held-out result on record is of {r.test_of}, not of the leaderboard's "
                f"best trial {r.study} #{r.trial} (the search went on after `bench final`, or another "
                f"study did better); run `bench final --run {shlex.quote(str(_run_path(coll, r.run)))}` "
                f"for a test value of this one.")
        elif isnan(r.test_value) and not board.test_value.isna().all():
            add(f"{r.key}: no held-out result for trial {r.study} #{r.trial}.")
        if r.folds_scored == 0 and not isnan(r.objective_value):
            add(f"{r.key}: no per-fold metrics (metrics.csv) for trial {r.trial} of {r.study}: the "
                f"{metric} shown is the search's recorded value; the other metrics are not available.")
    if not board.empty and board.test_value.isna().all() and not any(board.test_of):
        add("No held-out test results yet: `bench final --run DIR` refits each backbone's best trial on "
            "all CV images and scores it once on the held-out test set (see Reproduce).")
    studies = {r.study: r.objective for r in coll.runs_of(dataset)}
    other = sorted({f"{s} ({o['metric']})" for s, o in studies.items() if o["metric"] != metric})
    if other:
        add(f"Ranked by {metric}; these studies optimised another metric: {', '.join(other)}.", problem=False)
    return notes


def _run_path(coll: Collection, label: str) -> Any:
    for run in coll.runs:
        if run.label == label:
            return run.path
    return label


def leaderboard_table(coll: Collection, dataset: str, board: pd.DataFrame,
                      by: tuple[str, ...] = DEFAULT_BY) -> Table:
    grouping = Grouping(by)
    objective = coll.objective(dataset)
    metric = objective["metric"]
    maximize = objective.get("direction", "maximize") == "maximize"
    metrics = list(dict.fromkeys((metric, *KEY_METRICS)))
    n_cv = split_facts(coll, dataset)["cv_images"]
    n_test = board.test_images.dropna().iloc[0] if "test_images" in board and board.test_images.notna().any() \
        else split_facts(coll, dataset)["test_images"]
    display = pd.DataFrame({
        "#": board["rank"].astype(str), grouping.title: board.key,
        "trial": [f"{r.study} #{r.trial}" if board.study.nunique() > 1 else f"#{r.trial}"
                  for r in board.itertuples()],
        **{f"{LABELS.get(m, m)}{' (objective)' if m == metric else ''}":
           [pm(a, b) for a, b in zip(board[f"cv_{m}_mean"], board[f"cv_{m}_std"])] for m in metrics},
        f"test {LABELS.get(metric, metric)} [95% CI]": [ci(a, b, c) for a, b, c in
                                                      zip(board.test_value, board.test_low, board.test_high)],
        "params (trainable)": [f"{millions(a)} ({millions(b)})" for a, b in
                               zip(board.total_params, board.trainable_params)],
        "s/epoch": [f"{x:.2f}" if not isnan(x) else "-" for x in board.seconds_per_epoch],
        "images/s": [f"{x:.1f}" if not isnan(x) else "-" for x in board.images_per_second],
    }) if not board.empty else pd.DataFrame()
    rules: dict[str, tuple[str, str]] = {}
    for m in metrics:
        label = f"{LABELS.get(m, m)}{' (objective)' if m == metric else ''}"
        rules[label] = (f"cv_{m}_mean", "max" if (maximize if m == metric else higher_is_better(m)) else "min")
    rules[f"test {LABELS.get(metric, metric)} [95% CI]"] = ("test_value", "max" if maximize else "min")
    rules["params (trainable)"] = ("total_params", "min")
    rules["s/epoch"] = ("seconds_per_epoch", "min")
    rules["images/s"] = ("images_per_second", "max")
    bold = best_mask(board, display, rules) if not board.empty else None
    caption = (f"Cross-validation: mean ± std over the validation folds ({cv_phrase(coll, dataset, images=n_cv)}), "
               f"{_rows_phrase(grouping)} best complete trial by {metric}. Test column: {test_phrase(n_test)}, "
               f"95% CI by "
               f"{_board_resampled(board)}; the test set was used once, after the search. Best per column in bold. "
               f"s/epoch and images/s: training, mean over folds.")
    return Table(slug("leaderboard", dataset), f"{dataset}: leaderboard", caption, board, display, bold,
                 terminal=True)


def _rows_phrase(grouping: Grouping) -> str:
    """Which factor(s) the rows are grouped by, as the caption says it."""
    if grouping.is_default:
        return "each backbone's"
    return (f"rows grouped by {', '.join(grouping.by)} (`--by {','.join(grouping.by)}`): each "
            f"{grouping.noun}'s")


def _board_resampled(board: pd.DataFrame) -> str:
    if board.empty or "test_units" not in board:
        return "bootstrap"
    return resampled(board.test_units, board.test_unit, board.test_images)


def held_out_rows(coll: Collection, dataset: str, r: Any) -> pd.DataFrame:
    """The held-out test metrics of one leaderboard row (its study, backbone and trial)."""
    tm = coll.test_metrics
    return one_entry(tm[(tm.dataset == dataset) & (tm.study == r.study) & (tm.backbone.astype(str) == r.backbone)
                        & (tm.trial == r.trial)])


def one_entry(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of one `bench final` entry: a trial refit both by backbone and by a combination has two."""
    if rows.empty:
        return rows
    keys = entry_keys(rows)
    return rows[keys == keys.iloc[0]]


def test_metrics_table(coll: Collection, dataset: str, board: pd.DataFrame,
                       by: tuple[str, ...] = DEFAULT_BY) -> Table | None:
    """Every metric on the held-out test set, with its CI, for the leaderboard's models."""
    tm = coll.test_metrics
    if tm.empty or board.empty:
        return None
    rows = []
    for r in board.itertuples(index=False):
        sub = held_out_rows(coll, dataset, r)
        if sub.empty:
            continue
        row: dict[str, Any] = {"dataset": dataset, "rank": r.rank, "key": r.key, "backbone": r.backbone,
                               "study": r.study, "trial": r.trial}
        for m in KEY_METRICS:
            x = sub[sub.metric == m]
            row[m] = float(x.value.iloc[0]) if len(x) else math.nan
            row[f"{m}_low"] = float(x.low.iloc[0]) if len(x) and "low" in x else math.nan
            row[f"{m}_high"] = float(x.high.iloc[0]) if len(x) and "high" in x else math.nan
        row["n_images"] = int(sub.n_images.iloc[0]) if "n_images" in sub and len(sub) else math.nan
        row["n_boot"] = int(sub.n_boot.min()) if "n_boot" in sub and len(sub) else math.nan
        row["n_units"] = int(sub.n_units.iloc[0]) if "n_units" in sub and len(sub) else math.nan
        row["unit"] = str(sub.unit.iloc[0]) if "unit" in sub and len(sub) else None
        rows.append(row)
    if not rows:
        return None
    data = pd.DataFrame(rows)
    display = pd.DataFrame({"#": data["rank"].astype(str), Grouping(by).title: data.key,
                            **{LABELS[m]: [ci(a, b, c) for a, b, c in zip(data[m], data[f"{m}_low"],
                                                                         data[f"{m}_high"])] for m in KEY_METRICS}})
    bold = best_mask(data, display, {LABELS[m]: (m, "max" if higher_is_better(m) else "min") for m in KEY_METRICS})
    n = data.n_images.dropna()
    n_cv = count(split_facts(coll, dataset)["cv_images"])
    over = resampled(data.n_units, data.unit, data.n_images)
    caption = (f"{test_phrase(n.iloc[0] if len(n) else None)}: each model refit on the {n_cv} "
               f"CV images (less the inner split its early stopping and LR reduction read, as in CV) and "
               f"scored once; [95% CI] from a stratified {over} "
               f"({count(data.n_boot.min())} resamples). Best per column in bold.")
    return Table(slug("test", dataset), f"{dataset}: held-out test, all metrics", caption, data, display, bold)


# ---- 3. across datasets ------------------------------------------------------------------------------------


def cross_dataset(coll: Collection, boards: dict[str, pd.DataFrame],
                  by: tuple[str, ...] = DEFAULT_BY) -> Table | None:
    """Backbones (combinations of ``by``) x datasets: the objective on test (CV where no test ran),
    mean rank per row."""
    grouping = Grouping(by)
    datasets = [d for d in sorted(boards) if not boards[d].empty]
    if not datasets:
        return None
    backbones = sorted({b for d in datasets for b in boards[d].key})
    values = pd.DataFrame(index=backbones, columns=datasets, dtype=float)
    source = pd.DataFrame("", index=backbones, columns=datasets)
    ranks = pd.DataFrame(index=backbones, columns=datasets, dtype=float)
    for d in datasets:
        b = boards[d].set_index("key")
        maximize = coll.objective(d).get("direction", "maximize") == "maximize"
        for name, r in b.iterrows():
            test = not isnan(r.test_value)
            values.loc[name, d] = r.test_value if test else r.objective_value
            source.loc[name, d] = "test" if test else "cv"
        ranks[d] = values[d].rank(ascending=not maximize, method="average")
    mean_rank = ranks.mean(axis=1)
    order = sorted(backbones, key=lambda b: (isnan(mean_rank[b]), mean_rank[b], b))
    data = pd.DataFrame({grouping.title: order})
    display = pd.DataFrame({grouping.title: order})
    rules = {}
    for d in datasets:
        metric = coll.objective(d)["metric"]
        data[d] = [values.loc[b, d] for b in order]
        data[f"{d}_source"] = [source.loc[b, d] or "-" for b in order]
        data[f"{d}_rank"] = [ranks.loc[b, d] for b in order]
        col = f"{d} ({LABELS.get(metric, metric)})"
        display[col] = [("-" if isnan(values.loc[b, d]) else
                         f"{values.loc[b, d]:.3f}" + (" (CV)" if source.loc[b, d] == "cv" else "")) for b in order]
        maximize = coll.objective(d).get("direction", "maximize") == "maximize"
        rules[col] = (d, "max" if maximize else "min")
    data["mean_rank"] = [mean_rank[b] for b in order]
    data["datasets"] = [int(ranks.loc[b].notna().sum()) for b in order]
    display["mean rank"] = [f"{x:.2f}" if not isnan(x) else "-" for x in data.mean_rank]
    display["datasets"] = data.datasets.astype(str)
    rules["mean rank"] = ("mean_rank", "min")
    bold = best_mask(data, display, rules)
    sizes = "; ".join(f"{d}: {test_phrase(split_facts(coll, d)['test_images'])}, {cv_phrase(coll, d)}"
                      for d in datasets)
    caption = ("Each dataset's objective on its held-out test set; (CV) marks a cross-validation mean where no "
               f"held-out evaluation ran yet. Mean rank over the datasets a {grouping.noun} was run on (1 = best). "
               f"Best per column in bold. Sizes: {sizes}.")
    title = "Backbones across datasets" if grouping.is_default else f"{grouping.title} across datasets"
    return Table("cross_dataset", title, caption, data, display, bold, terminal=True)


# ---- 4. significance ---------------------------------------------------------------------------------------


def fold_scores(coll: Collection, dataset: str, board: pd.DataFrame, metric: str) -> dict[str, np.ndarray]:
    m = coll.metrics
    folds = int(split_facts(coll, dataset)["folds"] or 0)
    out = {}
    for r in board.itertuples(index=False):
        rows = _rows(m, dataset, r.study, r.trial) if not m.empty else m
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
        rows = _rows(folds, dataset, r.study, r.trial)
        if {"n_train", "n_val"} <= set(rows.columns) and len(rows):
            sizes.append((rows.n_train.astype(float).mean(), rows.n_val.astype(float).mean()))
    if sizes:
        return int(round(np.mean([s[0] for s in sizes]))), int(round(np.mean([s[1] for s in sizes])))
    sp = split_facts(coll, dataset)
    k, n = int(sp["folds"] or 2), int(sp["cv_images"] or 2)
    return n - n // k, n // k


def ttest_table(coll: Collection, dataset: str, board: pd.DataFrame, stats: Any, top: int = 3) -> Table | str:
    """Corrected resampled t-tests between the top backbones; a string says why not."""
    metric = coll.objective(dataset)["metric"]
    if len(board) < 2:
        return "Fewer than two backbones completed: nothing to compare."
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
               f"top {min(top, len(board))} backbones; p (Holm) adjusts for the pairs. The models were picked on "
               f"these folds, so read the p-values as a screen, not a proof.")
    return Table(slug("ttest", dataset), f"{dataset}: are the top backbones different?", caption, data, display)


def friedman_table(coll: Collection, cross: Table, stats: Any) -> tuple[Table | None, Any, str]:
    """Friedman / Iman-Davenport / Nemenyi over the datasets; (table, result, message)."""
    data = cross.data.set_index(cross.data.columns[0])  # the rows' names: backbone, or "backbone · weights"
    datasets = [c for c in data.columns if f"{c}_source" in data.columns]
    scores = data[datasets].T.astype(float)  # datasets x backbones
    complete = [b for b in scores.columns if scores[b].notna().all()]
    dropped = sorted(set(scores.columns) - set(complete))
    if len(datasets) < 3:
        return None, None, f"The Friedman test needs at least 3 datasets; the report has {len(datasets)}."
    if len(complete) < 2:
        return None, None, "Fewer than two backbones were run on every dataset: no Friedman test."
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
               f"{res['n_models']} backbones.")
    if dropped:
        summary += f" Left out (not run on every dataset): {', '.join(dropped)}."
    for key in ("chi2", "chi2_p_value", "iman_davenport_f", "iman_davenport_p_value", "cd"):
        table[key] = float(res[key])
    display = pd.DataFrame({"backbone": table.backbone, "mean rank": [f"{x:.2f}" for x in table.mean_rank]})
    return (Table("friedman", "Ranks across datasets", summary, table, display), res, summary)


# ---- 5. one model ------------------------------------------------------------------------------------------


@dataclass
class ModelEval:
    """The predictions a model section is drawn from: held-out test if present, else out-of-fold."""

    dataset: str
    backbone: str  # the leaderboard row's name: the backbone, or its combination with --by
    study: str
    run: str
    trial: int
    source: str  # "test" | "oof"
    phrase: str
    y: np.ndarray
    proba: np.ndarray
    classes: list[str]
    positive: int | None


def model_eval(coll: Collection, dataset: str, row: Any) -> ModelEval | str:
    classes = coll.classes(dataset)
    if len(classes) < 2:
        return "the manifest lists no classes"
    tp = coll.test_predictions
    if not tp.empty:
        sub = tp[(tp.dataset == dataset) & (tp.study == row.study) & (tp.backbone.astype(str) == row.backbone)]
        if "trial" in sub:
            sub = one_entry(sub[sub.trial == row.trial])
        if len(sub):
            y, p = proba_matrix(sub, classes)
            return ModelEval(dataset, row.key, row.study, row.run, int(row.trial), "test",
                             test_phrase(len(sub)), y, p, classes, coll.positive_index(dataset))
    pr = _rows(coll.predictions, dataset, row.study, row.trial)
    if pr.empty:
        return "no predictions: neither test_predictions.csv nor predictions.csv holds this trial"
    y, p = proba_matrix(pr, classes)
    k = pr.fold.nunique()
    return ModelEval(dataset, row.key, row.study, row.run, int(row.trial), "oof",
                     f"out-of-fold predictions, {k} validation folds, {count(len(pr))} images", y, p, classes,
                     coll.positive_index(dataset))


def confusion_table(ev: ModelEval) -> Table:
    cm = M.confusion(ev.y, ev.proba, len(ev.classes))
    norm = M.normalize_rows(cm)
    data = pd.DataFrame([{"truth": t, "predicted": p, "count": int(cm[i, j]), "row_fraction": float(norm[i, j])}
                         for i, t in enumerate(ev.classes) for j, p in enumerate(ev.classes)])
    display = pd.DataFrame({"truth \\ predicted": ev.classes, **{
        p: [f"{cm[i, j]} ({100 * norm[i, j]:.1f}%)" if np.isfinite(norm[i, j]) else f"{cm[i, j]}"
            for i in range(len(ev.classes))] for j, p in enumerate(ev.classes)}})
    bold = pd.DataFrame(False, index=display.index, columns=display.columns)
    for i, c in enumerate(ev.classes):
        bold.loc[i, c] = True  # the diagonal: correct predictions
    return Table(slug("confusion", ev.dataset, ev.backbone), f"Confusion matrix ({ev.phrase})",
                 f"Rows: true class; columns: predicted (argmax). Count and row percentage (recall profile); "
                 f"{ev.phrase}.", data, display, bold)


def per_class(ev: ModelEval) -> Table:
    data = M.per_class_table(ev.y, ev.proba, ev.classes)
    display = pd.DataFrame({"class": data["class"], **{c: [f3(x) for x in data[c]] for c in
                                                       ("precision", "recall", "f1", "specificity", "auc")},
                            "support": data.support.astype(str)})
    return Table(slug("per_class", ev.dataset, ev.backbone), f"Per class ({ev.phrase})",
                 f"One-vs-rest precision, recall (sensitivity), F1, specificity and AUC per class; {ev.phrase}.",
                 data, display[["class", "precision", "recall", "f1", "support", "specificity", "auc"]])


# ---- 6. the search -----------------------------------------------------------------------------------------


def varying_params(trials: pd.DataFrame) -> list[str]:
    """Configuration fields that differ between trials (the searched ones; seeds always differ)."""
    configs = [params_of(r) for _, r in trials.iterrows()]
    keys = sorted({k for c in configs for k in c} - {"seed", "backbone"})
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]


def trials_table(coll: Collection, dataset: str, study: str) -> Table | None:
    trials = trials_of(coll, dataset, study)
    if trials.empty:
        return None
    trials = trials.sort_values("trial")
    keys = varying_params(trials)
    configs = [params_of(r) for _, r in trials.iterrows()]
    data = pd.DataFrame({
        "dataset": dataset, "study": study, "trial": trials.trial.to_numpy(), "state": trials.state.to_numpy(),
        "backbone": trials.backbone.astype(str).to_numpy(),
        **{k: [c.get(k) for c in configs] for k in keys},
        "value": pd.to_numeric(trials.value, errors="coerce").to_numpy(),
        "seconds": pd.to_numeric(trials.get("seconds"), errors="coerce").to_numpy()
        if "seconds" in trials else math.nan,
        "pruned_at_fold": trials.get("pruned_at_fold", pd.Series(math.nan, index=trials.index)).to_numpy(),
        "pruned_at_epoch": trials.get("pruned_at_epoch", pd.Series(math.nan, index=trials.index)).to_numpy(),
        "fail_reason": trials.get("fail_reason", pd.Series(None, index=trials.index)).to_numpy(),
        "run": trials.run.to_numpy(),
    })
    metric = coll.runs_of(dataset, study)[0].objective["metric"]
    display = pd.DataFrame({
        "#": data.trial.astype(str), "state": data.state, "backbone": data.backbone,
        **{k: [short(v) for v in data[k]] for k in keys},
        LABELS.get(metric, metric): [f3(x) for x in data.value],
        "duration": [seconds(x) for x in data.seconds],
        "pruned at": [pruned_where(f, e) for f, e in zip(data.pruned_at_fold, data.pruned_at_epoch)],
        "failure": ["" if isnan(x) else str(x)[:160] for x in data.fail_reason],
    })
    if len(set(data.run)) > 1:
        display["run"] = data.run
    maximize = coll.runs_of(dataset, study)[0].objective.get("direction", "maximize") == "maximize"
    bold = best_mask(data, display, {LABELS.get(metric, metric): ("value", "max" if maximize else "min")})
    caption = (f"Every finished trial of study {study}: the searched parameters (fields that differ between "
               f"trials), its {metric} ({cv_phrase(coll, dataset)}, mean over folds), duration, where a pruned trial "
               f"was cut (fold and epoch: its curve on the fold's inner validation split fell below the other "
               f"trials'; or a fold's end: its mean fold score did), and why a failed one failed.")
    return Table(slug("trials", dataset, study), f"{dataset} / {study}: trials", caption, data, display, bold)


def importances_table(dataset: str, study_name: str, importances: dict[str, float]) -> Table:
    data = pd.DataFrame({"dataset": dataset, "study": study_name, "parameter": list(importances),
                         "importance": [float(v) for v in importances.values()]})
    display = pd.DataFrame({"parameter": data.parameter, "importance": [f"{x:.3f}" for x in data.importance]})
    return Table(slug("importances", dataset, study_name), "Parameter importances",
                 "fANOVA importances (Optuna, seed 0) of the objective over the completed trials.", data, display)


# ---- 8. reproduce ------------------------------------------------------------------------------------------


def reproduce_table(coll: Collection, boards: dict[str, pd.DataFrame],
                    by: tuple[str, ...] = DEFAULT_BY) -> Table | None:
    rows = []
    by_flag = "" if by == DEFAULT_BY else f" --by {','.join(by)}"
    for dataset in sorted(boards):
        for r in boards[dataset].itertuples(index=False):
            path = shlex.quote(str(_run_path(coll, r.run)))
            rows.append({"dataset": dataset, "backbone": r.backbone, "study": r.study, "trial": r.trial,
                         "run": r.run, "cv_command": f"bench cv --from-trial {r.trial} --run {path}",
                         "test_command": f"bench final --run {path} --backbone {shlex.quote(r.backbone)}{by_flag}"})
    if not rows:
        return None
    data = pd.DataFrame(rows)
    display = pd.DataFrame({"dataset": data.dataset, "backbone": data.backbone,
                            "trial": [f"{s} #{t}" for s, t in zip(data.study, data.trial)],
                            "re-run its cross-validation": ["`" + c + "`" for c in data.cv_command],
                            "held-out evaluation": ["`" + c + "`" for c in data.test_command]})
    return Table("reproduce", "Reproduce every leaderboard model",
                 "`bench cv --from-trial` re-runs a trial exactly (same configuration, seed and folds) into a new "
                 "run directory; `bench final` refits it on all CV images and scores the held-out test set.",
                 data, display)

