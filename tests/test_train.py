"""Training one fold with real Keras on tiny inputs: reuse across folds, BN statistics, NaN."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bench.training.train import (
    FoldTrainer,
    TrainConfig,
    auto_bn_momentum,
    reestimate_batchnorm,
)


def toy_data(n: int = 96, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes told apart by brightness: learnable in a couple of epochs."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.integers(0, 90, (n, size, size, 3)) + 120 * y[:, None, None, None]
    return x.astype(np.uint8), y


def config(**kw) -> TrainConfig:
    base = dict(backbone="simple_cnn", size=32, epochs=3, lr=3e-3, batch_size=16, augment="none",
                early_stopping=0, reduce_lr=0, seed=1)
    base.update(kw)
    return TrainConfig(**base)


def test_auto_bn_momentum_is_matched_to_steps():
    assert auto_bn_momentum(160, 32) == pytest.approx(0.8)
    assert auto_bn_momentum(10_000, 32) == 0.99
    assert auto_bn_momentum(8, 32) == 0.5


def test_second_fold_learns_with_fresh_optimizer_state_and_learning_rate():
    x, y = toy_data()
    trainer = FoldTrainer(config(reduce_lr=1, epochs=4), n_classes=2, n_train_hint=64)
    first = trainer.fit_fold(0, x[:64], y[:64], x[64:], y[64:])
    assert first.ok
    # Simulate what ReduceLROnPlateau does to the shared optimizer, then check reset undoes it.
    trainer.optimizer.learning_rate.assign(1e-9)
    trainer.reset()
    assert trainer.learning_rate == pytest.approx(3e-3)
    assert int(keras.ops.convert_to_numpy(trainer.optimizer.iterations)) == 0
    moments = [v for v in trainer.optimizer.variables if "momentum" in v.path or "velocity" in v.path]
    assert moments and all(np.all(keras.ops.convert_to_numpy(v) == 0) for v in moments)
    weights0 = [np.array(w) for w in trainer._weights0]
    now = [keras.ops.convert_to_numpy(w) for w in trainer.model.weights]
    assert all(np.array_equal(a, b) for a, b in zip(weights0, now))
    second = trainer.fit_fold(1, x[32:], y[32:], x[:32], y[:32])
    assert second.ok
    losses = second.history["loss"]
    assert losses[-1] < losses[0] * 0.9, losses  # fold 2 really trains (an LR of 0 would not)
    acc = (second.proba.argmax(1) == y[:32]).mean()
    assert acc > 0.8, acc


def test_bn_reestimation_gives_exact_training_statistics():
    inputs = keras.Input((4,))
    bn = keras.layers.BatchNormalization(momentum=0.99)
    model = keras.Model(inputs, bn(inputs))
    rng = np.random.default_rng(0)
    x = (rng.normal(5.0, 3.0, (64, 4))).astype("float32")
    used = reestimate_batchnorm(model, x, batch_size=16)  # 2-D input: chunks of batch_size
    assert used == 64
    batch_means = x.reshape(4, 16, 4).mean(axis=1).mean(axis=0)
    batch_vars = x.reshape(4, 16, 4).var(axis=1).mean(axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), batch_means, rtol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), batch_vars, rtol=1e-3)
    assert bn.momentum == 0.99  # restored


@pytest.mark.slow  # over 30 s on 2 cores: CI runs it with the slow suite
def test_from_scratch_predictions_do_not_collapse_to_one_class():
    x, y = toy_data(n=128, seed=3)
    trainer = FoldTrainer(config(backbone="mobilenet_v2", epochs=2, lr=1e-3, bn_momentum="auto"),
                          n_classes=2, n_train_hint=96)
    result = trainer.fit_fold(0, x[:96], y[:96], x[96:], y[96:])
    assert result.ok
    predicted = result.proba.argmax(1)
    assert len(set(predicted)) == 2, "inference-mode predictions collapsed to one class"
    assert (predicted == y[96:]).mean() > 0.7


def test_nan_loss_ends_the_fold_with_a_reason():
    x, y = toy_data(n=32)
    bad = x.astype("float32")
    bad[3, 0, 0, 0] = np.nan
    trainer = FoldTrainer(config(epochs=2), n_classes=2, n_train_hint=24)
    result = trainer.fit_fold(0, bad[:24], y[:24], bad[24:], y[24:])
    assert not result.ok and result.status.startswith("nan_loss at epoch 1")
    assert result.proba is None


@pytest.mark.parametrize("name", ["adamw", "sgd", "rmsprop"])
def test_every_optimizer_trains_and_resets(name):
    x, y = toy_data(n=48)
    trainer = FoldTrainer(config(optimizer=name, epochs=1, lr=1e-2), n_classes=2, n_train_hint=32)
    assert trainer.fit_fold(0, x[:32], y[:32], x[32:], y[32:]).ok
    trainer.reset()
    assert trainer.learning_rate == pytest.approx(1e-2)


def test_bad_training_values_are_config_errors():
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match="Unknown optimizer 'adma'.*'adam'"):
        TrainConfig(optimizer="adma")
    with pytest.raises(ConfigError, match="--lr must be positive"):
        TrainConfig(lr=0)


def _tracing_count(model: keras.Model) -> int:
    """Traces of the compiled train step (Keras keeps the tf.function in a closure)."""
    cells = [c.cell_contents for c in model.train_function.__closure__ or ()]
    return sum(f.experimental_get_tracing_count() for f in cells if hasattr(f, "experimental_get_tracing_count"))


def test_a_later_fold_neither_retraces_nor_clears_compiled_kernels(monkeypatch):
    # tf.random.set_seed clears TensorFlow's kernel cache, so a per-fold reseed through it made
    # every later fold re-instantiate the compiled train step (17 s vs 3 s on MobileNetV2 64 px).
    from tensorflow.python import pywrap_tfe

    x, y = toy_data(n=80)
    trainer = FoldTrainer(config(epochs=2, inner_val=0.2), n_classes=2, n_train_hint=48)
    first = trainer.fit_fold(0, x[:48], y[:48], x[64:], y[64:], x[48:64], y[48:64])
    traces = _tracing_count(trainer.model)
    clears = []
    real_clear = pywrap_tfe.TFE_ContextClearCaches
    monkeypatch.setattr(pywrap_tfe, "TFE_ContextClearCaches", lambda h: (clears.append(h), real_clear(h)))
    second = trainer.fit_fold(1, x[16:64], y[16:64], x[:16], y[:16], x[64:], y[64:])
    assert first.ok and second.ok
    assert clears == []
    assert _tracing_count(trainer.model) == traces == 1
