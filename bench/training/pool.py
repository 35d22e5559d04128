"""The compiled trainers of a worker's recent trials, so no model is built and traced twice.

A search worker runs trial after trial in one process, and many trials share an architecture:
the smoke search's pruned 12 trials spent 215 of 345 training seconds building and tracing models
a previous trial had already traced. A ``FoldTrainer`` is kept here under the key of everything
that fixes its compiled graph; a later trial with the same key gets it back ``renew``-ed with
its own seed's initial weights, fresh optimizer state and its own learning rate, schedule,
dropout rate and seed (the way a trainer already starts each fold), and trains bit for bit as a
fresh build would. The head's dropout rate is a variable of the built model, not a constant traced
into the step (``bench.models.dropout``), so a search over a float dropout still reuses trainers.

The pool is bounded by ``BENCH_WORKER_MODELS`` trainers (default 4; 0 turns it off), the least
recently used going first. It is per process: a worker is recycled after ``max_trials`` trials,
which bounds what framework state can accumulate.
"""

from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from typing import Any

import keras

from bench.errors import ConfigError
from bench.training.train import FoldTrainer, TrainConfig, resolve_bn_momentum

POOL_ENV = "BENCH_WORKER_MODELS"
DEFAULT_MODELS = 4


def capacity() -> int:
    raw = os.environ.get(POOL_ENV, "").strip()
    if not raw:
        return DEFAULT_MODELS
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ConfigError(f"{POOL_ENV}={raw!r} must be a whole number of trainers to keep per worker (0 or more, "
                          f"0 = off), e.g. {DEFAULT_MODELS}.")
    return value


def graph_key(config: TrainConfig, n_classes: int, n_train_hint: int, on_features: bool,
              feature_shape: tuple[int, ...] | None = None) -> tuple[Any, ...]:
    """Everything that fixes a trainer's layers and compiled steps. Left out, because every fit
    reads them afresh: the learning rate, schedule, warmup, epochs, early stopping, plateau
    patience, inner split and seed (the seed's initial weights are restored, not traced), and the
    head's dropout rate (a weight that ``renew`` sets)."""
    c = config
    return (
        c.backbone, str(c.weights), c.size, c.unfrozen, n_classes, on_features,
        feature_shape,  # given: the head alone on maps of this shape (no backbone built)
        # Head shape and pooling, not its dropout: the rate is a weight that renew sets (bench.models.dropout).
        dataclasses.replace(c.head(), dropout=0.0), c.augment,  # and augmentation layers
        resolve_bn_momentum(c, n_train_hint),  # a layer constant
        c.batch_size,  # batch shapes
        c.optimizer, c.momentum if c.optimizer == "sgd" else None, c.weight_decay if c.optimizer == "adamw" else None,
        c.label_smoothing, c.class_weights,  # the loss, and sample weights in the step's signature
        c.head_epochs > 0, c.backbone_lr_scale,  # a second compiled phase; the optimizer's variable groups
        keras.config.dtype_policy().name,  # --precision
        keras.backend.backend(),
    )


class TrainerPool:
    """At most ``capacity()`` trainers by graph key, least recently used out."""

    def __init__(self) -> None:
        self._trainers: OrderedDict[tuple[Any, ...], FoldTrainer] = OrderedDict()

    def __len__(self) -> int:
        return len(self._trainers)

    def keys(self) -> list[tuple[Any, ...]]:
        return list(self._trainers)

    def clear(self) -> None:
        self._trainers.clear()

    def trainer(self, config: TrainConfig, n_classes: int, n_train_hint: int, *,
                on_features: bool = False, feature_shape: tuple[int, ...] | None = None,
                base_params: int = 0) -> FoldTrainer:
        """A trainer for ``config``: an earlier trial's, renewed (``origin`` RESTORED), or a
        new one (BUILT), kept for later trials."""
        limit = capacity()
        key = graph_key(config, n_classes, n_train_hint, on_features, feature_shape)
        kept = self._trainers.pop(key, None)
        if kept is not None and limit:
            kept.renew(config)
        else:
            kept = FoldTrainer(config, n_classes, n_train_hint, on_features=on_features,
                               feature_shape=feature_shape, base_params=base_params)
        if limit:
            self._trainers[key] = kept
        while len(self._trainers) > limit:  # a lowered bound lets go of the rest too
            self._trainers.popitem(last=False)
        return kept


# The process's pool: a search worker keeps it across trials; a one-off command uses it once.
POOL = TrainerPool()
