"""The head's dropout, with its rate a value the trainer sets rather than a constant of the graph.

``keras.layers.Dropout`` keeps its rate as a Python float that TensorFlow captures when it traces
a training step, so two trials that differ only in dropout needed two traced graphs (MobileNetV2
at 64 px: 16-18 s each) and a search over a float dropout never reused a compiled trainer
(``bench.training.pool``). ``RateDropout`` holds its rate in a non-trainable scalar variable:
``set_dropout_rate`` changes it on a built, compiled model, and the traced step reads the new value.

The rate is one of the model's ``weights`` (the trainer's snapshots and the head -> classifier
copy carry it; a saved model restores it) but not a parameter: ``parameter_count`` leaves it out.
``keras.random.dropout`` cannot take it (TensorFlow's backend tests ``rate == 0`` in Python), so
the mask is drawn here, the same way: keep where uniform noise >= rate, scale by 1 / (1 - rate).
A rate of 0 keeps every unit and divides by 1, the identity in value.
"""

from __future__ import annotations

from numbers import Real
from typing import Any

import keras
from keras import ops

from bench.errors import ConfigError
from bench.models.blocks import iter_layers


def _check(rate: float) -> float:
    if isinstance(rate, bool) or not isinstance(rate, Real) or not 0.0 <= rate < 1.0:
        raise ConfigError(f"Dropout rate {rate!r} must be a number in [0, 1).")
    return float(rate)


@keras.saving.register_keras_serializable(package="bench")
class RateDropout(keras.layers.Layer):
    """Dropout in training, the identity in inference, at the rate its variable holds now."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seed = seed
        # Unseeded, the generator's seed comes from Python's `random` at this point, as Keras'
        # Dropout's does: the head's streams follow `bench.models.seed_head`.
        self.seed_generator = keras.random.SeedGenerator(seed)
        # float32 whatever the dtype policy (not autocast): the value is cast where it is used.
        self.rate_variable = self.add_weight(shape=(), initializer=keras.initializers.Constant(_check(rate)),
                                             trainable=False, autocast=False, dtype="float32", name="rate")
        self.supports_masking = True
        self._build_at_init()

    @property
    def rate(self) -> float:
        return float(ops.convert_to_numpy(self.rate_variable))

    def set_rate(self, rate: float) -> None:
        self.rate_variable.assign(_check(rate))

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if not training:
            return inputs
        rate = ops.cast(self.rate_variable, inputs.dtype)
        noise = keras.random.uniform(ops.shape(inputs), dtype=inputs.dtype, seed=self.seed_generator)
        return ops.where(noise >= rate, inputs / (1.0 - rate), ops.zeros_like(inputs))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def dropout_layers(model: keras.Model) -> list[RateDropout]:
    return [layer for layer in iter_layers(model) if isinstance(layer, RateDropout)]


def set_dropout_rate(model: keras.Model, rate: float) -> int:
    """Set ``rate`` on every ``RateDropout`` of ``model`` (nested ones too); return how many."""
    layers = dropout_layers(model)
    for layer in layers:
        layer.set_rate(rate)
    return len(layers)


def parameter_count(model: keras.Model) -> int:
    """``model.count_params()`` without the dropout rates: a rate is a setting, not a parameter."""
    return int(model.count_params()) - len(dropout_layers(model))
