"""Trial -> configuration -> the saved folds -> mean of the objective over folds.

The pruner sees the trial's learning curve (the objective on each fold's inner validation split
after every epoch) and each outer fold's score as it finishes, at the steps laid out in
``bench.search.pruners``. All metrics of every fold go into the trial's user attributes and,
through ``cross_validate``, into the run directory, so a pruned trial keeps the folds it completed.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import optuna

from bench.errors import BenchError
from bench.evaluation.grouping import DEFAULT_BY, Grouping
from bench.results import RunDir
from bench.search.pruners import GROUP_ATTR, epoch_step, fold_step, prune_group
from bench.training.experiment import FoldScore, PreparedData, cross_validate

Event = Callable[[str, dict[str, Any]], None]


class TrialFailed(Exception):
    """A trial that cannot give a score (NaN loss, non-finite predictions, a bad value)."""


class SurplusTrial(TrialFailed):
    """Two workers asked for the last trial of the budget at the same moment; the later one
    (higher trial number) steps back before training so that --trials is met exactly."""


SURPLUS_REASON = "surplus: the budget was already taken by other workers (not a failure)"


def trials_ahead(trial: optuna.Trial) -> int:
    """Trials with a lower number that are finished or running: this trial's place in the budget."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return sum(1 for t in trial.study.get_trials(deepcopy=False, states=states) if t.number < trial.number)


def trial_seed(study_seed: int, number: int) -> int:
    """Each trial's seed derives from the study seed and the trial number: re-runnable exactly."""
    return (study_seed * 1_000_003 + number * 7_919 + 17) % (2**31 - 1)


def config_from_values(values: dict[str, Any], seed: int) -> Any:
    from bench.training.train import TrainConfig

    values = dict(values)
    if values.get("weights") in ("none", "random"):
        values["weights"] = None
    return TrainConfig(**values, seed=seed)


def summarize_folds(scores: list[FoldScore], metric: str) -> dict[str, Any]:
    ok = [s for s in scores if s.status == "ok"]
    names = sorted({m for s in ok for m in s.metrics})
    mean = {m: float(np.nanmean([s.metrics[m] for s in ok])) if ok else math.nan for m in names}
    std = {m: float(np.nanstd([s.metrics[m] for s in ok], ddof=1)) if len(ok) > 1 else math.nan for m in names}
    return {
        "fold_values": [s.metrics.get(metric, math.nan) for s in ok],
        "cv_mean": mean,
        "cv_std": std,
        "folds_done": len(ok),
        "seconds_per_epoch": float(np.mean([s.info["seconds_per_epoch"] for s in ok])) if ok else math.nan,
        "images_per_second": float(np.mean([s.info["images_per_second"] for s in ok])) if ok else math.nan,
        "total_params": ok[0].info["total_params"] if ok else None,
        "trainable_params": ok[0].info["trainable_params"] if ok else None,
    }


