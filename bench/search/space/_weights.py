"""Backbone choices marked ``if_weights_present``: left out where their ImageNet weights are absent."""

from __future__ import annotations

from dataclasses import replace

from bench.errors import ConfigError
from bench.search.space._param import Param


def _drop_absent_weights(params: dict[str, Param]) -> list[str]:
    """Leave out the backbone choices whose ImageNet weights this machine does not have.

    The space's fingerprint follows the choices kept, so a study made without them refuses to
    resume once they appear (its space would differ), rather than silently changing.
    """
    backbone = params.get("backbone")
    if backbone is None or not backbone.if_weights_present:
        return []
    from bench.models import get_backbone
    from bench.models.weights import imagenet_path

    absent = [b for b in backbone.if_weights_present if imagenet_path(get_backbone(b)) is None]
    if not absent:
        return []
    kept = tuple(c for c in backbone.choices or () if c not in absent)
    if not kept:
        raise ConfigError(f"[params.backbone] (line {backbone.line}): every choice needs ImageNet weights that "
                          f"this machine does not have ({', '.join(absent)}): see `bench weights list`.")
    params["backbone"] = replace(backbone, choices=kept)
    hints = "; ".join(_weights_hint(b) for b in absent)
    return [f"Backbone(s) {', '.join(absent)} left out of this search: no ImageNet weights on this machine ({hints})."]


def _weights_hint(backbone: str) -> str:
    from bench.models import get_backbone

    convert = get_backbone(backbone).imagenet_convert
    return f"`bench weights convert {convert}`" if convert else f"`bench weights pull {backbone}`"
