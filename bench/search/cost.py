"""A trial's cost, measured rather than assumed: predicted from what the study's trials recorded.

Each finished trial records its wall ``seconds``, its configuration (epochs, head epochs, size) and
the folds it trained (``folds_done``). A new trial is predicted from the nearest kind of trial
first: the same backbone in the same stage, then the same backbone in any stage; scaled by its
epochs x folds and its pixels. The prediction is conservative: the dearest per-unit cost among the
last ``RECENT`` such trials (a worker's first trial pays TensorFlow's tracing, which its later ones
reuse: the recent ones say what the next costs), and never less than the cheapest whole trial of
that kind (a fixed cost does not shrink with fewer epochs). With no trial of that backbone yet, the probe's measured
forward pass (seconds per image) times ``BACKWARD_FACTOR`` stands in; with nothing at all, there
is no prediction and the trial starts: it is the measurement.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bench.search.plan import TrialCost

# A training step costs a forward and a backward pass (about twice the forward's work) plus the
# optimizer update: three forward passes, rounded up.
BACKWARD_FACTOR = 3.5
RECENT = 3


def units(config: Mapping[str, Any], folds: int) -> int:
    """Epochs (head phase included) x folds: what a trial's time grows with."""
    return max(1, (int(config.get("epochs") or 1) + int(config.get("head_epochs") or 0)) * folds)


def trial_costs(trials: Iterable[Any]) -> list[TrialCost]:
    """The finished trials' measurements (Optuna FrozenTrials), surplus and unmeasured ones left out."""
    out = []
    for t in trials:
        a = t.user_attrs
        config = a.get("config") or {}
        seconds, done = a.get("seconds"), int(a.get("folds_done") or 0)
        if a.get("surplus") or seconds is None or not config or t.state.name not in ("COMPLETE", "PRUNED"):
            continue
        if not math.isfinite(float(seconds)) or done < 1:
            continue
        out.append(TrialCost(
            backbone=str(config.get("backbone")), stage=a.get("stage"), seconds=float(seconds),
            units=units(config, done), size=int(config.get("size") or 0),
            value=t.value if t.state.name == "COMPLETE" else None, folds_done=done))
    return out


def predict(costs: Sequence[TrialCost], config: Mapping[str, Any], folds: int, stage: str | None,
            probe: Mapping[str, float] | None = None, cv_images: int = 0) -> float | None:
    """Predicted seconds of a trial of ``config`` in ``stage``; None when nothing measured applies.

    ``probe`` is the backbone's probe record: ``seconds_features`` (building the backbone and one
    forward pass over ``images`` images at ``size``)."""
    backbone, size = config.get("backbone"), int(config.get("size") or 0)
    want = units(config, folds)
    same = [c for c in costs if c.backbone == backbone]
    nearest = ([c for c in same if c.stage == stage] or same)[-RECENT:]
    if nearest:
        def scaled(c: TrialCost) -> float:
            pixels = (size / c.size) ** 2 if size and c.size else 1.0
            return c.seconds / c.units * want * pixels

        return max(max(scaled(c) for c in nearest), min(c.seconds for c in nearest))
    if probe and probe.get("images") and cv_images:
        per_image = float(probe["seconds_features"]) / float(probe["images"])
        pixels = (size / float(probe["size"])) ** 2 if size and probe.get("size") else 1.0
        # Every epoch of every fold trains on (k-1)/k of the CV pool and predicts the rest.
        images = cv_images * want * (folds - 1) / folds if folds > 1 else cv_images * want
        return float(probe["seconds_features"]) + per_image * pixels * BACKWARD_FACTOR * images
    return None
