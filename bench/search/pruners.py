"""Pruners that act at the settings users run: epoch curves inside folds, then fold scores.

Three to five folds are too few steps for a fold-level test to reach significance (Optuna's
exact Wilcoxon test has its smallest one-sided p at 1/2^n: 0.125 at 3 folds), so a trial also
reports its learning curve. One study holds two kinds of reports, told apart by the step:

    epoch steps   fold * EPOCH_STRIDE + epoch   the objective on the fold's *inner* validation
                                                split after that epoch (what early stopping reads)
    fold steps    FOLD_BASE + fold              the objective on the outer validation fold

A rule compares like with like only: an epoch step with the other trials' values at the same fold
and epoch (every trial of a study stops on the same inner split), a fold step with their fold
scores. Optuna's own pruners take every reported step as one curve and would mix the two, so
bench's rules read the steps themselves; each is a small subclass of ``StepPruner``.

And only trials of one *group*: the same leaderboard entry (backbone, or ``--by`` combination)
and the same training shape (epoch budget, head-only phase, schedule, warm-up). The objective
records it as the trial's user attribute ``prune_group`` before its first report. At a given
(fold, epoch) a fine-tuned ResNet50 at epoch 2 of 30 is no measure of a frozen EfficientNet at
epoch 2 of 10, nor a two-phase trial still training its head of one-phase trials, nor a warm-up
of a constant rate: held against each other, the slow starters were cut (a 12-trial smoke
search, 3 folds, pruned 9 of 12, every trial after the start-up ones). The head-only phase of a
two-phase trial is never pruned, under any rule.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from bench.errors import ConfigError, close_matches

EPOCH_STRIDE = 1000  # more epochs than any fold runs
FOLD_BASE = 1_000_000  # above every epoch step (fewer than 1000 folds)
GROUP_ATTR = "prune_group"  # the trial's user attribute: which trials it may be compared with


def epoch_step(fold: int, epoch: int) -> int:
    return fold * EPOCH_STRIDE + epoch


def fold_step(fold: int) -> int:
    return FOLD_BASE + fold


def prune_group(entry: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's group: its entry and the shape of its learning curve. Only trials with an equal
    group are compared (the dict is stored as JSON in the study, and compared as such)."""
    return {"entry": str(entry), "epochs": int(config["epochs"]), "head_epochs": int(config.get("head_epochs") or 0),
            "schedule": str(config.get("schedule")), "warmup_epochs": int(config.get("warmup_epochs") or 0)}


def describe_step(step: int) -> tuple[str, int, int]:
    """``("epoch", fold, epoch)`` or ``("fold", fold, -1)`` (0-based)."""
    if step >= FOLD_BASE:
        return "fold", step - FOLD_BASE, -1
    fold, epoch = divmod(step, EPOCH_STRIDE)
    return "epoch", fold, epoch


def _fold_scores(trial: FrozenTrial, upto: int) -> list[float] | None:
    """The trial's outer-fold scores for folds 0..upto, or None if it lacks one."""
    values = trial.intermediate_values
    steps = [fold_step(k) for k in range(upto + 1)]
    return [values[s] for s in steps] if all(s in values for s in steps) else None


def _best_in_fold(trial: FrozenTrial, fold: int, epoch: int, maximize: bool) -> float | None:
    """The best epoch value of ``fold`` up to ``epoch``: a dip after a good epoch is not held
    against a trial (early stopping would restore the good epoch anyway)."""
    values = [trial.intermediate_values.get(epoch_step(fold, e)) for e in range(epoch + 1)]
    values = [v for v in values if v is not None and math.isfinite(v)]
    if epoch_step(fold, epoch) not in trial.intermediate_values:
        return None
    if not values:
        return math.nan
    return max(values) if maximize else min(values)


