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
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from bench.errors import ConfigError, close_matches

EPOCH_STRIDE = 1000  # more epochs than any fold runs
FOLD_BASE = 1_000_000  # above every epoch step (fewer than 1000 folds)


def epoch_step(fold: int, epoch: int) -> int:
    return fold * EPOCH_STRIDE + epoch


def fold_step(fold: int) -> int:
    return FOLD_BASE + fold


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
        peers = [t for t in study.get_trials(deepcopy=False, states=self.peer_states) if t.number != trial.number]
        kind, fold, epoch = describe_step(step)
        if kind == "fold":
            return self.prune_fold(trial, peers, fold, maximize)
        return self.prune_epoch(trial, peers, fold, epoch, maximize)

    def prune_epoch(self, trial: FrozenTrial, peers: list[FrozenTrial], fold: int, epoch: int, maximize: bool) -> bool:
        return False

    def prune_fold(self, trial: FrozenTrial, peers: list[FrozenTrial], fold: int, maximize: bool) -> bool:
        return False


def _worse(value: float, reference: float, maximize: bool) -> bool:
    return value < reference if maximize else value > reference


class CurveMedianPruner(StepPruner):
    """Prune a trial whose curve is below the median of the finished trials at the same point.

    Epoch steps: the trial's best inner-validation value so far in this fold against the median
    of the completed trials' at the same fold and epoch, from epoch ``warmup_epochs + 1`` of every
    fold on. Fold steps: the mean of its outer-fold scores so far against the completed trials'
    means over the same folds. Acts once ``n_startup_trials`` completed trials reached that point:
    at 3 folds and 3 epochs a trial below the median is cut after its second epoch.
    """

    def __init__(self, n_startup_trials: int = 3, warmup_epochs: int = 1) -> None:
        self.n_startup_trials = n_startup_trials
        self.warmup_epochs = warmup_epochs

    def prune_epoch(self, trial: FrozenTrial, peers: list[FrozenTrial], fold: int, epoch: int, maximize: bool) -> bool:
        if epoch < self.warmup_epochs:
            return False
        mine = _best_in_fold(trial, fold, epoch, maximize)
        if mine is None:
            return False
        if math.isnan(mine):
            return True  # nothing finite so far: a diverged trial
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


PRUNERS: dict[str, tuple[Callable[[], optuna.pruners.BasePruner], str]] = {
    "median": (CurveMedianPruner,
               "default: a trial below the median of the finished trials, on an epoch of any fold (inner "
               "validation split, from the second epoch) or on its mean fold score so far; acts after 3 "
               "finished trials"),
    "halving": (CurveHalvingPruner,
                "successive halving on the first fold's epochs 1, 3, 9, ...: only the best third go on"),
    "wilcoxon": (FoldWilcoxonPruner,
                 "fold scores against the best trial's, exact Wilcoxon p < 0.1: never prunes at 3 folds "
                 "(smallest p 0.125), at 5 folds only after four lost folds; for 10 folds"),
    "none": (optuna.pruners.NopPruner, "every trial runs all its folds"),
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
