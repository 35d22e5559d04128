"""A classifier around a backbone: 0..255 image -> preprocessing -> base -> head.

The head (pooling, optional hidden dense layers, softmax) is built by ``build_head`` alone, from a
feature-map tensor and a ``HeadSpec``: the classifier and anything that trains a head on cached
backbone feature maps must build the same head.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import keras
import numpy as np

from bench.data.room import memory_bytes
from bench.errors import ConfigError, close_matches
from bench.models.blocks import blocks, cut_points, iter_layers, set_unfrozen
from bench.models.dropout import RateDropout, parameter_count
from bench.models.frozen import run_frozen_in_inference
from bench.models.preprocess import Preprocess
from bench.models.registry import Backbone, get_backbone
from bench.models.store import resolve_weights

# Flattening keeps every position of the feature map, so the first dense layer grows with its
# area: allowed only up to this side (7x7 at 224 px for the usual /32 backbones, as the VGG16
# studies use); larger maps need a global pooling.
FLATTEN_MAX_SIDE = 8
MAX_HEAD_LAYERS = 2

POOLINGS: dict[str, Callable[[], keras.layers.Layer]] = {
    "avg": lambda: keras.layers.GlobalAveragePooling2D(name="avg_pool"),
    "max": lambda: keras.layers.GlobalMaxPooling2D(name="max_pool"),
    "flatten": lambda: keras.layers.Flatten(name="flatten"),
}


@dataclass(frozen=True)
class HeadSpec:
    """The head on a backbone's feature map: pooling, ``layers`` hidden ReLU dense layers of
    ``units`` each, and the softmax classifier; dropout before every dense layer (``RateDropout``:
    its rate is a variable of the built model, not part of its graph)."""

    pooling: str = "avg"
    layers: int = 0
    units: int = 256
    dropout: float = 0.2

    def problems(self) -> list[str]:
        """What is wrong with these values (empty when fine), one sentence each."""
        found = []
        if self.pooling not in POOLINGS:
            found.append(f"pooling {self.pooling!r} is unknown.{close_matches(self.pooling, POOLINGS)} "
                         f"Allowed: {', '.join(POOLINGS)}.")
        if isinstance(self.layers, bool) or not isinstance(self.layers, Integral) or not 0 <= self.layers <= MAX_HEAD_LAYERS:
            found.append(f"head_layers must be 0 to {MAX_HEAD_LAYERS} hidden dense layers, got {self.layers!r}.")
        if isinstance(self.units, bool) or not isinstance(self.units, Integral) or self.units < 1:
            found.append(f"head_units must be a whole number >= 1, got {self.units!r}.")
        if not 0.0 <= self.dropout < 1.0:
            found.append(f"Dropout {self.dropout!r} must be in [0, 1).")
        return found


def build_head(features: Any, n_classes: int, spec: HeadSpec) -> Any:
    """Class probabilities from a (batch, h, w, c) feature-map tensor, by the head ``spec`` says.

    Raises ConfigError for bad values, and for ``flatten`` on a map larger than
    FLATTEN_MAX_SIDE on a side.
    """
    problems = spec.problems()
    if problems:
        raise ConfigError(" ".join(problems))
    h, w = features.shape[1:3]
    if spec.pooling == "flatten" and (h is None or w is None or max(h, w) > FLATTEN_MAX_SIDE):
        raise ConfigError(
            f"pooling 'flatten' needs a feature map of at most {FLATTEN_MAX_SIDE}x{FLATTEN_MAX_SIDE}; this "
            f"backbone gives {h}x{w} at this image size. Use pooling 'avg' or 'max', or a smaller size."
        )
    x = POOLINGS[spec.pooling]()(features)
    for i in range(1, spec.layers + 1):
        x = RateDropout(spec.dropout, name=f"head_dropout_{i}")(x)
        x = keras.layers.Dense(spec.units, activation="relu", name=f"head_dense_{i}")(x)
    x = RateDropout(spec.dropout, name="head_dropout")(x)
    # float32 output even under a mixed_float16 policy: softmax and the loss need the range.
    return keras.layers.Dense(n_classes, activation="softmax", dtype="float32", name="predictions")(x)


def seed_head(seed: int | None) -> None:
    """Make the head's initial weights and dropout streams depend on ``seed`` alone, not on how
    much randomness the backbone's build consumed: Keras draws an unseeded initializer's or
    dropout layer's seed from Python's ``random`` when the layer is created. So a head built
    alone on feature maps (``build_head_model``) starts where the classifier's own head starts."""
    if seed is not None:
        random.seed(f"head:{seed}")


