"""Nothing that chooses reads the data it is scored on: early stopping, LR reduction and the
epoch values a pruner sees read an inner split of the training fold; the outer fold is predicted
once, after training. Real Keras on the embedded demo X-rays (32 px)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import keras
import numpy as np
import pytest

from bench.results import RunDir
from bench.training.experiment import (
    REFIT_SPLIT,
    cross_validate,
    inner_split,
    prepare_data,
)
from bench.training.train import FoldTrainer, TrainConfig


def row_keys(x: np.ndarray) -> set[str]:
    return {hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest() for img in x}


@dataclass
class Spy:
    """What reached Keras' fit (images, callbacks) and bench's predict, in order."""

    fits: list[tuple[set[str], list]] = field(default_factory=list)
    predicts: list[tuple[set[str], bool]] = field(default_factory=list)  # (images, during a fit?)
    in_fit: bool = False


@pytest.fixture
def spy(monkeypatch) -> Spy:
    spy = Spy()
    real_fit, real_predict = keras.Model.fit, FoldTrainer.predict

    def fit(self, x=None, y=None, *args, **kw):
        spy.fits.append((row_keys(x), list(kw.get("callbacks") or [])))
        assert kw.get("validation_data") is None and kw.get("validation_split", 0) == 0
        spy.in_fit = True
        try:
            return real_fit(self, x, y, *args, **kw)
        finally:
            spy.in_fit = False

    def predict(self, x):
        spy.predicts.append((row_keys(x), spy.in_fit))
        return real_predict(self, x)

    monkeypatch.setattr(keras.Model, "fit", fit)
    monkeypatch.setattr(FoldTrainer, "predict", predict)
    return spy


def arrays_of(callback) -> list[np.ndarray]:
    return [v for v in vars(callback).values() if isinstance(v, np.ndarray) and v.ndim == 4]


def test_outer_fold_never_reaches_training_or_any_callback(spy, tmp_path):
    data = prepare_data("pneumonia-demo", folds=3, seed=0, size=32)
    config = TrainConfig(backbone="simple_cnn", size=32, epochs=3, lr=3e-3, augment="none",
                         early_stopping=1, reduce_lr=1, seed=4)
    run = RunDir.create(tmp_path, "pneumonia-demo", out=tmp_path / "run", tag="cv")
    scores = cross_validate(data, config, run)
    assert [s.status for s in scores] == ["ok"] * 3
    assert len(spy.fits) == 3
    after_fit = [keys for keys, during in spy.predicts if not during]
    assert len(after_fit) == 3  # the outer fold is predicted once per fold, after training
    for k, ((fit_keys, callbacks), predicted) in enumerate(zip(spy.fits, after_fit)):
        train, val = data.splits.fold_masks(k)
        outer = row_keys(data.images[val])
        fit, stop = inner_split(data, train, config.inner_val, key=k)
        assert predicted == outer
        assert fit_keys == row_keys(data.images[fit]) and not fit_keys & outer
        assert stop.sum() > 0 and not row_keys(data.images[stop]) & outer
        seen = [row_keys(a) for cb in callbacks for a in arrays_of(cb)]
        assert seen and all(not keys & outer for keys in seen), f"fold {k}: a callback holds outer images"
    inner = [row_keys(data.images[inner_split(data, data.splits.fold_masks(k)[0], 0.15, key=k)[1]])
             for k in range(3)]
    during = [keys for keys, d in spy.predicts if d]
    assert during and all(keys in inner for keys in during)  # inside fit: only the inner splits
    history = run.table("history")
    assert {"val_loss", "val_balanced_accuracy", "learning_rate"} <= set(history.metric)


def test_inner_split_keeps_groups_whole_and_is_the_same_for_every_trial():
    data = prepare_data("pneumonia-demo", folds=3, seed=0, size=32)
    train, _ = data.splits.fold_masks(1)
    fit, stop = inner_split(data, train, 0.15, key=1)
    assert not (fit & stop).any() and ((fit | stop) == train).all()
    groups = data.splits.groups
    assert not set(groups[fit]) & set(groups[stop])  # no patient on both sides
    share = stop.sum() / train.sum()
    assert 0.08 < share < 0.22, share
    for c in range(2):  # stratified: every class is in the inner split
        assert (data.index.labels[stop] == c).sum() > 0
    again_fit, again_stop = inner_split(data, train, 0.15, key=1)
    assert (again_stop == stop).all()  # depends on the split seed and fold, not on a trial
    assert not (inner_split(data, data.splits.fold >= 0, 0.15, key=REFIT_SPLIT)[1] & data.splits.test).any()
    none_fit, none_stop = inner_split(data, train, 0.0, key=1)
    assert not none_stop.any() and (none_fit == train).all()


def plateau_reference(val_loss: list[float], lr0: float, patience: int, factor: float, min_lr: float,
                      stop_patience: int) -> tuple[list[float], int]:
    """What the recipe says, written out: Keras' ReduceLROnPlateau (min_delta 1e-4) and
    EarlyStopping (min_delta 0) on the inner split's loss. Returns (LR of each epoch, epochs run)."""
    lrs, lr = [], lr0
    best_lr, wait_lr = np.inf, 0
    best_es, wait_es = np.inf, 0
    for epoch, loss in enumerate(val_loss):
        lrs.append(lr)
        if loss < best_es:
            best_es, wait_es = loss, 0
        else:
            wait_es += 1
        if loss < best_lr - 1e-4:
            best_lr, wait_lr = loss, 0
        else:
            wait_lr += 1
            if wait_lr >= patience and lr > min_lr:
                lr, wait_lr = max(lr * factor, min_lr), 0
        if wait_es >= stop_patience:
            return lrs, epoch + 1
    return lrs, len(val_loss)


