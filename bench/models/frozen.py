"""A frozen part is deterministic: every frozen layer runs in inference mode, whatever the call says.

Keras 3 BatchNormalization uses its moving statistics when it is not trainable, but Dropout (and
the stochastic depth built on it) ignores ``trainable=False``: called with ``training=True`` it
draws a mask. A frozen EfficientNetB0 has 9 such layers, EfficientNetV2B0 15; on the ordinary
path they fired every epoch, while the cached-feature path computes the features once in
inference mode, so the two paths trained different models. After ``run_frozen_in_inference`` a
layer whose ``trainable`` flag is off is called with ``training=False``.

The flag is read when the layer is called (traced), not when this is applied: unfreezing, and the
two phases of fine-tuning (each phase's model is traced with its own flags), just work.
"""

from __future__ import annotations

import functools
from typing import Any

import keras

from bench.models.blocks import iter_layers

_MARK = "_bench_frozen_inference"


def _inference_when_frozen(layer: keras.layers.Layer) -> None:
    original = layer.call

    @functools.wraps(original)
    def call(*args: Any, training: Any = None, **kwargs: Any) -> Any:
        if training is not None and not layer.trainable:
            training = False
        return original(*args, training=training, **kwargs)

    # Past Keras' attribute tracking: a function is no state to track or save. A saved model
    # loses the wrapper, and needs none: it is called for inference.
    object.__setattr__(layer, "call", call)
    object.__setattr__(layer, _MARK, True)


def run_frozen_in_inference(model: keras.Model) -> int:
    """Make every layer of ``model`` (nested ones too) that takes a ``training`` argument run in
    inference mode while it is frozen; returns how many layers take one. Idempotent."""
    n = 0
    for layer in iter_layers(model):
        if not getattr(layer, "_call_has_training_arg", False):
            continue
        n += 1
        if not getattr(layer, _MARK, False):
            _inference_when_frozen(layer)
    return n