def build_head_model(feature_shape: tuple[int, ...], n_classes: int, spec: HeadSpec, *,
                     head_seed: int | None = None) -> keras.Model:
    """The head alone, feature map -> probabilities: with the same ``head_seed`` its layers and
    initial weights are those of ``build_classifier``'s head, without building the backbone."""
    inputs = keras.Input(tuple(int(d) for d in feature_shape), name="features")
    seed_head(head_seed)
    return keras.Model(inputs, build_head(inputs, int(n_classes), spec), name="head")


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
    m = backbone.size_multiple
    if size % m:
        raise ConfigError(
            f"Image size {size} does not suit backbone {backbone.name!r}: it cuts the image into "
            f"{m}x{m} px patches, so the size must be a multiple of {m} (e.g. {size // m * m} or "
            f"{(size // m + 1) * m})."
        )
    return size


def check_fits(backbone: Backbone, size: int, batch_size: int) -> int:
    """``size`` if the backbone takes it and one training batch's activations fit this machine's memory.

    Built once without weights (cheap: nothing runs), the network's layer outputs are counted: a
    training step keeps every one of them, in float32, for the backward pass. More than the memory
    and the process would be killed after the images were decoded; a ConfigError now says the bytes.
    """
    check_size(backbone, size)
    memory = memory_bytes()
    if memory is None:
        return size
    model = backbone.build((size, size, 3), None)
    per_image = size * size * 3 + sum(_elements(t) for layer in model.layers[1:] for t in _outputs(layer))
    del model
    # Layer names are numbered per session: the model trained next is named as if none was built here.
    keras.backend.clear_session()
    need = per_image * 4 * batch_size
    if need > memory:
        # Activations grow with the image's area.
        largest = max(backbone.min_size, int(size * (memory / need) ** 0.5) // backbone.size_multiple
                      * backbone.size_multiple)
        raise ConfigError(f"--size {size} is too large for {backbone.name!r} at --batch-size {batch_size}: a training "
                          f"step keeps about {need:,} bytes of activations, and this machine has {memory:,} bytes. "
                          f"Use --size {largest} or less, or a smaller --batch-size.")
    return size


def _outputs(layer: Any) -> list[Any]:
    out = layer.output
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _elements(tensor: Any) -> int:
    return int(np.prod([d or 1 for d in tensor.shape[1:]]))


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
    head: HeadSpec | None = None,
    head_seed: int | None = None,
) -> Classifier:
    """Build (not compile) a classifier; ``unfrozen`` counts trainable blocks of the base.

    ``head`` defaults to global average pooling, ``dropout`` and the softmax layer; when given,
    its own dropout applies. ``head_seed``: the head's initial weights follow it alone (``seed_head``)."""
    spec = get_backbone(backbone)
    check_size(spec, size)
    if isinstance(n_classes, bool) or not isinstance(n_classes, Integral) or n_classes < 2:
        raise ConfigError(f"Number of classes {n_classes!r} must be an integer of at least 2.")
    head = head if head is not None else HeadSpec(dropout=dropout)
    if head.problems():
        raise ConfigError(" ".join(head.problems()))

    size, n_classes = int(size), int(n_classes)
    base = spec.build((size, size, 3), resolve_weights(spec, weights))
    n_blocks = len(blocks(base))
    trainable_blocks = set_unfrozen(base, unfrozen)
    # Dropout and stochastic depth ignore `trainable`: without this a frozen EfficientNet drops
    # units every epoch on the ordinary path and never on the cached-feature path.
    run_frozen_in_inference(base)
    if bn_momentum is not None:
        set_bn_momentum(base, bn_momentum)

    inputs = keras.Input((size, size, 3), name="image")
    x = Preprocess(spec.preprocess, name="preprocess")(inputs)
    maps = base(x)
    seed_head(head_seed)
    outputs = build_head(maps, n_classes, head)
    model = keras.Model(inputs, outputs, name=f"{spec.name}_classifier")
    return Classifier(
        model=model,
        base=base,
        n_blocks=n_blocks,
        trainable_blocks=trainable_blocks,
        total_params=parameter_count(model),
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
        "imagenet": spec.has_imagenet,
        "imagenet_file": spec.imagenet_file,
        "imagenet_preset": spec.imagenet_preset,
        "size_multiple": spec.size_multiple,
    }
