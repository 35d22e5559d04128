"""Test-time augmentation: the flips a TTA set averages over, shared by every place that predicts.

``bench final --tta`` scores the refit (and the fold ensemble) under these sets; ``bench evaluate
--tta``, ``bench export --tta`` and ``bench predict --tta`` apply the very same ones, so a number
scored under "flip" and a prediction made under "flip" mean the same transforms. It lives here,
below ``bench.evaluation``, because ``bench.deploy.predict`` needs it and may not import upwards.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bench.errors import ConfigError

# A flip maps uint8 images (n, height, width, 3) to their mirror images.
Transform = Callable[[Any], Any]
TRANSFORMS: dict[str, Transform] = {
    "identity": lambda x: x,
    "hflip": lambda x: x[:, :, ::-1],
    "vflip": lambda x: x[:, ::-1],
    "hvflip": lambda x: x[:, ::-1, ::-1],
}
# The TTA sets ``--tta`` names. "flip" leaves out vertical flips: an upside-down chest X-ray or
# fundus photo is not an image the model will meet. "flip-hv" is for images without an up
# (dermoscopy, histology, microscopy).
TTA_SETS: dict[str, tuple[str, ...]] = {
    "none": ("identity",),
    "flip": ("identity", "hflip"),
    "flip-hv": ("identity", "hflip", "vflip", "hvflip"),
}


def tta_names(name: str) -> tuple[str, ...]:
    if name not in TTA_SETS:
        raise ConfigError(f"--tta {name!r} is not a TTA set; choose one of {', '.join(TTA_SETS)}.")
    return TTA_SETS[name]


def tta_proba(predict: Callable[[Any], Any], images: Any, name: str) -> Any:
    """The mean of ``predict`` over the images under each transform of the TTA set ``name``."""
    import numpy as np

    return np.mean([predict(TRANSFORMS[t](images)) for t in tta_names(name)], axis=0)


def variant_name(base: str, tta: str) -> str:
    """The name ``bench final`` records a variant under: ``refit+tta`` for the refit under a TTA set."""
    return base if tta == "none" else f"{base}+tta"
