"""The layers a ``FoldTrainer`` fits, built (not compiled) under its configuration's seed.

``Graph`` is the whole classifier and the model the trainer fits: the classifier behind the
augmentation, or, on cached features, the classifier's own head split off at the backbone.
``HeadGraph`` is the head alone on an input of the feature map's shape, for a trainer whose
features are already cached: building a backbone only to split its head off cost about a second
per trial (EfficientNet-Lite0), and as much again whenever a pooled trainer took a new seed. Both
seed the head the same way (``bench.models.seed_head``), so the head alone starts from the very
weights of the classifier's head, and the classifier is assembled only when something needs it
(export, Grad-CAM, test-time augmentation on images).
"""

from __future__ import annotations

from typing import Any

import keras

from bench.models import build_classifier, build_head_model
from bench.training import features
from bench.training.augment import policy_layers
from bench.training.seeding import reseed_all


class Graph:
    """The classifier, and the model the trainer fits (the classifier behind the augmentation, or
    the head on features)."""

    def __init__(self, config: Any, n_classes: int, bn_momentum: float | None, on_features: bool) -> None:
        reseed_all(config.seed)
        self.parts = build_classifier(
            config.backbone, n_classes, config.size, weights=config.weights,
            unfrozen=config.unfrozen, bn_momentum=bn_momentum, head=config.head(), head_seed=config.seed,
        )
        self.classifier: keras.Model = self.parts.model
        # What the inputs go through: the classifier, or its head on features. BN re-estimation runs on it.
        self.core = self.classifier
        self.extractor: keras.Model | None = None
        self.head_model: keras.Model | None = None
        if on_features:
            self.extractor, self.core = features.split_at_backbone(self.classifier, self.parts.base)
            self.model = self.core
            return
        inputs = keras.Input((config.size, config.size, 3), name="image")
        x = inputs
        for layer in policy_layers(config.augment, seed=config.seed):
            x = layer(x)
        # Augmentation wraps the classifier instead of living inside it: the classifier is what
        # gets exported, and BN re-estimation runs on un-augmented images.
        outputs = self.classifier(x)
        self.model = keras.Model(inputs, outputs, name="train_model")
        if config.head_epochs:
            self.head_model = keras.Model(inputs, outputs, name="head_train_model")


class HeadGraph:
    """The head alone on feature maps of ``feature_shape``: no classifier until one is assembled."""

    def __init__(self, config: Any, n_classes: int, feature_shape: tuple[int, ...]) -> None:
        reseed_all(config.seed)  # what Graph leaves behind, for the same first fold
        self.model = self.core = build_head_model(feature_shape, n_classes, config.head(), head_seed=config.seed)
        self.head_model: keras.Model | None = None


def assemble(config: Any, n_classes: int, bn_momentum: float | None, head: keras.Model) -> Graph:
    """The whole classifier around a head trained alone: built under ``config``'s seed (its
    backbone from the weights file, as the features were computed), holding ``head``'s weights."""
    full = Graph(config, n_classes, bn_momentum, on_features=True)
    copy_weights(head, full.core)
    return full


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """``target``'s weights := ``source``'s, layer for layer (two builds of one head)."""
    pairs = list(zip(source.weights, target.weights, strict=True))
    for a, b in pairs:
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(f"head weights do not line up: {a.path} {a.shape} vs {b.path} {b.shape}")
    for a, b in pairs:
        b.assign(keras.ops.convert_to_numpy(a))
