"""Where a backbone's starting weights come from: none, ImageNet, or a file.

ImageNet weights are looked up as local files first (``$BENCH_WEIGHTS``, then Keras' own cache)
and only downloaded when missing, so runs on machines without internet work once the files are
in place, and a failed download says which file to put where instead of a urllib traceback.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import keras

from bench.errors import ConfigError
from bench.models.registry import Backbone
from bench.paths import OFFLINE_ENV, offline  # noqa: F401 - re-exported for bench.models.store

WEIGHTS_ENV = "BENCH_WEIGHTS"
NO_WEIGHTS = {"none", "random", "scratch", ""}


def keras_cache_dir() -> Path:
    """Keras' download cache for application weights: ``$KERAS_HOME/models`` or ``~/.keras/models``.

    Read from the environment at call time (Keras reads KERAS_HOME once, at import) so that
    setting it after ``import keras`` still moves the cache for bench.
    """
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return Path(home) / "models"


def weights_dirs() -> list[Path]:
    """Folders searched for ImageNet weight files, in order."""
    dirs = [keras_cache_dir()]
    if os.environ.get(WEIGHTS_ENV):
        dirs.insert(0, Path(os.environ[WEIGHTS_ENV]).expanduser())
    return dirs


def imagenet_path(backbone: Backbone) -> Path | None:
    """The local ImageNet weights for ``backbone``, or None if they are not on this machine.

    A weights file, or for a keras-hub backbone its preset folder ``<weights folder>/<preset>/``
    (one holding the preset's config.json: a half-copied folder without it does not count).
    """
    if backbone.imagenet_preset is not None:
        for folder in weights_dirs():
            if (folder / backbone.imagenet_preset / "config.json").is_file():
                return folder / backbone.imagenet_preset
        return None
    if backbone.imagenet_file is None:
        return None
    for folder in weights_dirs():
        candidate = folder / backbone.imagenet_file
        if candidate.is_file():
            return candidate
    return None


def load_weights_file(model: keras.Model, path: str | Path) -> None:
    """Load a weights file into a backbone, turning a mismatch into an error the user can fix."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(str(path))
    except Exception as err:  # h5py / Keras raise a zoo of types for bad or foreign files
        # Keras lists every layer that failed; its first sentence says enough.
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise _mismatch(model, path, reason.split(" Example error message")[0]) from err
    # Keras only *warns* when parts of a `.weights.h5` file do not match the model and leaves
    # those layers at their random init: for a "pretrained" base that is a silent failure.
    skipped = [w for w in caught if "freshly-initialized" in str(w.message)]
    if skipped:
        raise _mismatch(model, path, str(skipped[0].message).split(":")[0] + ".")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _mismatch(model: keras.Model, path: str | Path, reason: str) -> ConfigError:
    return ConfigError(
        f"Could not load weights file {str(path)!r} into backbone {model.name!r}: "
        f"{reason.rstrip('. ')}. "
        "The file must hold weights for this same backbone without its top (an ImageNet "
        "'notop' file or a `save_weights` file of the base); if it is a partial download, "
        "delete it and fetch it again."
    )
