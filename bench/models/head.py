"""A classifier around a backbone: 0..255 image -> preprocessing -> base -> pooled softmax head."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import keras
import numpy as np

from bench.errors import ConfigError
from bench.models.blocks import blocks, cut_points, iter_layers, set_unfrozen
from bench.models.preprocess import Preprocess
from bench.models.registry import Backbone, get_backbone
from bench.models.weights import resolve_weights


@dataclass(frozen=True)
class Classifier:
    model: keras.Model  # input (size, size, 3) float 0..255 RGB -> class probabilities (float32)
    base: keras.Model  # the backbone inside ``model``, without top
    n_blocks: int
    trainable_blocks: int
    total_params: int
    trainable_params: int


def _count(weights: list[Any]) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


def check_size(backbone: Backbone, size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, Integral) or size < backbone.min_size:
        raise ConfigError(
            f"Image size {size!r} is too small for backbone {backbone.name!r}, which needs at "
            f"least {backbone.min_size} px; use a size of {backbone.min_size} or more."
        )
    return size


def set_bn_momentum(model: keras.Model, momentum: float) -> int:
    """Set ``momentum`` on every trainable BatchNormalization layer; return how many.

    From-scratch training on a few hundred images takes a few dozen steps; with Keras' default
    0.99 the moving statistics barely leave their initial values in that time, and inference
    (which uses them) predicts one class. The trainer passes a momentum matched to its steps.
    Frozen BN layers keep theirs: they run in inference mode and never update.
    """
    if not 0.0 <= momentum < 1.0:
        raise ConfigError(f"BatchNorm momentum {momentum!r} must be in [0, 1).")
    changed = 0
    for layer in iter_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            layer.momentum = momentum
            changed += 1
    return changed


def build_classifier(
    backbone: str,
    n_classes: int,
    size: int,
    *,
    weights: str | Path | None = None,
    unfrozen: int | str = "all",
    dropout: float = 0.2,
    bn_momentum: float | None = None,
) -> Classifier:
    """Build (not compile) a classifier; ``unfrozen`` counts trainable blocks of the base."""
    spec = get_backbone(backbone)
    check_size(spec, size)
    if isinstance(n_classes, bool) or not isinstance(n_classes, Integral) or n_classes < 2:
        raise ConfigError(f"Number of classes {n_classes!r} must be an integer of at least 2.")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"Dropout {dropout!r} must be in [0, 1).")

    size, n_classes = int(size), int(n_classes)
    base = spec.build((size, size, 3), resolve_weights(spec, weights))
    n_blocks = len(blocks(base))
    trainable_blocks = set_unfrozen(base, unfrozen)
    if bn_momentum is not None:
        set_bn_momentum(base, bn_momentum)

    inputs = keras.Input((size, size, 3), name="image")
    x = Preprocess(spec.preprocess, name="preprocess")(inputs)
    x = base(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 output even under a mixed_float16 policy: softmax and the loss need the range.
    outputs = keras.layers.Dense(
        n_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)
    model = keras.Model(inputs, outputs, name=f"{spec.name}_classifier")
    return Classifier(
        model=model,
        base=base,
        n_blocks=n_blocks,
        trainable_blocks=trainable_blocks,
        total_params=model.count_params(),
        trainable_params=_count(model.trainable_weights),
    )


def describe_backbone(name: str, size: int | None = None) -> dict[str, Any]:
    """Facts about a backbone for `bench backbones`, from a randomly initialised build."""
    spec = get_backbone(name)
    size = int(check_size(spec, size if size is not None else spec.default_size))
    base = spec.build((size, size, 3), None)
    return {
        "name": spec.name,
        "title": spec.title,
        "size": size,
        "params": base.count_params(),
        "layers": len(base.layers),
        "cut_points": len(cut_points(base)),
        "blocks": len(blocks(base)),
        "min_size": spec.min_size,
        "default_size": spec.default_size,
        "preprocess": spec.preprocess,
        "preprocessing": spec.preprocess,  # alias: the same value under its descriptive name
        "imagenet": spec.imagenet_file is not None,
        "imagenet_file": spec.imagenet_file,
    }