def make_objective(
    data_for: Callable[[int | None], PreparedData],
    space: Any,
    run: RunDir,
    *,
    study_seed: int,
    fixed: dict[str, Any] | None = None,
    on_event: Event | None = None,
    budget: int | None = None,
    by: tuple[str, ...] = DEFAULT_BY,
    gate: Any = None,
) -> Callable[[optuna.Trial], float]:
    """The function ``study.optimize`` calls; ``on_event`` feeds the progress display; ``by``
    names the leaderboard's entries, within which (and within one training shape) the pruner
    compares trials; ``gate`` (a ``bench.search.gate.StageGate``) is the stage of a ``--time-limit``
    search: what it pins, and whether the trial can finish in it."""
    emit = on_event or (lambda kind, payload: None)
    metric = space.metric
    grouping = Grouping(by)

    def objective(trial: optuna.Trial) -> float:
        try:
            return run_trial(trial)
        except (optuna.TrialPruned, TrialFailed):
            raise
        except Exception as err:
            # Out-of-memory, a framework error, a bug: the trial fails with its reason and the
            # search goes on (the worker that ran it is then replaced).
            trial.set_user_attr("fail_reason", f"{type(err).__name__}: {err}"[:2000])
            raise

    def run_trial(trial: optuna.Trial) -> float:
        t0 = time.perf_counter()
        trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": os.getpid()})
        if budget is not None and trials_ahead(trial) >= budget:
            trial.set_user_attr("fail_reason", SURPLUS_REASON)
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(SURPLUS_REASON)
        try:
            if gate is not None:
                trial.set_user_attr("stage", gate.stage)
            values = space.suggest(trial, gate.fixed_for(trial, space, fixed or {}) if gate is not None else fixed)
            config = config_from_values(values, trial_seed(study_seed, trial.number))
        except BenchError as err:
            trial.set_user_attr("fail_reason", str(err))
            raise TrialFailed(str(err)) from None
        refused = gate.refuse(trial, config.to_dict()) if gate is not None else None
        if refused:
            # Recorded like a surplus trial (no count sees it), with the prediction that stopped it.
            trial.set_user_attr("fail_reason", refused)
            trial.set_user_attr("surplus", True)
            trial.set_user_attr("over_budget", True)
            raise SurplusTrial(refused)
        trial.set_user_attr("config", config.to_dict())
        # Before the first report: the pruner reads it to choose the trials this one is held against.
        trial.set_user_attr(GROUP_ATTR, prune_group(grouping.label(config.to_dict()), config.to_dict()))
        run.write_config(trial.number, config.to_dict())
        data = data_for(config.size)
        emit("trial_start", {"number": trial.number, "backbone": config.backbone, "folds": data.splits.folds,
                             "config": config.to_dict()})
        pruned_at: list[tuple[int, int]] = []  # (fold, epoch) of the cut; epoch -1 at a fold's end

        def on_fold(score: FoldScore) -> None:
            if score.status != "ok":
                return
            value = score.metrics.get(metric, math.nan)
            trial.report(value, step=fold_step(score.fold))
            emit("fold", {"number": trial.number, "fold": score.fold, "value": value})

        def stop_after(score: FoldScore) -> bool:
            if score.status != "ok":
                return True
            if trial.should_prune():
                pruned_at.append((score.fold, -1))
                return True
            return False

        def on_epoch(fold: int, epoch: int, logs: dict[str, float]) -> str | None:
            emit("epoch", {"number": trial.number, "fold": fold, "epoch": epoch, "epochs": config.epochs})
            value = logs.get(f"val_{metric}")
            if value is None:  # no inner validation split: nothing to judge the curve on
                return None
            trial.report(value, step=epoch_step(fold, epoch))
            if trial.should_prune():
                pruned_at.append((fold, epoch))
                return f"pruned at epoch {epoch + 1}"
            return None

        scores = cross_validate(data, config, run, trial=trial.number, on_fold=on_fold,
                                stop_after_fold=stop_after, on_epoch=on_epoch, epoch_metrics=(metric,))
        summary = summarize_folds(scores, metric)
        summary["seconds"] = round(time.perf_counter() - t0, 2)
        for key, value in summary.items():
            trial.set_user_attr(key, value)
        failed = [] if pruned_at else [s for s in scores if s.status != "ok"]
        if failed:
            reason = f"fold {failed[0].fold + 1}: {failed[0].status}"
            trial.set_user_attr("fail_reason", reason)
            raise TrialFailed(reason)
        if pruned_at:
            fold, epoch = pruned_at[0]
            trial.set_user_attr("pruned_at_fold", fold)
            trial.set_user_attr("pruned_at_epoch", epoch)
            where = f"fold {fold + 1}" + (f", epoch {epoch + 1}" if epoch >= 0 else " (its end)")
            raise optuna.TrialPruned(f"pruned in {where}")
        value = float(np.mean(summary["fold_values"]))
        if not math.isfinite(value):
            trial.set_user_attr("fail_reason", f"objective {metric} is undefined on these folds")
            raise TrialFailed(f"objective {metric} is NaN")
        return value

    return objective
