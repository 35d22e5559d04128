"""Tables of one model (confusion matrix, per-class scores), of the search (trials, parameter importances) and the commands that reproduce a report's rows."""

from __future__ import annotations

import json
import math
import shlex
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bench import metrics as M
from bench.evaluation.grouping import DEFAULT_BY
from bench.report.cells import (
    LABELS,
    Table,
    best_mask,
    count,
    f3,
    isnan,
    pruned_where,
    seconds,
    short,
    slug,
)
from bench.report.collect import (
    Collection,
    proba_matrix,
)
from bench.report.facts import (
    cv_phrase,
    entry_rows,
    identity,
    params_of,
    run_path,
    test_phrase,
    trial_rows,
    trials_of,
    with_identity,
)

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
    identity: dict[str, Any] = field(default_factory=dict)  # the row's identity columns (facts.identity)


def model_eval(coll: Collection, dataset: str, row: Any) -> ModelEval | str:
    classes = coll.classes(dataset)
    if len(classes) < 2:
        return "the manifest lists no classes"
    tp = coll.test_predictions
    if not tp.empty:
        sub = entry_rows(tp, dataset, row)
        if len(sub):
            y, p = proba_matrix(sub, classes)
            return ModelEval(dataset, row.key, row.study, row.run, int(row.trial), "test",
                             test_phrase(len(sub)), y, p, classes, coll.positive_index(dataset), identity(row))
    pr = trial_rows(coll.predictions, dataset, row.study, row.trial)
    if pr.empty:
        return "no predictions: neither test_predictions.csv nor predictions.csv holds this trial"
    y, p = proba_matrix(pr, classes)
    k = pr.fold.nunique()
    return ModelEval(dataset, row.key, row.study, row.run, int(row.trial), "oof",
                     f"out-of-fold predictions, {k} validation folds, {count(len(pr))} images", y, p, classes,
                     coll.positive_index(dataset), identity(row))


def confusion_table(ev: ModelEval) -> Table:
    cm = M.confusion(ev.y, ev.proba, len(ev.classes))
    norm = M.normalize_rows(cm)
    data = with_identity(pd.DataFrame([{"truth": t, "predicted": p, "count": int(cm[i, j]),
                                        "row_fraction": float(norm[i, j])}
                                       for i, t in enumerate(ev.classes) for j, p in enumerate(ev.classes)]),
                         ev.identity)
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
    data = with_identity(M.per_class_table(ev.y, ev.proba, ev.classes), ev.identity)
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
            path = shlex.quote(str(run_path(coll, r.run)))
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
