"""Checks of the backbones a space can choose against its sizes and ImageNet weights.

Shared by loading a space (its parameters) and by pinning values on the command line.
"""

from __future__ import annotations

from bench.errors import ConfigError
from bench.search.space._fields import NO_WEIGHTS


def _check_sizes(where: str, backbones: list[str], sizes: list[int]) -> None:
    from bench.models import get_backbone

    smallest = min(sizes)
    for name in backbones:
        spec = get_backbone(name)
        if smallest < spec.min_size:
            raise ConfigError(
                f"{where}: size {smallest} is too small for backbone '{name}', which needs at least "
                f"{spec.min_size} px; use a size of {spec.min_size} or more, or drop '{name}'."
            )
        odd = [s for s in sizes if s % spec.size_multiple]
        if odd:
            raise ConfigError(
                f"{where}: size {odd[0]} does not suit backbone '{name}', which cuts images into "
                f"{spec.size_multiple}x{spec.size_multiple} px patches: use multiples of "
                f"{spec.size_multiple}, or drop '{name}'."
            )


def _check_imagenet(where: str, backbones: list[str]) -> None:
    from bench.models import get_backbone

    missing = [b for b in backbones if not get_backbone(b).has_imagenet]
    if missing:
        raise ConfigError(
            f"{where}: weights 'imagenet', but {', '.join(repr(b) for b in missing)} "
            f"{'has' if len(missing) == 1 else 'have'} no ImageNet weights; drop "
            f"{'it' if len(missing) == 1 else 'them'} or use weights '{NO_WEIGHTS}'."
        )
