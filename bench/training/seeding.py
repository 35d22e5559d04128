"""Seeding a fold or a build without clearing TensorFlow's compiled kernels."""

from __future__ import annotations

import random

import keras
import numpy as np


def reseed(seed: int) -> None:
    """Seed Python, NumPy and Keras' global seed generator for one fold, leaving TensorFlow's
    global seed as the build set it.

    ``keras.utils.set_random_seed`` calls ``tf.random.set_seed``, which clears TensorFlow's kernel
    cache: every fold after the first then re-instantiated and re-optimised the compiled train
    step (measured on MobileNetV2 64 px: a later fold's first epoch 17 s against 3 s for its other
    epochs). TensorFlow's seed is set once per trial, when its trainer is built or renewed
    (``reseed_all``).
    """
    if keras.backend.backend() != "tensorflow":
        keras.utils.set_random_seed(seed)  # clears no compiled state on other backends
        return
    from keras.src.backend.common import global_state
    from keras.src.random.seed_generator import GLOBAL_SEED_GENERATOR
    from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED

    # What keras.utils.set_random_seed does, but for tf.random.set_seed.
    global_state.set_global_attribute(GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(GLOBAL_SEED_GENERATOR, None)
    random.seed(seed)
    np.random.seed(seed)


def reseed_all(seed: int) -> None:
    """What ``keras.utils.set_random_seed`` does, TensorFlow's global seed included, but without
    clearing TensorFlow's kernel cache: a trainer kept for a later trial (bench.training.pool)
    would otherwise pay its compiled step's re-instantiation whenever another model is built.
    The seed still reaches everything that reads it (the shuffle of ``fit``'s data pipeline)."""
    reseed(seed)
    if keras.backend.backend() != "tensorflow":
        return
    from tensorflow.python.eager import context

    ctx = context.context()
    ctx._seed = seed  # tf.random.set_seed minus TFE_ContextClearCaches (context._set_global_seed)
    ctx._rng = random.Random(seed)
