"""The head's RateDropout: its rate is a variable a compiled model reads at every step (so a trainer
can change it without tracing again), 0 is the identity, inference never drops, parameter counts
leave the rate out, and a saved classifier restores its rate in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from bench.errors import ConfigError
from bench.models import (
    HeadSpec,
    RateDropout,
    build_classifier,
    build_head_model,
    parameter_count,
    set_dropout_rate,
)

REPO = Path(__file__).resolve().parents[1]


def maps(n: int = 64) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(n, 2, 2, 8)).astype("float32")


def test_the_rate_applies_in_training_only() -> None:
    head = build_head_model((2, 2, 8), 2, HeadSpec(layers=1, units=16, dropout=0.0), head_seed=1)
    x = maps()
    inference = np.asarray(head(x, training=False))
    assert np.array_equal(np.asarray(head(x, training=True)), inference)  # rate 0: the identity in value
    assert set_dropout_rate(head, 0.5) == 2  # before the hidden dense layer and before the classifier
    assert [layer.rate for layer in head.layers if isinstance(layer, RateDropout)] == [0.5, 0.5]
    assert not np.allclose(np.asarray(head(x, training=True)), inference)
    assert np.array_equal(np.asarray(head(x, training=False)), inference)  # inference never drops


def test_the_rate_reaches_a_compiled_train_step() -> None:
    """A training step traced at rate 0 drops units once the rate is set higher (learning rate 0:
    the weights stay, only the dropout can change the loss)."""
    head = build_head_model((2, 2, 8), 2, HeadSpec(dropout=0.0), head_seed=1)
    head.compile(optimizer=keras.optimizers.SGD(0.0), loss="categorical_crossentropy")
    x, y = maps(), np.eye(2, dtype="float32")[np.arange(64) % 2]

    def loss_at(rate: float) -> float:
        set_dropout_rate(head, rate)
        return float(head.train_on_batch(x, y))

    off = loss_at(0.0)
    assert loss_at(0.0) == off  # rate 0: nothing random in the step
    assert loss_at(0.9) != off
    assert loss_at(0.0) == off


def test_bad_rates_are_config_errors() -> None:
    with pytest.raises(ConfigError, match=r"Dropout rate 1.0 must be a number in \[0, 1\)"):
        RateDropout(1.0)
    layer = RateDropout(0.2)
    with pytest.raises(ConfigError, match="-0.1"):
        layer.set_rate(-0.1)
    assert layer.rate == pytest.approx(0.2)


def test_parameter_counts_leave_the_rates_out() -> None:
    clf = build_classifier("simple_cnn", 3, 32, head=HeadSpec(layers=2, units=8, dropout=0.1))
    rates = [w for w in clf.model.weights if w.path.endswith("/rate")]
    assert len(rates) == 3 and not any(w.trainable for w in rates)
    assert clf.total_params == clf.model.count_params() - 3 == parameter_count(clf.model)
    assert clf.trainable_params == sum(int(np.prod(w.shape)) for w in clf.model.trainable_weights)


def test_a_saved_classifier_restores_its_rate_in_a_fresh_process(tmp_path: Path) -> None:
    clf = build_classifier("simple_cnn", 2, 32, head=HeadSpec(layers=1, units=8, dropout=0.1), head_seed=4)
    set_dropout_rate(clf.model, 0.35)  # what a pooled trainer does for a later trial
    images = np.random.default_rng(1).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    expected = np.asarray(clf.model.predict(images, verbose=0))
    path, inputs, out = tmp_path / "model.keras", tmp_path / "x.npy", tmp_path / "p.npy"
    clf.model.save(path)
    np.save(inputs, images)
    code = ("import sys, numpy as np\n"
            "from bench.deploy.export import load_model\n"
            "model = load_model(sys.argv[1])\n"
            "print(sorted({round(l.rate, 6) for l in model.layers if type(l).__name__ == 'RateDropout'}))\n"
            "np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-c", code, str(path), str(inputs), str(out)], capture_output=True,
                          text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[0.35]"
    np.testing.assert_array_equal(np.load(out), expected)
