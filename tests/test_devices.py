"""GPU code paths kept correct on CPU: worker device plans and mixed precision training."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from bench.search.devices import apply_precision, plan_workers, visible_gpus
from bench.training.train import FoldTrainer, TrainConfig


def test_each_worker_gets_its_own_gpu_round_robin():
    plans = plan_workers(3, ["0", "1"], cores=8)
    assert [p["CUDA_VISIBLE_DEVICES"] for p in plans] == ["0", "1", "0"]
    assert all(p["TF_FORCE_GPU_ALLOW_GROWTH"] == "true" for p in plans)
    assert all(p["TF_NUM_INTRAOP_THREADS"] == "2" for p in plans)


def test_cpu_cores_are_divided_between_workers():
    plans = plan_workers(2, [], cores=2)
    assert all("CUDA_VISIBLE_DEVICES" not in p for p in plans)
    assert [p["OMP_NUM_THREADS"] for p in plans] == ["1", "1"]
    assert plan_workers(1, [], cores=2)[0]["TF_NUM_INTRAOP_THREADS"] == "2"


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    assert visible_gpus() == ["0", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert visible_gpus() == []


@pytest.fixture
def mixed_float16():
    apply_precision("mixed_float16")
    yield
    apply_precision("float32")


@pytest.mark.slow  # over 30 s on 2 cores: CI runs it with the slow suite
def test_mixed_precision_trains_resets_and_predicts_float32(mixed_float16):
    rng = np.random.default_rng(0)
    y = np.arange(64) % 2
    x = (rng.integers(0, 90, (64, 32, 32, 3)) + 120 * y[:, None, None, None]).astype(np.uint8)
    config = TrainConfig(backbone="simple_cnn", size=32, epochs=3, lr=3e-3, batch_size=16, augment="none",
                         early_stopping=0, reduce_lr=0)
    trainer = FoldTrainer(config, 2, n_train_hint=48)
    assert isinstance(trainer.optimizer, keras.optimizers.LossScaleOptimizer)
    assert trainer.classifier.output.dtype == "float32"
    first = trainer.fit_fold(0, x[:48], y[:48], x[48:], y[48:])
    second = trainer.fit_fold(1, x[16:], y[16:], x[:16], y[:16])
    for result in (first, second):
        assert result.ok and np.isfinite(result.proba).all()
        np.testing.assert_allclose(result.proba.sum(1), 1.0, atol=1e-3)
    assert second.history["loss"][-1] < second.history["loss"][0]
