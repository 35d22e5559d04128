"""Train and score one configuration fold by fold, building and compiling the model once.

A new TensorFlow model pays 20-60 s of tracing on its first step; on small medical sets that
fixed cost, times folds, dominates (measured here: 3 folds rebuilt 73 s vs reused 27 s). So a
``FoldTrainer`` builds and compiles once, snapshots the fresh weights and the fresh optimizer
state, and restores both before every fold. The snapshot covers *every* optimizer variable
(moments, iteration, learning rate, loss scale): zeroing them all instead would set the learning
rate to 0 and silently train later folds at LR 0.

BatchNormalization on small sets: Keras' moving-average momentum (0.99, 0.999 in MobileNetV2)
leaves the moving statistics near their initial values after a few hundred steps, and
inference-mode predictions collapse to one class. Two measures: the momentum of trainable BN
layers is matched to the number of steps per epoch (so validation scores during training, which
drive early stopping, are meaningful), and after training the statistics are re-estimated on the
training fold as exact averages (like torch.optim.swa_utils.update_bn).

Nothing that chooses reads the data it is scored on. Early stopping, LR reduction and the
per-epoch values a pruner sees read an *inner* validation split carved out of the training fold
(``x_stop``); the outer validation fold is predicted once, after training, and only that
prediction is scored. (Keras 3's EarlyStopping restores the best epoch at the end of every fit,
even without an early stop: whatever it monitors has chosen the weights.)

Learning-rate schedules (bench.training.schedules) set the rate at each epoch's start; two-phase
fine-tuning (``head_epochs``, bench.training.finetune) fits a phase-1 model (backbone frozen) and then a
phase-2 model over the same layers, both compiled once; early stopping and the plateau rule
read phase 2 only, so the fixed head-only epochs always run.

Nothing here knows of Optuna or of run directories: a fold goes in, a ``FoldResult`` comes out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import keras
import numpy as np

from bench.errors import ConfigError, close_matches
from bench.models import HeadSpec, parameter_count, set_dropout_rate
from bench.training import features, loop
from bench.training.graph import Graph, HeadGraph, assemble, copy_weights
from bench.training.batchnorm import (
    BN_REFRESH_IMAGES,
    _batchnorms,
    auto_bn_momentum,
    reestimate_batchnorm,
)
from bench.training.finetune import Trainability, with_lr_scale
from bench.training.schedules import (
    DEFAULT_SCHEDULE,
    MIN_LR_SCALE,
    EpochRates,
    learning_rates,
    schedule_problems,
)
from bench.training.seeding import reseed, reseed_all

OPTIMIZERS: dict[str, Callable[..., keras.optimizers.Optimizer]] = {
    "adam": lambda c: keras.optimizers.Adam(c.lr),
    "adamw": lambda c: keras.optimizers.AdamW(c.lr, weight_decay=c.weight_decay),
    "sgd": lambda c: keras.optimizers.SGD(c.lr, momentum=c.momentum, nesterov=True),
    "rmsprop": lambda c: keras.optimizers.RMSprop(c.lr),
}

# Reduce-LR-on-plateau: the factor (the floor, MIN_LR_SCALE x the starting rate, is shared
# with the schedules).
REDUCE_LR_FACTOR = 0.3


@dataclass(frozen=True)
class TrainConfig:
    backbone: str = "mobilenet_v2"
    weights: str | None = None  # "imagenet", None (random init) or a weights file path
    size: int = 64
    unfrozen: int | str = "all"
    lr: float = 1e-3
    batch_size: int = 32
    epochs: int = 10
    optimizer: str = "adam"
    momentum: float = 0.9  # sgd only
    weight_decay: float = 1e-4  # adamw only
    augment: str = "light"
    dropout: float = 0.2
    label_smoothing: float = 0.0
    class_weights: bool = True
    early_stopping: int = 5  # patience in epochs on validation loss; 0 = off
    reduce_lr: int = 3  # patience of reduce-LR-on-plateau; 0 = off; read by schedule "plateau" only
    bn_momentum: str | float = "auto"  # "auto" = matched to steps per epoch, "keep" = Keras default
    # Fraction of each training fold (whole groups, stratified) held out as the inner validation
    # split that early stopping, LR reduction and epoch-level pruning read; 0 = none (then they
    # have nothing to read and are off: a fixed number of epochs at a constant rate).
    inner_val: float = 0.15
    schedule: str = DEFAULT_SCHEDULE  # bench.training.schedules.SCHEDULES
    warmup_epochs: int = 0  # linear warmup from lr/10 (not with "plateau")
    head_epochs: int = 0  # two-phase: this many epochs with the whole backbone frozen first
    backbone_lr_scale: float = 1.0  # the backbone's rate relative to the head's (0 = no change)
    head_layers: int = 0  # hidden dense layers of the head (bench.models.HeadSpec)
    head_units: int = 256
    pooling: str = "avg"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"Unknown optimizer '{self.optimizer}'.{close_matches(self.optimizer, OPTIMIZERS)} "
                f"Allowed: {', '.join(OPTIMIZERS)}."
            )
        checks = [
            (self.lr > 0, f"--lr must be positive, got {self.lr}."),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}."),
            (self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}."),
            (0 <= self.dropout < 1, f"--dropout must be in [0, 1), got {self.dropout}."),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}."),
            (0 <= self.inner_val <= 0.5, f"--inner-val must be in [0, 0.5], got {self.inner_val}."),
            (isinstance(self.head_epochs, int) and 0 <= self.head_epochs < self.epochs,
             f"--head-epochs must be a whole number from 0 (one phase) to epochs - 1 ({self.epochs - 1}), "
             f"leaving phase 2 at least one epoch; got {self.head_epochs!r}."),
            (math.isfinite(self.backbone_lr_scale) and self.backbone_lr_scale >= 0,
             f"--backbone-lr-scale must be a number >= 0, got {self.backbone_lr_scale!r}."),
        ]
        problems = [message for ok, message in checks if not ok]
        problems += schedule_problems(self.schedule, self.warmup_epochs, self.epochs)
        problems += self.head().problems()
        if problems:
            raise ConfigError(problems[0])

    def head(self) -> HeadSpec:
        return HeadSpec(pooling=self.pooling, layers=self.head_layers, units=self.head_units, dropout=self.dropout)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRUNED = "pruned"  # the prefix of a fold status that the epoch hook stopped (not a failure)

# The epoch hook: (epoch, logs) -> None to go on, or the reason to stop this fold now.
EpochHook = Callable[[int, dict[str, float]], "str | None"]
# Scores inner-validation predictions every epoch: (y_true, proba) -> {metric: value}.
Scorer = Callable[[np.ndarray, np.ndarray], dict[str, float]]


@dataclass
class FoldResult:
    fold: int
    proba: np.ndarray | None  # (n_val, k) predicted probabilities; None when the fold failed
    history: dict[str, list[float]]
    status: str  # "ok", "pruned at epoch N", or the reason the fold failed (e.g. "nan_loss at epoch 2")
    epochs_run: int
    best_epoch: int
    seconds: dict[str, float] = field(default_factory=dict)  # fit, predict, bn_reestimate, first_epoch
    n_train: int = 0
    n_val: int = 0
    n_stop: int = 0  # images of the inner validation split
    origin: str = "built"  # BUILT, REUSED or RESTORED: how this fold's compiled model came to be

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def pruned(self) -> bool:
        return self.status.startswith(PRUNED)


def trace_seconds(epoch_seconds: list[float]) -> float:
    """The first epoch's fixed cost (tracing, kernel set-up): its seconds minus the median of the
    later epochs'. 0 with a single epoch: nothing to tell the fixed cost from the work by."""
    if len(epoch_seconds) < 2:
        return 0.0
    return max(0.0, epoch_seconds[0] - float(np.median(epoch_seconds[1:])))