class StepPruner(optuna.pruners.BasePruner):
    """Reads the last step and hands it to ``prune_epoch`` or ``prune_fold``."""

    peer_states: tuple[TrialState, ...] = (TrialState.COMPLETE,)

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None:
            return False
        maximize = study.direction == StudyDirection.MAXIMIZE
        # Trials without a group (studies written before groups, hand-made ones) form one group.
        group = trial.user_attrs.get(GROUP_ATTR)
        peers = [t for t in study.get_trials(deepcopy=False, states=self.peer_states)
                 if t.number != trial.number and t.user_attrs.get(GROUP_ATTR) == group]
        kind, fold, epoch = describe_step(step)
        if kind == "fold":
            return self.prune_fold(trial, peers, fold, maximize)
        if epoch < int((group or {}).get("head_epochs", 0)):
            return False  # the head-only phase: the backbone has not started to learn yet
        return self.prune_epoch(trial, peers, fold, epoch, maximize)

    def prune_epoch(self, trial: FrozenTrial, peers: list[FrozenTrial], fold: int, epoch: int, maximize: bool) -> bool:
        return False

    def prune_fold(self, trial: FrozenTrial, peers: list[FrozenTrial], fold: int, maximize: bool) -> bool:
        return False


def _worse(value: float, reference: float, maximize: bool) -> bool:
    return value < reference if maximize else value > reference


class CurveMedianPruner(StepPruner):
    """Prune a trial whose curve is below the median of its group's finished trials at the same point.

    Epoch steps: the trial's best inner-validation value so far in this fold against the median
    of its group's completed trials' at the same fold and epoch; in the first fold only once
    ``first_fold_share`` of its epochs ran (half: a curve that rises late is given its chance),
    in later folds from epoch ``warmup_epochs + 1``. Fold steps: the mean of its outer-fold scores
    so far against the group's completed trials' means over the same folds. Acts once
    ``n_startup_trials`` completed trials of the group reached that point: at 3 folds and 3
    epochs a trial below its group's median is cut after its second epoch.
    """

    def __init__(self, n_startup_trials: int = 3, warmup_epochs: int = 1, first_fold_share: float = 0.5) -> None:
        if not 0.0 <= first_fold_share <= 1.0:
            raise ConfigError(f"first_fold_share must be a share of the first fold's epochs in [0, 1], "
                              f"got {first_fold_share!r}.")
        self.n_startup_trials = n_startup_trials
        self.warmup_epochs = warmup_epochs
        self.first_fold_share = first_fold_share

    def _too_early(self, trial: FrozenTrial, fold: int, epoch: int) -> bool:
        budget = (trial.user_attrs.get(GROUP_ATTR) or {}).get("epochs")
        # The epoch as a share of the trial's own budget: epoch 2 is early for 30, late for 3.
        return fold == 0 and budget is not None and epoch + 1 < math.ceil(self.first_fold_share * int(budget))

    def prune_epoch(self, trial: FrozenTrial, peers: list[FrozenTrial], fold: int, epoch: int, maximize: bool) -> bool:
        if epoch < self.warmup_epochs:
            return False
        mine = _best_in_fold(trial, fold, epoch, maximize)
        if mine is None:
            return False
        if math.isnan(mine):
            return True  # nothing finite so far: a diverged trial, whatever its peers
        if self._too_early(trial, fold, epoch):
            return False
        others = [v for t in peers if (v := _best_in_fold(t, fold, epoch, maximize)) is not None and math.isfinite(v)]
        return len(others) >= self.n_startup_trials and _worse(mine, float(np.median(others)), maximize)

    def prune_fold(self, trial: FrozenTrial, peers: list[FrozenTrial], fold: int, maximize: bool) -> bool:
        mine = _fold_scores(trial, fold)
        if mine is None or not all(math.isfinite(v) for v in mine):
            return False
        others = [float(np.mean(s)) for t in peers if (s := _fold_scores(t, fold)) is not None]
        others = [v for v in others if math.isfinite(v)]
        return len(others) >= self.n_startup_trials and _worse(float(np.mean(mine)), float(np.median(others)), maximize)


