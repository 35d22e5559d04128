"""Input scaling inside the model, so every model takes the same 0..255 RGB images.

Putting the backbone's preprocessing in the graph (rather than in the data pipeline) means the
image cache, augmentation and the frozen-feature cache never need to know which backbone they
feed, and a saved model carries its own preprocessing. The modes reproduce
``keras.applications.<module>.preprocess_input`` (tested against it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from bench.errors import ConfigError, close_matches

_IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
_IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# Caffe means are in BGR order, applied after the channel flip (as keras' imagenet_utils does).
_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def _caffe(x: Any) -> Any:
    return ops.flip(x, axis=-1) - ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype=x.dtype)


def _tf(x: Any) -> Any:
    return x / 127.5 - 1.0


def _torch(x: Any) -> Any:
    mean = ops.convert_to_tensor(_IMAGENET_MEAN_RGB, dtype=x.dtype)
    std = ops.convert_to_tensor(_IMAGENET_STD_RGB, dtype=x.dtype)
    return (x / 255.0 - mean) / std


def _lite(x: Any) -> Any:
    # TensorFlow's EfficientNet-Lite input pipeline (MEAN_RGB 127, STDDEV_RGB 128), which the
    # Lite0 weights were trained with; close to, but not the same as, 'tf' (127.5, 127.5).
    return (x - 127.0) / 128.0


def _raw(x: Any) -> Any:
    return x


MODES: dict[str, Callable[[Any], Any]] = {
    "caffe": _caffe,  # RGB->BGR, minus the ImageNet mean (ResNet50, VGG16)
    "tf": _tf,  # [-1, 1] (ResNet50V2, InceptionV3, MobileNetV2)
    "torch": _torch,  # [0, 1], ImageNet mean/std (DenseNet)
    "lite": _lite,  # (x - 127) / 128, as TensorFlow's EfficientNet-Lite was trained (Lite0)
    "raw": _raw,  # 0..255 untouched: the backbone has its own preprocessing layers
}


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(
            f"Unknown preprocessing mode {mode!r}.{close_matches(mode, MODES)} "
            f"Use one of: {', '.join(MODES)}."
        )
    return mode


def preprocessing_identity(mode: str) -> str:
    """What a mode computes, not only its name: the mode and a digest of its output on a fixed
    0..255 ramp, so that a change to a mode's arithmetic (a mean, a scale) changes the identity
    of anything computed through it (the frozen-feature cache's entries)."""
    probe = np.linspace(0.0, 255.0, 4 * 4 * 3, dtype="float32").reshape(1, 4, 4, 3)
    out = ops.convert_to_numpy(MODES[check_mode(mode)](ops.convert_to_tensor(probe, "float32")))
    return f"{mode}:" + hashlib.sha256(np.ascontiguousarray(out, dtype="float32").tobytes()).hexdigest()[:16]


@keras.saving.register_keras_serializable(package="bench")
class Preprocess(keras.layers.Layer):
    """Map 0..255 RGB (channels last) to what a backbone was trained on."""

    def __init__(self, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mode = check_mode(mode)

    def call(self, inputs: Any) -> Any:
        return MODES[self.mode](ops.cast(inputs, self.compute_dtype))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}