def balanced_class_weights(y: np.ndarray, n_classes: int) -> dict[int, float]:
    counts = np.bincount(y, minlength=n_classes).astype(float)
    weights = len(y) / (n_classes * np.maximum(counts, 1.0))
    return {i: float(w) for i, w in enumerate(weights)}


class _EpochLog(keras.callbacks.Callback):
    """Epoch timings, the learning rate each epoch ran at, NaN detection and the epoch hook
    (progress, pruning): a hook that returns a reason stops the fold after this epoch."""

    def __init__(self, on_epoch: EpochHook | None) -> None:
        super().__init__()
        self.on_epoch = on_epoch
        self.epoch_seconds: list[float] = []
        self.nan_at: str | None = None
        self.stopped: str | None = None
        self._t0 = 0.0
        self._epoch = 0
        self._lr = math.nan

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()
        self._epoch = epoch
        self._lr = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.nan_at = f"nan_loss at epoch {self._epoch + 1} batch {batch + 1}"
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.epoch_seconds.append(time.perf_counter() - self._t0)
        if logs is not None:
            # The rate this epoch trained at (a plateau rule lowers it only after the epoch).
            logs["learning_rate"] = self._lr
        if self.on_epoch is not None and self.nan_at is None:
            reason = self.on_epoch(epoch, {k: float(v) for k, v in (logs or {}).items()})
            if reason:
                self.stopped = reason
                self.model.stop_training = True


