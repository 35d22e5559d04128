"""Named augmentation policies built from Keras preprocessing layers.

Policies act on 0..255 RGB batches, before the backbone's own preprocessing, and only while
training: the layers are identities in inference mode. They live in a registry so a search space
can name them and a new policy is one decorated function.
"""

from __future__ import annotations

from collections.abc import Callable

import keras

from bench.errors import ConfigError, close_matches

Policy = Callable[[int], list[keras.layers.Layer]]
POLICIES: dict[str, Policy] = {}


def register_policy(name: str) -> Callable[[Policy], Policy]:
    def wrap(fn: Policy) -> Policy:
        POLICIES[name] = fn
        return fn

    return wrap


@register_policy("none")
def _none(seed: int) -> list[keras.layers.Layer]:
    return []


@register_policy("light")
def _light(seed: int) -> list[keras.layers.Layer]:
    return [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.03, fill_mode="constant", seed=seed + 1),
        keras.layers.RandomZoom(0.1, fill_mode="constant", seed=seed + 2),
    ]


@register_policy("medium")
def _medium(seed: int) -> list[keras.layers.Layer]:
    return [
        keras.layers.RandomFlip("horizontal", seed=seed),
        keras.layers.RandomRotation(0.06, fill_mode="constant", seed=seed + 1),
        keras.layers.RandomZoom(0.15, fill_mode="constant", seed=seed + 2),
        keras.layers.RandomTranslation(0.08, 0.08, fill_mode="constant", seed=seed + 3),
        keras.layers.RandomContrast(0.15, seed=seed + 4),
    ]


@register_policy("heavy")
def _heavy(seed: int) -> list[keras.layers.Layer]:
    # Vertical flips and stronger photometric changes suit endoscopy and histology, whose
    # orientation carries no meaning; for chest X-rays prefer light or medium.
    return [
        keras.layers.RandomFlip("horizontal_and_vertical", seed=seed),
        keras.layers.RandomRotation(0.1, fill_mode="constant", seed=seed + 1),
        keras.layers.RandomZoom(0.2, fill_mode="constant", seed=seed + 2),
        keras.layers.RandomTranslation(0.1, 0.1, fill_mode="constant", seed=seed + 3),
        keras.layers.RandomContrast(0.25, seed=seed + 4),
        keras.layers.RandomBrightness(0.15, value_range=(0.0, 255.0), seed=seed + 5),
    ]


def policy_layers(name: str, seed: int = 0) -> list[keras.layers.Layer]:
    if name not in POLICIES:
        raise ConfigError(
            f"Unknown augmentation policy '{name}'.{close_matches(name, POLICIES)} "
            f"Allowed: {', '.join(POLICIES)}."
        )
    return POLICIES[name](seed)
