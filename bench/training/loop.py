"""One training loop for a frozen, unaugmented configuration, on cached features or on images.

``model.fit`` sets up a data pipeline and an epoch iterator for every epoch: on a head over
cached feature maps that set-up was most of the fold (measured on a frozen EfficientNet-Lite0,
64 px, 136 training images: 0.8 of 2.3 s over 3 folds x 10 epochs went to starting epoch
iterators, 0.5 s to the rest of ``fit``'s per-epoch bookkeeping, 0.7 s to the train steps).
Here each epoch is a NumPy permutation and ``train_on_batch`` calls on the model's own compiled
step (its loss, label smoothing, optimizer and loss scaling), driving the same Keras callbacks
``fit`` would through a ``CallbackList``.

Every batch has the same shape, so the step is traced once per trainer: the last batch is padded
with rows of zero sample weight, and its real rows' weights are scaled by ``batch / real`` so the
loss (``sum_over_batch_size``) and its gradient are those of the unpadded batch. The epoch's
``loss`` is the batch-size-weighted mean of the batch losses, as ``fit`` reports it. The epoch's
training ``accuracy`` (shown, never chosen by) counts the padding rows of the last batch too:
Keras' compiled accuracy is unweighted.

The cached path and the image path of an eligible configuration (``features.eligible``) both run
this loop over the same batches, so they train the same head to float16 rounding. Fine-tuning,
augmentation and two-phase training keep ``model.fit``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np


def _batch(x: np.ndarray, y: np.ndarray, w: np.ndarray, rows: np.ndarray, size: int,
           pad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows ``rows`` as float32, padded to ``size`` rows of zero weight when ``pad``."""
    xb = np.asarray(x[rows], dtype="float32")
    yb, wb = y[rows], w[rows]
    real = len(rows)
    if not pad or real == size:
        return xb, yb, wb
    xp = np.zeros((size, *xb.shape[1:]), "float32")
    yp = np.zeros((size, *yb.shape[1:]), yb.dtype)
    wp = np.zeros(size, "float32")
    xp[:real], yp[:real] = xb, yb
    # sum_over_batch_size divides by the padded size: scaled weights give the real batch's loss.
    wp[:real] = wb * (size / real)
    return xp, yp, wp


def train_epochs(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    sample_weight: np.ndarray | None,
    epochs: int,
    batch_size: int,
    seed: int,
    callbacks: Sequence[keras.callbacks.Callback],
    pad: bool = True,
) -> dict[str, list[float]]:
    """Train the compiled ``model`` on ``(x, y)`` (``y`` one-hot) for ``epochs``, shuffled by a
    permutation from ``seed`` each epoch; returns the history as ``fit``'s ``History`` holds it
    (every key the epoch logs have after the callbacks). Stops when a callback sets
    ``model.stop_training``, after the batch (NaN) or the epoch (early stopping, pruning)."""
    n = len(x)
    if n == 0:
        raise ValueError("no training images to train on")
    size = min(batch_size, n)
    steps = math.ceil(n / size)
    w = np.ones(n, "float32") if sample_weight is None else np.asarray(sample_weight, "float32")
    rng = np.random.default_rng(seed)
    # Last, like fit's: the History sees what every callback added to the epoch's logs (val_*, rate).
    record = keras.callbacks.History()
    hooks = keras.callbacks.CallbackList([*callbacks, record], model=model, verbose=0, epochs=epochs, steps=steps)
    model.stop_training = False
    hooks.on_train_begin()
    for epoch in range(epochs):
        hooks.on_epoch_begin(epoch)
        order = rng.permutation(n)
        sums = {"loss": 0.0, "accuracy": 0.0}
        seen = 0
        for step in range(steps):
            rows = order[step * size : (step + 1) * size]
            hooks.on_train_batch_begin(step)
            # train_on_batch resets the metrics first: its logs are this batch's alone.
            logs = model.train_on_batch(*_batch(x, y, w, rows, size, pad), return_dict=True)
            for key in sums:
                sums[key] += float(logs.get(key, math.nan)) * len(rows)
            seen += len(rows)
            hooks.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        epoch_logs = {key: total / max(seen, 1) for key, total in sums.items()}
        hooks.on_epoch_end(epoch, epoch_logs)
        if model.stop_training:
            break
    hooks.on_train_end()
    return {key: [float(v) for v in values] for key, values in record.history.items()}