def cross_entropy(y: np.ndarray, proba: np.ndarray) -> float:
    """Mean categorical cross-entropy of predicted probabilities (the loss early stopping reads)."""
    p = np.clip(proba[np.arange(len(y)), y], 1e-7, 1.0)
    return float(-np.mean(np.log(p)))


class _InnerValidation(keras.callbacks.Callback):
    """After each epoch, predict the inner validation split and put ``val_loss`` and the
    scorer's ``val_<metric>`` values into the epoch's logs, for the callbacks after it (early
    stopping, LR reduction, the epoch hook) and the history.

    This replaces Keras' ``validation_data`` so that one prediction per epoch serves every
    reader, and so that the BN statistics can be refreshed first: Keras validates with the
    moving statistics, which on a small set lag far behind the weights (measured: validation
    accuracy stuck at 0.50 while re-estimated predictions scored 0.87).
    """

    def __init__(self, trainer: FoldTrainer, x_train: np.ndarray, x_stop: np.ndarray, y_stop: np.ndarray,
                 scorer: Scorer | None, seed: int) -> None:
        super().__init__()
        self.trainer, self.x_train, self.x_stop, self.y_stop = trainer, x_train, x_stop, y_stop
        self.scorer, self.seed = scorer, seed

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if logs is None or not math.isfinite(float(logs.get("loss", 0.0))):
            return
        if _batchnorms(self.trainer.core):
            reestimate_batchnorm(self.trainer.core, self.x_train, seed=self.seed, limit=BN_REFRESH_IMAGES)
        proba = self.trainer.predict(self.x_stop)
        if not np.all(np.isfinite(proba)):
            logs["val_loss"] = math.inf
            return
        logs["val_loss"] = cross_entropy(self.y_stop, proba)
        logs["val_accuracy"] = float(np.mean(proba.argmax(axis=1) == self.y_stop))
        for name, value in (self.scorer(self.y_stop, proba) if self.scorer else {}).items():
            logs[f"val_{name}"] = float(value)


def _count(weights: list) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def _snapshot(variables: list) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


def _restore(variables: list, values: list[np.ndarray]) -> None:
    for v, value in zip(variables, values):
        v.assign(value)


# How a fold's trainer came to be (folds.csv's ``model``): built and compiled for this trial,
# reused from this trial's earlier fold, or restored from an earlier trial's (bench.training.pool).
BUILT, REUSED, RESTORED = "built", "reused", "restored"


def resolve_bn_momentum(config: TrainConfig, n_train_hint: int) -> float | None:
    if config.bn_momentum == "auto":
        return auto_bn_momentum(n_train_hint, config.batch_size)
    if config.bn_momentum == "keep":
        return None
    return float(config.bn_momentum)


