"""Which path a fold's training takes: on cached frozen features, or images through the backbone.

The trainer knows both paths (``FoldTrainer(on_features=...)``) and calls the feature strategy
(``bench.training.features``) through its small interface; this module, above both, makes the
choice, so neither imports the other back.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bench.models import get_backbone, resolve_weights
from bench.training import features
from bench.training.pool import POOL


def trainer_for(config: Any, data: Any, n_train_hint: int, *, cache_dir: Path | None = None) -> tuple[Any, np.ndarray, features.Features | None]:
    """``(trainer, inputs, features)`` for ``config`` on prepared ``data``: a trainer on cached
    features (``inputs`` their array, rows aligned with ``data.images``) when the configuration
    allows it and the entry fits the budget, else the ordinary trainer on ``data.images``. Either
    comes from the process's trainer pool (``bench.training.pool``): built, or an earlier trial's
    renewed."""
    n_classes = len(data.index.classes)
    # With the cache turned off (a budget of 0) nothing could be cached: do not build the
    # on-features trainer only to build the ordinary one after it.
    if features.eligible(config) and features.budget_bytes() > 0:
        weights_file = resolve_weights(get_backbone(config.backbone), config.weights)

        def key(base: Any) -> str:
            return features.feature_key(features.images_id(data), config.size, data.resize, config.backbone,
                                        features.weights_identity(weights_file, base))

        # A weights file names the backbone without building it: with its features cached, the
        # trainer is the head alone (the classifier is assembled if something asks for it). A
        # random-init backbone is named by its built weights, so it is built.
        entry = features.peek(key(None), cache_dir=cache_dir) if weights_file is not None else None
        if entry is not None:
            trainer = POOL.trainer(config, n_classes, n_train_hint, on_features=True,
                                   feature_shape=entry.feature_shape, base_params=entry.base_params)
            found = features.load_or_build(lambda: trainer.extractor, data.images, key(None), cache_dir=cache_dir,
                                           feature_shape=entry.feature_shape)
        else:
            trainer = POOL.trainer(config, n_classes, n_train_hint, on_features=True)
            found = features.load_or_build(trainer.extractor, data.images, key(trainer.parts.base),
                                           cache_dir=cache_dir)
        if found is not None:
            return trainer, found.array, found
    return POOL.trainer(config, n_classes, n_train_hint), data.images, None
