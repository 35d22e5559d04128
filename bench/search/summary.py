"""The ranked summary a search ends with: the best trial of each backbone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

KEY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity", "mcc")


def best_per_backbone(study: Any) -> list[Any]:
    """The best COMPLETE trial of each backbone, best first."""
    maximize = study.direction.name == "MAXIMIZE"
    best: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.value is None or math.isnan(t.value):
            continue
        backbone = (t.user_attrs.get("config") or {}).get("backbone") or t.params.get("backbone", "?")
        current = best.get(backbone)
        if current is None or (t.value > current.value if maximize else t.value < current.value):
            best[backbone] = t
    return sorted(best.values(), key=lambda t: t.value, reverse=maximize)


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if std is None or math.isnan(std):
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {std:.3f}"


def _best_table(data: Any, metric: str, rows: list[dict[str, Any]]) -> Any:
    """The ranked table; each row: backbone, number, cv_mean, cv_std, seconds_per_epoch, total_params."""
    from rich.table import Table

    n_cv = int(data.splits.cv.sum())
    table = Table(title=(f"Best trial per backbone on {data.spec.name}: {data.splits.folds}-fold CV mean ± std over "
                         f"validation folds of {n_cv} images (held-out test of {int(data.splits.test.sum())} "
                         f"images not used)"), title_justify="left")
    for col in ("rank", "backbone", "trial", f"{metric} (objective)", *[m for m in KEY_METRICS if m != metric],
                "s/epoch", "params"):
        table.add_column(col.replace("_", " "), justify="right" if col not in ("backbone",) else "left")
    for rank, r in enumerate(rows, start=1):
        mean, std = r.get("cv_mean") or {}, r.get("cv_std") or {}
        params = r.get("total_params")
        seconds = r.get("seconds_per_epoch")
        table.add_row(
            str(rank), r.get("backbone") or "?", str(r["number"]), _pm(mean.get(metric), std.get(metric)),
            *[_pm(mean.get(m), std.get(m)) for m in KEY_METRICS if m != metric],
            f"{float('nan') if seconds is None else seconds:.1f}",
            f"{params / 1e6:.1f} M" if params else "-",
        )
    return table


def print_summary(console: Any, study: Any, run_dir: Path, storage: str, data: Any, metric: str) -> None:
    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(1 for t in trials if t.state == s and not t.user_attrs.get("surplus"))
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    rows = [{"backbone": (t.user_attrs.get("config") or {}).get("backbone", "?"), "number": t.number,
             "cv_mean": t.user_attrs.get("cv_mean", {}), "cv_std": t.user_attrs.get("cv_std", {}),
             "seconds_per_epoch": t.user_attrs.get("seconds_per_epoch", float("nan")),
             "total_params": t.user_attrs.get("total_params")} for t in best_per_backbone(study)]
    console.print(_best_table(data, metric, rows))
    from bench.search.allocation import entry_counts, study_by

    entries = entry_counts(trials, study_by(study.user_attrs))
    console.print(
        f"trials: {counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
        f"{counts[TrialState.FAIL]} failed, {counts[TrialState.RUNNING]} running | study '{study.study_name}' "
        f"in {storage}, allocation {study.user_attrs.get('allocation', 'sampler')}\n"
        + "".join(f"  {name}: {c.text()} (complete/pruned/failed, trial-seconds)\n" for name, c in entries.items())
        + f"run directory: {run_dir}"
    )


# ---- from the run directory (any engine) ----------------------------------------------------


def finished_trials(run: Any) -> Any:
    """trials.csv with one row per trial number (the last one written wins), in number order."""
    trials = run.table("trials")
    if trials.empty:
        return trials
    return trials.drop_duplicates("number", keep="last").sort_values("number").reset_index(drop=True)


def best_per_backbone_in_run(run: Any, metric: str, direction: str) -> list[dict[str, Any]]:
    """The best COMPLETE trial of each backbone from trials.csv, best first, with its fold statistics
    recomputed from folds.csv and metrics.csv exactly as the Optuna objective computes them."""
    from bench.search.objective import summarize_folds
    from bench.training.experiment import FoldScore

    trials = finished_trials(run)
    if trials.empty:
        return []
    done = trials[(trials.state == "COMPLETE") & trials.value.notna()]
    maximize = direction == "maximize"
    best: dict[str, Any] = {}
    for row in done.itertuples(index=False):
        value = float(row.value)
        if math.isnan(value):
            continue
        current = best.get(row.backbone)
        if current is None or (value > current.value if maximize else value < current.value):
            best[row.backbone] = row
    folds, metrics = run.table("folds"), run.table("metrics")
    out = []
    for row in sorted(best.values(), key=lambda r: float(r.value), reverse=maximize):
        scores = []
        for f in folds[folds.trial == row.number].itertuples(index=False):
            values = metrics[(metrics.trial == row.number) & (metrics.fold == f.fold)]
            scores.append(FoldScore(int(f.fold), str(f.status), dict(zip(values.metric, values.value.astype(float))),
                                    {k: getattr(f, k, math.nan) for k in ("seconds_per_epoch", "images_per_second",
                                                                           "total_params", "trainable_params")}))
        stats = summarize_folds(scores, metric)
        out.append({"number": int(row.number), "backbone": row.backbone, "value": float(row.value), **stats})
    return out


def print_run_summary(console: Any, run: Any, data: Any, metric: str, direction: str, where: str) -> None:
    """The same ranked table as ``print_summary``, built from a run directory's records (trials.csv,
    folds.csv, metrics.csv) instead of an Optuna study; ``where`` names the engine and its state."""
    console.print(_best_table(data, metric, best_per_backbone_in_run(run, metric, direction)))
    trials = finished_trials(run)
    states = trials.state.value_counts().to_dict() if not trials.empty else {}
    console.print(
        f"trials: {states.get('COMPLETE', 0)} complete, {states.get('PRUNED', 0)} pruned, "
        f"{states.get('FAIL', 0)} failed | {where}\nrun directory: {run.path}"
    )
