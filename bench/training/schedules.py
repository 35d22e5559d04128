"""Per-epoch learning-rate schedules: a registry of rate factors and the callback that applies them.

A schedule is a function of the epoch: ``factor(t, n)`` multiplies the configured rate at epoch
``t`` (0-based, counted after the warmup) of ``n`` epochs after the warmup. ``plateau`` has no
factor: its rate is lowered by Keras' ReduceLROnPlateau from the inner validation loss (the
trainer adds it; its patience is ``reduce_lr``, which no other schedule reads). The warmup ramps
the rate linearly from WARMUP_START x lr at epoch 0 to lr at epoch ``warmup_epochs``.

Rates are set at the beginning of each epoch on the optimizer of the model being fit, so the
rate each epoch really ran at is what the trainer's epoch log records into the history.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras

# A floor shared with the plateau rule: a schedule never goes below this fraction of the rate.
MIN_LR_SCALE = 1e-3
STEP_FACTOR = 0.5  # step: the rate is multiplied by this ...
STEP_PARTS = 3  # ... at each third of the epochs after the warmup
EXPONENTIAL_END = 0.01  # exponential: the last epoch runs at this fraction of the rate
WARMUP_START = 0.1  # warmup: the first epoch runs at lr / 10


@dataclass(frozen=True)
class Schedule:
    factor: Callable[[int, int], float] | None  # (t, n) -> multiplier of lr; None: left to a rule
    text: str  # for the README and error messages


def _cosine(t: int, n: int) -> float:
    # Down to the floor at the last epoch: per-epoch cosine annealing without a wasted epoch at 0.
    return MIN_LR_SCALE + (1 - MIN_LR_SCALE) * 0.5 * (1 + math.cos(math.pi * t / max(n - 1, 1)))


SCHEDULES: dict[str, Schedule] = {
    "constant": Schedule(lambda t, n: 1.0, "lr every epoch"),
    "plateau": Schedule(None, "lr, x0.3 after `reduce_lr` epochs without a better inner validation loss"),
    "step": Schedule(lambda t, n: STEP_FACTOR ** (t * STEP_PARTS // max(n, 1)), "halved at each third of the epochs"),
    "exponential": Schedule(lambda t, n: EXPONENTIAL_END ** (t / max(n - 1, 1)),
                            "decays by a constant factor per epoch to lr/100 at the last epoch"),
    "cosine": Schedule(_cosine, "cosine from lr to lr/1000 at the last epoch"),
}
DEFAULT_SCHEDULE = "plateau"


def schedule_problems(schedule: str, warmup_epochs: int, epochs: int) -> list[str]:
    """What is wrong with a schedule setting (empty when fine), as complete sentences."""
    if schedule not in SCHEDULES:
        from bench.errors import close_matches

        return [f"Unknown schedule {schedule!r}.{close_matches(str(schedule), SCHEDULES)} "
                f"Allowed: {', '.join(SCHEDULES)}."]
    if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
        return [f"--warmup-epochs must be a whole number >= 0, got {warmup_epochs!r}."]
    if warmup_epochs and SCHEDULES[schedule].factor is None:
        return [f"--warmup-epochs {warmup_epochs} cannot be combined with schedule '{schedule}': that rule "
                "lowers the rate from the inner validation loss while the warmup raises it. Use schedule "
                "'constant', 'step', 'exponential' or 'cosine' with a warmup, or warmup_epochs 0."]
    if warmup_epochs >= epochs:
        return [f"--warmup-epochs {warmup_epochs} leaves no epoch at the full rate: use fewer than epochs "
                f"({epochs})."]
    return []


def learning_rates(schedule: str, lr: float, epochs: int, warmup_epochs: int = 0) -> list[float] | None:
    """The rate of every epoch, or None when a rule (plateau) decides it while training."""
    factor = SCHEDULES[schedule].factor
    if factor is None:
        return None
    n = epochs - warmup_epochs
    ramp = [lr * (WARMUP_START + (1 - WARMUP_START) * e / warmup_epochs) for e in range(warmup_epochs)]
    return ramp + [lr * factor(t, n) for t in range(n)]


class EpochRates(keras.callbacks.Callback):
    """Set the optimizer's rate at the beginning of each epoch from a precomputed list.

    Assigning to the optimizer's learning-rate variable changes no traced function: the compiled
    training step reads the variable.
    """

    def __init__(self, rates: list[float]) -> None:
        super().__init__()
        self.rates = rates

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.model.optimizer.learning_rate.assign(self.rates[min(epoch, len(self.rates) - 1)])
