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


def print_summary(console: Any, study: Any, run_dir: Path, storage: str, data: Any, metric: str) -> None:
    from rich.table import Table

    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(1 for t in trials if t.state == s and not t.user_attrs.get("surplus"))
              for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)}
    n_cv = int((~data.splits.test).sum())
    table = Table(title=(f"Best trial per backbone on {data.spec.name}: {data.splits.folds}-fold CV mean ± std over "
                         f"validation folds of {n_cv} images (held-out test of {int(data.splits.test.sum())} "
                         f"images not used)"), title_justify="left")
    for col in ("rank", "backbone", "trial", f"{metric} (objective)", *[m for m in KEY_METRICS if m != metric],
                "s/epoch", "params"):
        table.add_column(col.replace("_", " "), justify="right" if col not in ("backbone",) else "left")
    for rank, t in enumerate(best_per_backbone(study), start=1):
        mean, std = t.user_attrs.get("cv_mean", {}), t.user_attrs.get("cv_std", {})
        cfg = t.user_attrs.get("config") or {}
        params = t.user_attrs.get("total_params")
        table.add_row(
            str(rank), cfg.get("backbone", "?"), str(t.number), _pm(mean.get(metric), std.get(metric)),
            *[_pm(mean.get(m), std.get(m)) for m in KEY_METRICS if m != metric],
            f"{t.user_attrs.get('seconds_per_epoch', float('nan')):.1f}",
            f"{params / 1e6:.1f} M" if params else "-",
        )
    console.print(table)
    console.print(
        f"trials: {counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
        f"{counts[TrialState.FAIL]} failed, {counts[TrialState.RUNNING]} running | study '{study.study_name}' "
        f"in {storage}\nrun directory: {run_dir}"
    )
