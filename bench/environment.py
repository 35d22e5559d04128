"""What the run ran on: versions, backend, device (recorded in every manifest); and environment
variables set for the length of a block."""

from __future__ import annotations

import contextlib
import os
import platform
import sys
from collections.abc import Iterator, Mapping
from importlib import metadata
from typing import Any

PACKAGES = ("bench", "keras", "tensorflow", "tensorflow-cpu", "torch", "jax", "optuna", "keras-tuner",
            "scikit-learn", "numpy", "pandas", "pillow")


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def device() -> dict[str, Any]:
    import keras

    backend = keras.backend.backend()
    info: dict[str, Any] = {"backend": backend, "cpu_count": os.cpu_count(), "machine": platform.machine()}
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        info["gpus"] = [g.name for g in gpus]
    elif backend == "torch":
        import torch

        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    elif backend == "jax":
        import jax

        info["gpus"] = [str(d) for d in jax.devices() if d.platform == "gpu"]
    info["device"] = "gpu" if info.get("gpus") else "cpu"
    info["mixed_precision"] = keras.mixed_precision.global_policy().name
    return info


def describe() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions(),
        **device(),
    }


@contextlib.contextmanager
def temporary_env(values: Mapping[str, str], *, override: bool = True) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block, then put back what was there.

    ``override=False`` leaves a variable the user already set as it is.
    """
    if not override:
        values = {k: v for k, v in values.items() if k not in os.environ}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
