"""A stage of a ``--time-limit`` search, as a worker sees it: what the stage pins for a trial, and
whether the trial can finish before the stage's deadline (``bench.search.cost`` predicts it).

A trial that cannot finish is not trained: it is recorded as a surplus trial (FAIL with the
``surplus`` attribute, which no count sees) with ``over_budget`` and a reason that says why, and
its worker leaves the stage.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bench.search.cost import predict, trial_costs
from bench.search.plan import Clock, can_start, heads_fixed, stage


class OverBudget(Exception):
    """The trial is predicted not to finish within its stage: not started."""


@dataclass(frozen=True)
class StageGate:
    stage: str
    deadline: float  # on ``clock`` (time.monotonic: one clock for every process on the machine)
    folds: int
    pretrained: frozenset[str] = frozenset()  # backbones with ImageNet weights in this space
    probes: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # per backbone: probe cost record
    cv_images: int = 0
    clock: Clock = time.monotonic

    def fixed_for(self, trial: Any, space: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
        """The pinned values of this trial: the command line's, plus the stage's for its backbone."""
        if not stage(self.stage).fixed:
            return dict(fixed)
        backbone = fixed.get("backbone")
        if backbone is None and "backbone" in space and space.param("backbone").kind == "categorical":
            # Asked first to know what to pin; the space's own suggestion returns this same value.
            backbone = trial.suggest_categorical("backbone", list(space.param("backbone").choices or ()))
        return heads_fixed(fixed, backbone in self.pretrained)

    def refuse(self, trial: Any, config: Mapping[str, Any]) -> str | None:
        """None if the trial may start; else the reason it does not (recorded on the trial)."""
        costs = trial_costs(trial.study.get_trials(deepcopy=False))
        predicted = predict(costs, config, self.folds, self.stage, self.probes.get(str(config.get("backbone"))),
                            self.cv_images)
        if predicted is not None:
            trial.set_user_attr("predicted_seconds", round(predicted, 1))
        ok, reason = can_start(predicted, self.deadline, self.clock(), self.stage)
        return None if ok else reason


def pretrained_backbones(space: Any, fixed: Mapping[str, Any]) -> list[str]:
    """The backbones whose trials load ImageNet weights in this space (with these pinned values)."""
    backbones = space._possible("backbone", dict(fixed)) or []
    if "imagenet" not in (space._possible("weights", dict(fixed)) or []):
        return []
    return [str(b) for b in space._weighted(list(backbones), dict(fixed))]
