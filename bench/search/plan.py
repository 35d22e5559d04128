"""``bench run --time-limit``: the staged plan that spends cheap work first. Pure logic, no framework.

A budget in wall time is cut into stages that run in order inside one study (docs/searching.md
gives the measurements the shares come from):

1. ``probe``: a linear probe and kNN on each ImageNet backbone's frozen features (one forward pass);
2. ``heads``: cached-feature head trials (frozen backbone, no augmentation) for every backbone;
3. ``finetune``: the space as written, for the backbones the cheap stages ranked highest;

and then ``bench final``, whose time is reserved from the start (``final_reserve``). A stage ends
at its share of the budget left after that reserve (``Plan.stage_end``), when no trial of it fits
any more (``can_start``), or at ``--trials``.

Time is counted on a ``Clock`` (a callable returning seconds, ``time.monotonic`` in use; tests pass
a fake one). The study stores the seconds spent before this session, so a resumed search continues
the same clock.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

Clock = Callable[[], float]


@dataclass(frozen=True)
class Stage:
    name: str
    end: float  # where the stage ends, as a fraction of the budget after the final's reserve (cumulative)
    help: str
    fixed: Mapping[str, Any] = field(default_factory=dict)  # pinned for backbones with pretrained weights
    promote: bool = False  # only the backbones the earlier stages ranked highest compete
    trials: bool = True  # False: not Optuna trials (the probes)


# Cached heads cost one feature pass per backbone and then seconds: a frozen, unaugmented trial
# with no head phase takes the cached path (bench.training.features.eligible).
HEADS_FIXED: Mapping[str, Any] = {"unfrozen": 0, "augment": "none", "head_epochs": 0}

STAGES: tuple[Stage, ...] = (
    Stage("probe", 0.10, "linear probe and kNN on each ImageNet backbone's frozen features", trials=False),
    Stage("heads", 0.45, "cached-feature heads (frozen backbone, no augmentation) for every backbone",
          fixed=HEADS_FIXED),
    Stage("finetune", 1.0, "the whole space (unfrozen blocks, augmentation) for the promoted backbones",
          promote=True),
)
STAGE_NAMES = tuple(s.name for s in STAGES)

# The held-out step: a fresh process (framework import, data preparation) plus each refit. Before
# any trial has measured a refit, this share of the budget is kept for it.
DEFAULT_RESERVE_SHARE = 0.2
# Measured on pneumonia-demo (smoke space, 3 folds, 2 cores): the held-out step of 3 backbones took
# 86 s, of which the refits' own training about 33 s. The rest is a process start (framework import,
# data) and, per model, building and tracing it, predicting the test set, bootstrap CIs, calibration
# and the explanation grid.
FINAL_FIXED_SECONDS = 20.0
FINAL_PER_MODEL_SECONDS = 12.0
PROMOTE_FRACTION = 0.5  # the top ceil(n/2) backbones go on to fine-tuning


def stage(name: str) -> Stage:
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(name)


@dataclass(frozen=True)
class Plan:
    """The budget of one session: ``limit`` seconds in all, ``spent`` before this session began at
    ``started`` on ``clock``."""

    limit: float
    spent: float
    started: float
    clock: Clock

    def spent_now(self) -> float:
        return self.spent + (self.clock() - self.started)

    def left(self) -> float:
        return self.limit - self.spent_now()

    def stage_end(self, name: str, reserve: float) -> float:
        """Budget seconds at which stage ``name`` ends: its share of what the final leaves."""
        return stage(name).end * max(self.limit - reserve, 0.0)

    def deadline(self, name: str, reserve: float) -> float:
        """The same moment on ``clock`` (``time.monotonic`` is system-wide on Linux: workers compare it)."""
        return self.started + self.stage_end(name, reserve) - self.spent

    def current(self, done: Sequence[str], reserve: float) -> str | None:
        """The first stage not done whose end is still ahead; None when the plan is over."""
        spent = self.spent_now()
        for s in STAGES:
            if s.name not in done and spent < self.stage_end(s.name, reserve):
                return s.name
        return None


def can_start(predicted: float | None, deadline: float, now: float, stage_name: str) -> tuple[bool, str]:
    """Whether a trial predicted to take ``predicted`` seconds ends by ``deadline``; the reason if not.

    No prediction (nothing measured yet to predict from) starts: that trial is the measurement."""
    left = deadline - now
    if left <= 0:
        return False, f"not started: no time left in stage {stage_name}"
    if predicted is None or predicted <= left:
        return True, ""
    return False, f"not started: predicted {predicted:.0f} s, {left:.0f} s left in stage {stage_name}"


@dataclass(frozen=True)
class TrialCost:
    """What one finished trial measured (its user attributes), as the plan and the cost model read it."""

    backbone: str
    stage: str | None
    seconds: float
    units: int  # epochs (head phase included) x folds trained
    size: int
    value: float | None  # the CV objective, complete trials only
    folds_done: int


def final_reserve(trials: Sequence[TrialCost], folds: int, limit: float, maximize: bool = True) -> float:
    """Seconds kept for ``bench final``: per backbone, its best trial's refit on the whole CV pool
    (a fold's seconds x k/(k-1), as the refit trains on all k folds' images) and its fixed cost, plus
    the held-out step's own. Before any trial is complete, ``DEFAULT_RESERVE_SHARE`` of the limit."""
    best: dict[str, TrialCost] = {}
    for t in trials:
        if t.value is None or not math.isfinite(t.value) or t.folds_done < 1:
            continue
        held = best.get(t.backbone)
        if held is None or (t.value > held.value if maximize else t.value < held.value):  # type: ignore[operator]
            best[t.backbone] = t
    if not best:
        return DEFAULT_RESERVE_SHARE * limit
    scale = folds / (folds - 1) if folds > 1 else 1.0
    refits = sum(t.seconds / t.folds_done * scale for t in best.values())
    return FINAL_FIXED_SECONDS + FINAL_PER_MODEL_SECONDS * len(best) + refits