class CurveHalvingPruner(StepPruner):
    """Asynchronous successive halving on the first fold's epoch curve.

    Rungs at epochs ``min_epochs * reduction_factor**r`` (1, 3, 9, ... epochs) of fold 1: a trial
    goes on only if its value there is in the best ``1/reduction_factor`` of every trial (finished,
    pruned or running) that reached the rung, once ``reduction_factor`` trials have. Later folds
    are not pruned: by then the trial has shown it belongs to the top of the curve race.
    """

    peer_states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)

    def __init__(self, min_epochs: int = 1, reduction_factor: int = 3) -> None:
        self.min_epochs = min_epochs
        self.reduction_factor = reduction_factor

    def _is_rung(self, epochs_done: int) -> bool:
        r = self.min_epochs
        while r < epochs_done:
            r *= self.reduction_factor
        return r == epochs_done

    def prune_epoch(self, trial: FrozenTrial, peers: list[FrozenTrial], fold: int, epoch: int, maximize: bool) -> bool:
        if fold != 0 or not self._is_rung(epoch + 1):
            return False
        step = epoch_step(0, epoch)
        mine = trial.intermediate_values[step]
        if not math.isfinite(mine):
            return True
        values = [mine] + [v for t in peers if (v := t.intermediate_values.get(step)) is not None and math.isfinite(v)]
        if len(values) < self.reduction_factor:
            return False
        ranked = sorted(values, reverse=maximize)
        keep = max(1, len(values) // self.reduction_factor)
        return _worse(mine, ranked[keep - 1], maximize)


class FoldWilcoxonPruner(StepPruner):
    """Optuna's Wilcoxon rule on outer-fold scores only: prune when this trial's fold scores are
    worse than the best completed trial's on the same folds with one-sided exact p < p_threshold.

    The exact test's smallest p is 1/2^n for n folds: at 3 folds (0.125) it can never prune at
    p_threshold 0.1; at 5 folds only a trial that lost each of its first four folds. Meant for
    10-fold CV or repeated folds; ``median`` is the default for that reason.
    """

    def __init__(self, p_threshold: float = 0.1, n_startup_steps: int = 2) -> None:
        self.p_threshold = p_threshold
        self.n_startup_steps = n_startup_steps

    def prune_fold(self, trial: FrozenTrial, peers: list[FrozenTrial], fold: int, maximize: bool) -> bool:
        from scipy.stats import wilcoxon

        mine = _fold_scores(trial, fold)
        scored = [t for t in peers if t.value is not None and _fold_scores(t, fold) is not None]
        if mine is None or fold + 1 < self.n_startup_steps or not scored:
            return False
        best = (max if maximize else min)(scored, key=lambda t: t.value)
        diff = np.asarray(mine) - np.asarray(_fold_scores(best, fold))
        if not np.all(np.isfinite(diff)) or np.all(diff == 0):
            return False
        p = wilcoxon(diff, alternative="less" if maximize else "greater", zero_method="zsplit").pvalue
        return bool(p < self.p_threshold)


DEFAULT_PRUNER = "none"

PRUNERS: dict[str, tuple[Callable[[], optuna.pruners.BasePruner], str]] = {
    "median": (CurveMedianPruner,
               "a trial below the median of the finished trials of its group (same entry, epochs, "
               "head-only phase, schedule and warm-up), on an epoch of any fold (inner validation split; in "
               "the first fold from half its epochs, never in a head-only phase) or on its mean fold score "
               "so far; acts after 3 finished trials of the group"),
    "halving": (CurveHalvingPruner,
                "successive halving on the first fold's epochs 1, 3, 9, ...: only the best third go on"),
    "wilcoxon": (FoldWilcoxonPruner,
                 "fold scores against the best trial's, exact Wilcoxon p < 0.1: never prunes at 3 folds "
                 "(smallest p 0.125), at 5 folds only after four lost folds; for 10 folds"),
    # The default: scripts/bench_pruning.py (3 seeds, real X-rays) found no pruner that reaches the
    # unpruned search's best sooner at equal wall time (docs/searching.md, scripts/results/).
    "none": (optuna.pruners.NopPruner, "default: every trial runs all its folds"),
}


# Pruners that compare outer-fold scores only: with one scored split (--validation holdout or
# official) they have nothing to compare (FoldWilcoxonPruner would never prune).
FOLD_ONLY = ("wilcoxon",)


def make_pruner(name: str, folds: int | None = None) -> optuna.pruners.BasePruner:
    """The pruner ``name``; ``folds`` (when known) refuses a fold-score rule on a single split."""
    if name not in PRUNERS:
        raise ConfigError(f"Unknown pruner '{name}'.{close_matches(name, PRUNERS)} Allowed: {', '.join(PRUNERS)}.")
    if folds == 1 and name in FOLD_ONLY:
        raise ConfigError(f"--pruner {name} compares fold scores, and --validation holdout/official scores one split: "
                          f"it would never prune. Use --pruner median or halving (they read the epochs).")
    return PRUNERS[name][0]()