def _streams(model: keras.Model) -> list:
    """The model's variables outside ``weights``: the random streams of dropout and augmentation."""
    weight_ids = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weight_ids]


@dataclass(frozen=True)
class _Phase:
    """One fit of a fold: a compiled model over the shared layers, trained up to ``end`` epochs."""

    model: keras.Model
    optimizer: keras.optimizers.Optimizer
    trainability: Trainability | None  # set before fitting; None: one phase, nothing to switch
    end: int | None  # the last epoch (exclusive) of this phase; None: the configured epochs


class FoldTrainer:
    """One configuration, built and compiled once, trained fresh on each fold.

    With ``on_features`` (a frozen backbone, no augmentation: ``bench.training.features.eligible``) the
    trainer's inputs are the backbone's cached feature maps instead of images: the model it fits
    and predicts with is the classifier's own head, with the same loop and callbacks, and
    ``classifier`` is still the whole image -> probabilities model, holding the trained head.
    Given the feature map's shape too (``feature_shape``, ``base_params``: the backbone's
    parameters, for the counts), it builds the head alone and assembles the classifier (and
    ``parts``, ``extractor``) only when one of them is asked for (``bench.training.graph``).
    """

    def __init__(self, config: TrainConfig, n_classes: int, n_train_hint: int, *, on_features: bool = False,
                 feature_shape: tuple[int, ...] | None = None, base_params: int = 0) -> None:
        if on_features and not features.eligible(config):
            raise ValueError("Only a fully frozen backbone without augmentation can train on cached features.")
        if feature_shape is not None and not on_features:
            raise ValueError("A feature shape is for a trainer on cached features (on_features=True).")
        self.config = config
        self.on_features = on_features
        self.feature_shape = None if feature_shape is None else tuple(int(d) for d in feature_shape)
        self.base_params = int(base_params)
        self.n_classes = n_classes
        t0 = time.perf_counter()
        self.bn_momentum = resolve_bn_momentum(config, n_train_hint)
        built = self._graph(config)
        # The whole classifier: this trainer's own graph, or (head alone) assembled on first need.
        self._full: Graph | None = built if isinstance(built, Graph) else None
        self.core, self.model = built.core, built.model
        self.optimizer = self._compile(self.model, config.backbone_lr_scale)
        self.phases = [_Phase(self.model, self.optimizer, None, None)]
        if built.head_model is not None:
            # Phase 1: a second model over the same layers, compiled while the backbone is frozen.
            trained = Trainability.of(self.parts.base)
            trained.frozen().apply()
            self.phases = [_Phase(built.head_model, self._compile(built.head_model, 1.0), trained.frozen(),
                                  config.head_epochs),
                           _Phase(self.model, self.optimizer, trained, None)]
            trained.apply()
        self._weights0 = _snapshot(self.model.weights)
        # The random streams of dropout and augmentation layers are variables outside `weights`:
        # restored too, so a fold trains the same however many folds ran before it.
        self._streams = _streams(self.model)
        self._streams0 = _snapshot(self._streams)
        self._opt0 = [_snapshot(p.optimizer.variables) for p in self.phases]
        self.build_seconds = time.perf_counter() - t0
        self.origin = BUILT
        self.folds_trained = 0

    def renew(self, config: TrainConfig) -> None:
        """Make this trainer the one a fresh ``FoldTrainer(config, ...)`` would be, without
        compiling or tracing again: ``config`` must fix the same graph (``bench.training.pool``'s
        key). The initial weights and random streams of ``config.seed`` come from building the
        layers again (cheap, eager, never traced) when the seed differs; every optimizer's state
        is its fresh state with ``config.lr``; the head's dropout rate is ``config.dropout``. Rate,
        schedule, epochs, early stopping and seed are read from ``self.config`` by every fit."""
        t0 = time.perf_counter()
        # Optimizer state first: a backbone-rate optimizer (with_lr_scale) also tracks the
        # backbone's own variables, whose snapshot holds the previous seed's initial values.
        for phase, values in zip(self.phases, self._opt0):
            _restore(phase.optimizer.variables, values)
            phase.optimizer.learning_rate.assign(config.lr)
        if config.seed != self.config.seed:
            fresh = self._graph(config)
            # The whole classifier: on features the fitted model is the head alone, and the
            # frozen backbone's initial weights (random init) follow the seed too. A head-only
            # trainer's backbone is a weights file's, whatever the seed; its head is copied in
            # whenever the classifier is asked for.
            if isinstance(fresh, Graph):
                _restore(self.classifier.weights, _snapshot(fresh.classifier.weights))
            self._weights0 = _snapshot(fresh.model.weights)
            self._streams0 = _snapshot(_streams(fresh.model))
            del fresh
        self.config = config
        _restore(self.model.weights, self._weights0)
        # The head's dropout rate is a weight, not a graph constant (bench.models.dropout): this
        # trial's rate is part of its fresh state, which every fold's reset restores.
        set_dropout_rate(self.model, config.dropout)
        self._weights0 = _snapshot(self.model.weights)
        _restore(self._streams, self._streams0)
        self._opt0 = [_snapshot(p.optimizer.variables) for p in self.phases]
        reseed_all(config.seed)  # what a fresh build leaves behind for the first fold
        self.build_seconds = time.perf_counter() - t0
        self.origin = RESTORED
        self.folds_trained = 0

    def _graph(self, config: TrainConfig) -> Graph | HeadGraph:
        if self.feature_shape is not None:
            return HeadGraph(config, self.n_classes, self.feature_shape)
        return Graph(config, self.n_classes, self.bn_momentum, self.on_features)

    def _assembled(self) -> Graph:
        """The whole classifier, holding the head as trained so far."""
        if self._full is None:
            self._full = assemble(self.config, self.n_classes, self.bn_momentum, self.model)
        elif self._full.core is not self.model:
            copy_weights(self.model, self._full.core)
        return self._full

    @property
    def classifier(self) -> keras.Model:
        """Image -> probabilities: what is exported, explained and given test-time augmentation."""
        return self._assembled().classifier

    @property
    def parts(self) -> Any:
        return self._assembled().parts

    @property
    def extractor(self) -> keras.Model | None:
        """Image -> feature map (on features), what fills the feature cache."""
        return self._assembled().extractor

    @property
    def trainable_params(self) -> int:
        return self.parts.trainable_params if self._full is not None else _count(self.model.trainable_weights)

    @property
    def total_params(self) -> int:
        return self.parts.total_params if self._full is not None else self.base_params + parameter_count(self.model)

    def _compile(self, model: keras.Model, backbone_lr_scale: float) -> keras.optimizers.Optimizer:
        """Compile ``model`` with a fresh optimizer over its trainable variables now; return the
        optimizer it really uses (under mixed_float16 a LossScaleOptimizer, whose loss-scale
        variables must be reset per fold too)."""
        c = self.config
        optimizer = OPTIMIZERS[c.optimizer](c)
        if backbone_lr_scale != 1.0:
            # A head alone has no backbone variables: the frozen backbone's trainable ones are none either.
            base = self._full.parts.base.trainable_variables if self._full is not None else []
            optimizer = with_lr_scale(optimizer, base, backbone_lr_scale)
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=c.label_smoothing),
            metrics=["accuracy"],
        )
        # Create the optimizer's variables now so their fresh values can be snapshot.
        model.optimizer.build(model.trainable_variables)
        return model.optimizer

    def reset(self) -> None:
        """Fresh initial weights, random streams and every phase's optimizer state (moments,
        iteration and rate)."""
        _restore(self.model.weights, self._weights0)
        _restore(self._streams, self._streams0)
        for phase, values in zip(self.phases, self._opt0):
            _restore(phase.optimizer.variables, values)

    @property
    def learning_rate(self) -> float:
        return float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))

    def _fit(
        self,
        x: np.ndarray,
        y: np.ndarray,
        x_stop: np.ndarray | None,
        y_stop: np.ndarray | None,
        *,
        epochs: int,
        seed: int,
        scorer: Scorer | None = None,
        on_epoch: EpochHook | None = None,
        callbacks: list[keras.callbacks.Callback] | None = None,
    ) -> tuple[dict[str, list[float]], _EpochLog, float]:
        """Train fresh weights on ``(x, y)``; whatever chooses (early stopping, LR reduction, the
        epoch hook) reads the inner split ``(x_stop, y_stop)`` only. Returns (history, log, seconds)."""
        c = self.config
        if self.folds_trained:
            self.reset()
        reseed(seed)
        log = _EpochLog(on_epoch)
        rates = learning_rates(c.schedule, c.lr, epochs, c.warmup_epochs)
        history: dict[str, list[float]] = {}
        t0 = time.perf_counter()
        start = 0
        for number, phase in enumerate(self.phases, start=1):
            if phase.trainability is not None:
                phase.trainability.apply()
            end = epochs if phase.end is None else min(phase.end, epochs)
            # The rate is set at each epoch's start, before the epoch log reads it.
            chosen: list[keras.callbacks.Callback] = [EpochRates(rates)] if rates else []
            if x_stop is not None and len(x_stop):
                chosen += self._rules(x, x_stop, np.asarray(y_stop), scorer, seed, last=phase is self.phases[-1])
            onehot = np.eye(self.n_classes, dtype="float32")[y]
            weights = balanced_class_weights(y, self.n_classes) if c.class_weights else None
            hooks = [*chosen, log, *(callbacks or [])]
            if features.eligible(c):
                # One phase, nothing random in the inputs: the loop that the cached and the image
                # path share (bench.training.loop), without fit's per-epoch pipeline set-up.
                ran = loop.train_epochs(
                    phase.model, x, onehot, epochs=end, batch_size=c.batch_size, seed=seed, callbacks=hooks,
                    sample_weight=None if weights is None else np.array(list(weights.values()), "float32")[y])
            else:
                ran = phase.model.fit(x, onehot, initial_epoch=start, epochs=end, batch_size=c.batch_size,
                                      class_weight=weights, callbacks=hooks, shuffle=True, verbose=0).history
            for k, vals in ran.items():
                history.setdefault(k, []).extend(float(v) for v in vals)
            if len(self.phases) > 1:  # which phase each epoch ran in, for the history and its figure
                history.setdefault("phase", []).extend([float(number)] * len(ran.get("loss", [])))
            start = end
            if log.nan_at or log.stopped or end >= epochs:
                break
        if self.phases[-1].trainability is not None:  # the trained model's flags, whatever stopped it
            self.phases[-1].trainability.apply()
        self.folds_trained += 1
        return history, log, time.perf_counter() - t0

    def _rules(self, x: np.ndarray, x_stop: np.ndarray, y_stop: np.ndarray, scorer: Scorer | None, seed: int,
               *, last: bool) -> list[keras.callbacks.Callback]:
        """The callbacks that read the inner split. Early stopping and the plateau rule act in the
        last phase only: the head-only epochs of two-phase fine-tuning always run."""
        c = self.config
        # Order matters: the inner validation writes val_* into the logs that the rules after it
        # read within the same epoch end.
        chosen: list[keras.callbacks.Callback] = [_InnerValidation(self, x, x_stop, y_stop, scorer, seed=seed)]
        if last and c.early_stopping:
            chosen.append(keras.callbacks.EarlyStopping(
                monitor="val_loss", patience=c.early_stopping, restore_best_weights=True))
        if last and c.reduce_lr and c.schedule == "plateau":
            chosen.append(keras.callbacks.ReduceLROnPlateau(
                monitor="val_loss", factor=REDUCE_LR_FACTOR, patience=c.reduce_lr, min_lr=c.lr * MIN_LR_SCALE))
        return chosen

    def fit_fold(
        self,
        fold: int,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        x_stop: np.ndarray | None = None,
        y_stop: np.ndarray | None = None,
        *,
        scorer: Scorer | None = None,
        on_epoch: EpochHook | None = None,
        callbacks: list[keras.callbacks.Callback] | None = None,
    ) -> FoldResult:
        """Train on ``x_train`` (the inner split ``x_stop`` already taken out of it), then predict
        the outer validation fold ``x_val`` once. ``y_val`` is never read here: the caller scores."""
        c = self.config
        n_stop = 0 if x_stop is None else len(x_stop)
        history, log, fit_s = self._fit(x_train, y_train, x_stop, y_stop, epochs=c.epochs,
                                        seed=c.seed * 1000 + fold, scorer=scorer, on_epoch=on_epoch,
                                        callbacks=callbacks)
        epochs_run = len(log.epoch_seconds)
        first_fold = self.folds_trained == 1
        seconds = {"build": self.build_seconds if first_fold and self.origin == BUILT else 0.0,
                   "restore": self.build_seconds if first_fold and self.origin == RESTORED else 0.0,
                   "fit": fit_s, "first_epoch": log.epoch_seconds[0] if log.epoch_seconds else fit_s,
                   "trace": trace_seconds(log.epoch_seconds)}
        sizes = dict(n_train=len(x_train), n_val=len(x_val), n_stop=n_stop,
                     origin=self.origin if first_fold else REUSED)
        if log.nan_at:
            return FoldResult(fold, None, history, log.nan_at, epochs_run, 0, seconds, **sizes)
        if log.stopped:
            return FoldResult(fold, None, history, log.stopped, epochs_run, 0, seconds, **sizes)
        # Early stopping chose among the last phase's epochs (after the head-only ones).
        first = c.head_epochs if len(self.phases) > 1 else 0
        val_losses = history.get("val_loss", [])[first:]
        best_epoch = first + int(np.nanargmin(val_losses)) + 1 if c.early_stopping and val_losses else epochs_run
        t0 = time.perf_counter()
        reestimate_batchnorm(self.core, x_train, c.batch_size, seed=c.seed + fold)
        seconds["bn_reestimate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        proba = self.predict(x_val)
        seconds["predict"] = time.perf_counter() - t0
        if not np.all(np.isfinite(proba)):
            return FoldResult(fold, None, history, "non-finite predictions", epochs_run, best_epoch, seconds, **sizes)
        return FoldResult(fold, proba, history, "ok", epochs_run, best_epoch, seconds, **sizes)

    def fit_full(self, x: np.ndarray, y: np.ndarray, x_stop: np.ndarray | None = None,
                 y_stop: np.ndarray | None = None, *, scorer: Scorer | None = None) -> dict[str, list[float]]:
        """Refit for the held-out evaluation with the recipe cross-validation scored: the same
        epochs budget, early stopping and LR reduction reading an inner split of the training
        images (``x_stop``, taken out of ``x`` by the caller). Returns the training history,
        with the learning rate of every epoch."""
        c = self.config
        history, log, _ = self._fit(x, y, x_stop, y_stop, epochs=c.epochs, seed=c.seed * 1000 + 999,
                                    scorer=scorer)
        if log.nan_at:
            raise FloatingPointError(f"refit stopped: {log.nan_at}")
        reestimate_batchnorm(self.core, x, c.batch_size, seed=c.seed + 999)
        return history

    def predict_images(self, x: np.ndarray) -> np.ndarray:
        """Probabilities for images, whether this trainer trains on images or on cached features
        (test-time augmentation transforms images, so it needs this one)."""
        if self.on_features:
            return np.asarray(self.classifier.predict(x, batch_size=max(self.config.batch_size, 64), verbose=0),
                              dtype="float64")
        return self.predict(x)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.on_features:
            return features.predict_head(self.model, x).astype("float64")
        return np.asarray(self.model.predict(x, batch_size=max(self.config.batch_size, 64), verbose=0), dtype="float64")
