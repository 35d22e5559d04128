"""BatchNormalization on small sets: momentum matched to the steps per epoch, and statistics
re-estimated as exact averages after training (like torch.optim.swa_utils.update_bn).

Keras' moving-average momentum (0.99, 0.999 in MobileNetV2) leaves the moving statistics near
their initial values after a few hundred steps, and inference-mode predictions collapse to one
class; see ``bench.training.train``.
"""

from __future__ import annotations

import math

import keras
import numpy as np

# BN statistics re-estimation looks at this many training images at most: the mean and variance
# of a few hundred images are accurate, and on large sets a full pass would cost an epoch.
BN_REESTIMATE_MAX_IMAGES = 512
# Before each validation pass during training, a cheaper refresh on this many images.
BN_REFRESH_IMAGES = 128


def auto_bn_momentum(n_train: int, batch_size: int) -> float:
    """A momentum whose averaging window is about one epoch, within Keras' usual [0.5, 0.99]."""
    steps = max(1, math.ceil(n_train / batch_size))
    return float(min(0.99, max(0.5, 1.0 - 1.0 / steps)))


def _batchnorms(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [l for l in model._flatten_layers() if isinstance(l, keras.layers.BatchNormalization) and l.trainable]


def _chunk_size(image_side: int) -> int:
    """Images per forward call: large chunks amortise eager dispatch (measured on MobileNetV2
    64 px: 8 calls of 32 images 2.2 s, 1 call of 256 images 0.75 s); the pixel budget keeps
    activation memory near that of 256 images at 64 px."""
    return int(max(16, min(256, 256 * (64 / max(image_side, 1)) ** 2)))


def reestimate_batchnorm(
    model: keras.Model, x: np.ndarray, batch_size: int = 0, seed: int = 0, limit: int = BN_REESTIMATE_MAX_IMAGES
) -> int:
    """Recompute moving mean/variance of trainable BN layers from ``x`` (at most ``limit`` images).

    Momentum ``i/(i+1)`` at chunk i makes the moving statistics the plain average of the chunk
    statistics. Runs eagerly so the changed momentum is read on every call. ``batch_size`` is
    kept for callers; chunks are sized by image area instead. Returns the number of images used.
    """
    layers = _batchnorms(model)
    if not layers or len(x) == 0:
        return 0
    if len(x) > limit:
        pick = np.random.default_rng(seed).choice(len(x), limit, replace=False)
        x = x[np.sort(pick)]
    saved = [l.momentum for l in layers]
    chunk = _chunk_size(x.shape[1]) if x.ndim == 4 else max(batch_size, 16)
    try:
        for i, start in enumerate(range(0, len(x), chunk)):
            for l in layers:
                l.momentum = i / (i + 1)
            model(keras.ops.convert_to_tensor(x[start : start + chunk].astype("float32")), training=True)
    finally:
        for l, m in zip(layers, saved):
            l.momentum = m
    return len(x)