def promote(scores: Mapping[str, float], pretrained: Collection[str] = (), fraction: float = PROMOTE_FRACTION,
            maximize: bool = True) -> list[str]:
    """The backbones that go on to fine-tuning, in rank order (``best_scores``): the top
    ceil(n x fraction) of all, and the top ceil(m x fraction) of the ``m`` pretrained ones.

    Why the second list: the cheap stages score a pretrained backbone frozen (a lower bound of what
    fine-tuning gives it) but a random-init one trained whole, so across the two kinds the ranking
    is unfair to the pretrained. Measured on the 976 real X-rays (20-minute budget, seed 0): the
    scratch CNN's whole-network heads trials (0.944) outranked ImageNet Lite0's probe (0.920) and
    frozen heads (0.877), the top half of two was the CNN alone, and Lite0 (0.916 fine-tuned under
    plain TPE) was never fine-tuned. Ties keep the order given."""
    ranked = sorted(scores, key=lambda b: -scores[b] if maximize else scores[b])
    top = set(ranked[:max(1, math.ceil(len(ranked) * fraction))]) if ranked else set()
    tuned = [b for b in ranked if b in set(pretrained)]
    top |= set(tuned[:max(1, math.ceil(len(tuned) * fraction))]) if tuned else set()
    return [b for b in ranked if b in top]


def best_scores(probes: Mapping[str, float], trials: Sequence[TrialCost], maximize: bool = True) -> dict[str, float]:
    """Per backbone, the best of its probe score and its heads-stage CV scores."""
    out: dict[str, float] = {}
    pick = max if maximize else min
    for backbone, value in probes.items():
        if math.isfinite(value):
            out[backbone] = value
    for t in trials:
        if t.stage == "heads" and t.value is not None and math.isfinite(t.value):
            out[t.backbone] = pick(out[t.backbone], t.value) if t.backbone in out else t.value
    return out


def heads_fixed(fixed: Mapping[str, Any], pretrained: bool) -> dict[str, Any]:
    """The values the heads stage pins for one backbone. A backbone without pretrained weights has
    no features worth freezing: it trains whole, and only its augmentation is pinned off."""
    pinned = dict(HEADS_FIXED) if pretrained else {"augment": HEADS_FIXED["augment"]}
    return {**pinned, **fixed}  # what the user pinned on the command line wins