def test_refit_runs_the_recipe_cv_scored_lr_per_epoch_and_early_stop():
    from bench.training.train import MIN_LR_SCALE, REDUCE_LR_FACTOR

    rng = np.random.default_rng(0)
    y = np.arange(160) % 2
    # A noisy, hard task: the inner loss plateaus, so the plateau rule has something to do.
    x = (rng.integers(0, 200, (160, 16, 16, 3)) + 30 * y[:, None, None, None]).clip(0, 255).astype(np.uint8)
    config = TrainConfig(backbone="simple_cnn", size=16, epochs=12, lr=2e-2, augment="none",
                         early_stopping=4, reduce_lr=1, seed=2)
    trainer = FoldTrainer(config, 2, n_train_hint=128)
    history = trainer.fit_full(x[:128], y[:128], x[128:], y[128:])
    lrs, epochs = plateau_reference(history["val_loss"], config.lr, config.reduce_lr, REDUCE_LR_FACTOR,
                                    config.lr * MIN_LR_SCALE, config.early_stopping)
    assert len(history["loss"]) == epochs
    np.testing.assert_allclose(history["learning_rate"], lrs, rtol=1e-5)
    assert min(lrs) < config.lr  # the plateau rule acted: the test compared a real schedule


def test_without_an_inner_split_the_recipe_is_fixed_epochs_at_a_constant_rate():
    rng = np.random.default_rng(1)
    y = np.arange(64) % 2
    x = (rng.integers(0, 90, (64, 16, 16, 3)) + 120 * y[:, None, None, None]).astype(np.uint8)
    config = TrainConfig(backbone="simple_cnn", size=16, epochs=3, lr=1e-2, augment="none",
                         early_stopping=1, reduce_lr=1, inner_val=0.0, seed=2)
    history = FoldTrainer(config, 2, n_train_hint=64).fit_full(x, y)
    assert len(history["loss"]) == 3 and "val_loss" not in history
    assert history["learning_rate"] == pytest.approx([1e-2] * 3)
