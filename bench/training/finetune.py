"""Two-phase fine-tuning without recompiling per fold: trainability snapshots and a backbone LR scale.

Keras bakes trainability into a training step when it is traced (which variables get gradients,
whether a BatchNormalization layer normalises by batch or by moving statistics), so changing
``trainable`` between the phases would normally mean recompiling, once per fold. Instead the
trainer compiles two models over the *same* layers once per trial: a phase-1 model traced while
the whole backbone is frozen (its BN layers in inference mode, as in Keras' fine-tuning recipe)
and a phase-2 model traced with ``unfrozen`` blocks trainable, each with its own optimizer. A
``Trainability`` snapshot puts the layers' flags back to the right phase before each fit, so
anything that reads them (BN re-estimation, a retrace on a new batch shape) sees that phase.

Keras 3 has no per-layer learning rate; ``with_lr_scale`` gives an optimizer one for a group of
variables by scaling the rate its update step receives (not the gradient: Adam's update does not
change when a gradient is scaled). The scale is a Python constant of the trial, so nothing
retraces; decoupled weight decay (AdamW) is scaled alike, so a scale of 0 leaves the group as it was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras

from bench.models import iter_layers


@dataclass(frozen=True)
class Trainability:
    """The ``trainable`` flag of a model and of every layer in it, to be set again later."""

    flags: tuple[tuple[keras.layers.Layer, bool], ...]

    @classmethod
    def of(cls, model: keras.Model) -> Trainability:
        # Parents before children, so a parent's recursive setter never overrides a child's flag.
        return cls(((model, model.trainable), *((layer, layer.trainable) for layer in iter_layers(model))))

    def frozen(self) -> Trainability:
        return Trainability(tuple((layer, False) for layer, _ in self.flags))

    def apply(self) -> None:
        # Every layer explicitly: TensorFlow skips `layer.trainable = x` when the flag already
        # equals x, which would leave sublayers that a parent's setter changed (see blocks.py).
        for layer, flag in self.flags:
            layer.trainable = flag


class _ScaledLR:
    """Mixed into an optimizer class: variables in ``_lr_scaled`` train at ``_lr_scale`` x the rate."""

    _lr_scale: float = 1.0
    _lr_scaled: tuple[Any, ...] = ()

    def build(self, variables: list[Any]) -> None:
        super().build(variables)  # type: ignore[misc]
        self._scaled_keys = {self._var_key(v) for v in self._lr_scaled}  # type: ignore[attr-defined]

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        if self._var_key(variable) in self._scaled_keys:  # type: ignore[attr-defined]
            learning_rate = learning_rate * self._lr_scale
        super().update_step(gradient, variable, learning_rate)  # type: ignore[misc]

    def _apply_weight_decay(self, variables: list[Any]) -> None:
        plain = [v for v in variables if self._var_key(v) not in self._scaled_keys]  # type: ignore[attr-defined]
        super()._apply_weight_decay(plain)  # type: ignore[misc]
        if self.weight_decay is None:  # type: ignore[attr-defined]
            return
        rate = keras.ops.convert_to_tensor(self.learning_rate) * self._lr_scale * self.weight_decay  # type: ignore[attr-defined]
        for v in variables:
            if self._var_key(v) in self._scaled_keys and self._use_weight_decay(v):  # type: ignore[attr-defined]
                v.assign(v - v * keras.ops.cast(rate, v.dtype))


def with_lr_scale(optimizer: keras.optimizers.Optimizer, variables: list[Any], scale: float) -> keras.optimizers.Optimizer:
    """A copy of ``optimizer`` (same class and settings) that trains ``variables`` at ``scale`` x its rate."""
    cls = type(optimizer)
    scaled_cls = type(f"LRScaled{cls.__name__}", (_ScaledLR, cls), {})
    scaled = scaled_cls.from_config(optimizer.get_config())
    scaled._lr_scale = float(scale)
    scaled._lr_scaled = tuple(variables)
    return scaled
