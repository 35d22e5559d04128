"""The frozen-feature cache: the same scores as running the backbone every epoch, an entry built
once (also by racing processes), keyed by what the features depend on, rebuilt when damaged."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest

from bench.metrics import compute_metrics
from bench.models import get_backbone, imagenet_path
from bench.results import RunDir
from bench.training import features
from bench.training.experiment import cross_validate, prepare_data
from bench.training.train import FoldTrainer, TrainConfig

REPO = Path(__file__).resolve().parents[1]


def toy_data(n: int = 96, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes told apart by brightness, unbalanced (class weights matter)."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)
    x = rng.integers(0, 90, (n, size, size, 3)) + 100 * y[:, None, None, None]
    return x.astype(np.uint8), y


def frozen(**kw) -> TrainConfig:
    base = dict(backbone="simple_cnn", size=32, unfrozen=0, augment="none", epochs=6, lr=1e-2, batch_size=16,
                dropout=0.3, label_smoothing=0.1, early_stopping=2, reduce_lr=1, seed=5)
    return TrainConfig(**{**base, **kw})


def tiny_extractor(size: int = 8, seed: int = 0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3))
    return keras.Model(inputs, keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs))


def test_head_on_features_trains_like_the_backbone_every_epoch(tmp_path: Path) -> None:
    """Same head, dropout, seeds, inner split, early stopping, LR plateau, class weights and label
    smoothing: the per-image probabilities agree to float16 rounding, and the exported classifier
    is the whole image -> probabilities model holding the head trained on features."""
    x, y = toy_data()
    fit, stop, val = slice(0, 56), slice(56, 72), slice(72, 96)
    ordinary = FoldTrainer(frozen(), 2, n_train_hint=56)
    cached = FoldTrainer(frozen(), 2, n_train_hint=56, on_features=True)
    key = features.feature_key("toy", 32, "squash", "simple_cnn",
                               features.weights_identity(None, cached.parts.base))
    found = features.load_or_build(cached.extractor, x, key, cache_dir=tmp_path)
    assert found is not None and found.built and found.array.dtype == np.float16
    a = ordinary.fit_fold(0, x[fit], y[fit], x[val], y[val], x[stop], y[stop])
    f = found.array
    b = cached.fit_fold(0, f[fit], y[fit], f[val], y[val], f[stop], y[stop])
    assert a.ok and b.ok and a.epochs_run == b.epochs_run
    assert set(a.history) == set(b.history) and "learning_rate" in b.history
    assert np.allclose(a.history["learning_rate"], b.history["learning_rate"])
    assert np.allclose(a.history["val_loss"], b.history["val_loss"], atol=2e-3)
    assert np.abs(a.proba - b.proba).max() < 2e-3
    ba = [compute_metrics(y[val], p, names=("balanced_accuracy",))["balanced_accuracy"] for p in (a.proba, b.proba)]
    assert ba[0] > 0.8 and abs(ba[0] - ba[1]) <= 0.005, ba
    # The classifier on images predicts what the head on features predicted.
    whole = np.asarray(cached.classifier.predict(x[val].astype("float32"), verbose=0))
    assert np.abs(whole - b.proba).max() < 2e-3


def test_only_a_frozen_unaugmented_trial_trains_on_features() -> None:
    assert features.eligible(frozen())
    assert not features.eligible(frozen(unfrozen=1)) and not features.eligible(frozen(augment="light"))
    with pytest.raises(ValueError, match="fully frozen"):
        FoldTrainer(frozen(augment="light"), 2, n_train_hint=32, on_features=True)


def test_second_call_reuses_the_entry_without_computing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.random.default_rng(0).integers(0, 255, (40, 8, 8, 3)).astype(np.uint8)
    extractor = tiny_extractor()
    first = features.load_or_build(extractor, images, "k", cache_dir=tmp_path)
    assert first is not None and first.built and first.array.shape == (40, 4, 4, 4)
    monkeypatch.setattr(features, "_compute", lambda *a: pytest.fail("computed again"))
    second = features.load_or_build(extractor, images, "k", cache_dir=tmp_path)
    assert second is not None and not second.built
    assert np.array_equal(first.array, second.array)
    expected = extractor.predict(images.astype("float32"), verbose=0)
    assert np.allclose(second.array, expected, atol=1e-2, rtol=1e-3)


def test_key_changes_with_weights_file_size_and_random_init(tmp_path: Path) -> None:
    one, two = tmp_path / "a.weights.h5", tmp_path / "b.weights.h5"
    one.write_bytes(b"weights one")
    two.write_bytes(b"weights two")
    ids = [features.weights_identity(str(p), tiny_extractor()) for p in (one, two)]
    assert ids[0] != ids[1] and len(ids[0]) == 64
    random_ids = [features.weights_identity(None, tiny_extractor(seed=s)) for s in (0, 0, 1)]
    assert random_ids[0] == random_ids[1] != random_ids[2] and random_ids[0].startswith("random:")
    key = features.feature_key("imgs", 64, "squash", "mobilenet_v2", ids[0])
    assert key == features.feature_key("imgs", 64, "squash", "mobilenet_v2", ids[0])
    others = {features.feature_key("imgs", 64, "squash", "mobilenet_v2", ids[1]),
              features.feature_key("imgs", 96, "squash", "mobilenet_v2", ids[0]),
              features.feature_key("imgs", 64, "pad", "mobilenet_v2", ids[0]),
              features.feature_key("other", 64, "squash", "mobilenet_v2", ids[0])}
    assert key not in others and len(others) == 4


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_entry_is_rebuilt(tmp_path: Path, damage: str) -> None:
    images = np.random.default_rng(1).integers(0, 255, (30, 8, 8, 3)).astype(np.uint8)
    extractor = tiny_extractor()
    good = features.load_or_build(extractor, images, "k", cache_dir=tmp_path)
    assert good is not None
    reference = np.array(good.array)
    del good
    npy = tmp_path / "k.npy"
    raw = bytearray(npy.read_bytes())
    if damage == "truncate":
        npy.write_bytes(bytes(raw[: len(raw) // 2]))
    else:
        raw[-100] ^= 0xFF
        npy.write_bytes(bytes(raw))
    again = features.load_or_build(extractor, images, "k", cache_dir=tmp_path)
    assert again is not None and again.built
    assert np.array_equal(np.asarray(again.array), reference)


def test_entry_over_the_budget_is_not_cached_and_the_trial_runs_the_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(features.BUDGET_ENV, "0")
    images = np.zeros((4, 8, 8, 3), np.uint8)
    assert features.load_or_build(tiny_extractor(), images, "k") is None
    monkeypatch.setenv(features.BUDGET_ENV, "lots")
    with pytest.raises(features.ConfigError, match=features.BUDGET_ENV):
        features.budget_bytes()


def test_budget_evicts_the_least_recently_used_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.zeros((64, 8, 8, 3), np.uint8)  # 64 x 4x4x4 float16 = 8 KiB per entry
    monkeypatch.setenv(features.BUDGET_ENV, str(20 * 1024 / 2**30))
    extractor = tiny_extractor()
    for key in ("old", "mid"):
        features.load_or_build(extractor, images, key, cache_dir=tmp_path)
        time.sleep(0.05)
    features.load_or_build(extractor, images, "old", cache_dir=tmp_path)  # used again: "mid" is now oldest
    features.load_or_build(extractor, images, "new", cache_dir=tmp_path)
    assert sorted(p.stem for p in tmp_path.glob("*.npy")) == ["new", "old"]


_RACER = """
import sys, time
from pathlib import Path
import keras, numpy as np
from bench.training import features
root, go = Path(sys.argv[1]), Path(sys.argv[2])
keras.utils.set_random_seed(0)
inputs = keras.Input((8, 8, 3))
extractor = keras.Model(inputs, keras.layers.Conv2D(4, 3, strides=2, padding="same")(inputs))
compute = features._compute
def slow(*a):  # widen the window in which the other process asks for the same entry
    time.sleep(1.0)
    return compute(*a)
features._compute = slow
images = np.random.default_rng(2).integers(0, 255, (50, 8, 8, 3)).astype(np.uint8)
(root / f"ready-{sys.argv[3]}").touch()
while not go.exists():
    time.sleep(0.01)
found = features.load_or_build(extractor, images, "raced", cache_dir=root)
print("built" if found.built else "reused", float(np.asarray(found.array, dtype="float64").sum()))
"""


@pytest.mark.slow  # 20-30 s of real searches or processes: CI runs it with the slow suite
def test_two_processes_racing_build_the_entry_once(tmp_path: Path) -> None:
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(tmp_path), str(go), str(i)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    words = sorted(out.split()[0] for out, _ in outs)
    assert words == ["built", "reused"], outs
    assert outs[0][0].split()[1] == outs[1][0].split()[1]  # both read the same array


@pytest.fixture(scope="module")
def lite0_imagenet(tmp_path_factory: pytest.TempPathFactory) -> str:
    """EfficientNet-Lite0's ImageNet file: the converted one on this machine, else converted here."""
    found = imagenet_path(get_backbone("efficientnet_lite0"))
    if found is not None:
        return str(found)
    from bench.models import convert_lite0

    return str(convert_lite0.convert(tmp_path_factory.mktemp("weights")).path)


@pytest.mark.slow
def test_cached_and_ordinary_frozen_trials_score_alike_on_the_demo(lite0_imagenet: str) -> None:
    """The issue's check: a frozen ImageNet Lite0 trial on the demo X-rays, by cross-validation
    on cached features and with the backbone run every epoch: equal balanced accuracy within a
    few thousandths per fold, per-image probabilities close, folds.csv naming the path taken."""
    data = prepare_data("pneumonia-demo", folds=3, size=64)
    config = TrainConfig(backbone="efficientnet_lite0", weights=lite0_imagenet, size=64, unfrozen=0,
                         augment="none", epochs=6, dropout=0.3, seed=3)
    runs = {}
    for path, budget in (("cached", "4"), ("computed", "0")):
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(features.BUDGET_ENV, budget)  # 0: no cache, the backbone runs every epoch
            runs[path] = RunDir.create(Path(os.environ["BENCH_RUNS"]), "demo", tag=path)
            scores = cross_validate(data, config, runs[path])
        assert all(s.status == "ok" for s in scores)
    folds = {p: r.table("folds") for p, r in runs.items()}
    assert list(folds["cached"].features) == ["cached"] * 3 and list(folds["computed"].features) == ["computed"] * 3
    cached = folds["cached"]
    # The first fold pays for building (or loading) the entry, so its net saving may be negative;
    # the folds after it only read the cache and save their backbone passes.
    assert cached.seconds_features.iloc[0] > 0 and (cached.seconds_features.iloc[1:] == 0).all()
    assert (cached.seconds_saved_est.iloc[1:] > 0).all()
    ba = {p: r.table("metrics").query("metric == 'balanced_accuracy'").value.to_numpy() for p, r in runs.items()}
    assert ba["computed"].mean() > 0.75 and np.abs(ba["cached"] - ba["computed"]).max() <= 0.005, ba
    p = {k: r.table("predictions").filter(like="p_").to_numpy() for k, r in runs.items()}
    assert np.abs(p["cached"] - p["computed"]).max() < 5e-3


def test_report_line_sums_the_cached_folds_time_saved() -> None:
    import pandas as pd

    from bench.report.feature_cache import saved_time_line

    folds = pd.DataFrame({"features": ["cached", "cached", "computed"], "seconds_fit": [2.0, 1.0, 30.0],
                          "seconds_features": [4.0, 0.0, 0.0], "seconds_saved_est": [20.0, 25.0, 0.0]})
    line = saved_time_line(folds)
    assert line is not None and "2 of 3 folds" in line and "in 7 s" in line and "45 s more" in line
    assert saved_time_line(folds.assign(features="computed")) is None
    assert saved_time_line(folds.drop(columns="features")) is None  # a run from before the cache


def _dropouts(model: keras.Model) -> int:
    from bench.models import iter_layers

    return sum(isinstance(layer, keras.layers.Dropout) for layer in iter_layers(model))


def test_a_frozen_backbone_with_dropout_inside_is_deterministic_under_training() -> None:
    """Dropout ignores trainable=False in Keras: a frozen EfficientNetB0's 9 dropout layers drew
    masks whenever the ordinary path trained. Frozen, the base's output under training=True is
    its inference output; unfrozen, its dropout still fires."""
    from bench.models import build_classifier

    x = keras.ops.convert_to_tensor(toy_data(4, 32)[0].astype("float32"))
    built = build_classifier("efficientnet_b0", 2, 32, weights=None, unfrozen=0)
    assert _dropouts(built.base) >= 9
    extractor, _ = features.split_at_backbone(built.model, built.base)
    calm = np.asarray(extractor(x, training=False))
    for _ in range(2):
        assert np.array_equal(np.asarray(extractor(x, training=True)), calm)
    trained = build_classifier("efficientnet_b0", 2, 32, weights=None, unfrozen="all")
    extractor, _ = features.split_at_backbone(trained.model, trained.base)
    assert not np.allclose(np.asarray(extractor(x, training=True)), np.asarray(extractor(x, training=False)))


@pytest.fixture
def dropout_cnn(monkeypatch: pytest.MonkeyPatch) -> str:
    """A small backbone with dropout and drop-connect (stochastic depth, as EfficientNet's) inside:
    random-init EfficientNets give near-constant features at 32 px, too flat to tell the paths apart."""
    from bench.models import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @registry.register_backbone("dropout_cnn", title="CNN with dropout inside", preprocess="tf", min_size=16)
    def build(input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
        inputs = keras.Input(input_shape)
        x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
        x = keras.layers.MaxPooling2D(2, name="block1_pool")(x)
        x = keras.layers.Dropout(0.5)(x)
        y = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
        y = keras.layers.Dropout(0.3, noise_shape=(None, 1, 1, 1))(y)  # drop-connect
        x = keras.layers.Add(name="block2_add")([x, y])
        return keras.Model(inputs, keras.layers.MaxPooling2D(2, name="block2_pool")(x))

    return "dropout_cnn"


def test_cached_and_ordinary_paths_train_the_same_model_on_a_backbone_with_dropout(tmp_path: Path,
                                                                                   dropout_cnn: str) -> None:
    """The head trained on cached features predicts what the ordinary path, running the frozen
    backbone every epoch, predicts: no dropout inside the frozen backbone fires on either."""
    x, y = toy_data()
    fit, stop, val = slice(0, 56), slice(56, 72), slice(72, 96)
    config = frozen(backbone=dropout_cnn, epochs=3, dropout=0.0)
    ordinary = FoldTrainer(config, 2, n_train_hint=56)
    cached = FoldTrainer(config, 2, n_train_hint=56, on_features=True)
    assert _dropouts(ordinary.parts.base) == 2
    key = features.feature_key("toy-dropout", 32, "squash", dropout_cnn,
                               features.weights_identity(None, cached.parts.base))
    found = features.load_or_build(cached.extractor, x, key, cache_dir=tmp_path)
    assert found is not None
    f = found.array
    a = ordinary.fit_fold(0, x[fit], y[fit], x[val], y[val], x[stop], y[stop])
    b = cached.fit_fold(0, f[fit], y[fit], f[val], y[val], f[stop], y[stop])
    assert a.ok and b.ok and a.epochs_run == b.epochs_run
    assert np.allclose(a.history["loss"], b.history["loss"], atol=2e-3), (a.history["loss"], b.history["loss"])
    assert np.abs(a.proba - b.proba).max() < 2e-3


def test_key_changes_with_precision_backend_and_preprocessing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings that change the features but are no argument of the key: the dtype policy
    (--precision), the Keras backend, and what the backbone's preprocessing computes."""
    from bench.models import preprocess

    def key() -> str:
        return features.feature_key("imgs", 64, "squash", "mobilenet_v2", "w")

    plain = key()
    assert key() == plain
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        mixed = key()
    finally:
        keras.config.set_dtype_policy(before)
    assert key() == plain
    with monkeypatch.context() as m:
        m.setattr(keras.backend, "backend", lambda: "jax")
        other_backend = key()
    # mobilenet_v2 reads 'tf' mode: the same name computing something else is another preprocessing.
    with monkeypatch.context() as m:
        m.setitem(preprocess.MODES, "tf", lambda x: x / 128.0 - 1.0)
        other_preprocessing = key()
    assert len({plain, mixed, other_backend, other_preprocessing}) == 4
    assert key() == plain
    # Another backbone with the same preprocessing mode still differs by name; one with another mode too.
    assert features.feature_key("imgs", 64, "squash", "densenet121", "w") != plain


def _on_features(config: TrainConfig, x: np.ndarray, tmp_path: Path) -> tuple[FoldTrainer, np.ndarray]:
    """A head-on-features trainer for ``config`` and the cached feature maps of ``x``."""
    trainer = FoldTrainer(config, 2, n_train_hint=56, on_features=True)
    key = features.feature_key(f"toy-{config.seed}", config.size, "squash", config.backbone,
                               features.weights_identity(None, trainer.parts.base))
    found = features.load_or_build(trainer.extractor, x, key, cache_dir=tmp_path)
    assert found is not None
    return trainer, found.array


def tracing_count(model: keras.Model) -> int:
    """Traces of the compiled train steps (Keras keeps its tf.functions in closures: the one
    ``fit`` runs on an iterator and, one wrapper deeper, the one ``train_on_batch`` runs)."""
    def count(fn: object, depth: int) -> int:
        if hasattr(fn, "experimental_get_tracing_count"):
            return fn.experimental_get_tracing_count()
        cells = getattr(fn, "__closure__", None) or ()
        return sum(count(c.cell_contents, depth - 1) for c in cells) if depth else 0
    return count(model.train_function, 2)


def test_the_padded_last_batch_trains_as_the_unpadded_one(tmp_path: Path) -> None:
    """56 rows in batches of 16: the last batch of 8 is padded to 16 rows of zero weight (one
    traced step shape), and the loss, its gradient and the history are those of the batch of 8."""
    from bench.training import loop

    x, y = toy_data()
    config = frozen(dropout=0.0)  # dropout masks are drawn per batch shape: none to compare
    runs, traces = [], []
    for pad in (True, False):
        trainer, f = _on_features(config, x, tmp_path)
        weights = np.where(y[:56] == 1, 2.0, 0.5).astype("float32")  # class weights reach the loss
        history = loop.train_epochs(trainer.model, f[:56], np.eye(2, dtype="float32")[y[:56]], sample_weight=weights,
                                    epochs=3, batch_size=16, seed=7, callbacks=[], pad=pad)
        runs.append((history, [np.array(keras.ops.convert_to_numpy(w)) for w in trainer.model.weights]))
        traces.append(tracing_count(trainer.model))
    assert traces[0] < traces[1]  # unpadded, the batch of 8 is a shape of its own, traced again
    (padded, w_padded), (plain, w_plain) = runs
    assert len(padded["loss"]) == 3 and padded["loss"][-1] < padded["loss"][0]
    assert np.allclose(padded["loss"], plain["loss"], atol=1e-5), (padded["loss"], plain["loss"])
    assert all(np.allclose(a, b, atol=1e-5) for a, b in zip(w_padded, w_plain))


def test_a_frozen_trial_trains_in_the_loop_with_early_stopping_and_pruning(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``fit`` on the cached path: the loop drives the same callbacks. Early stopping reads the
    inner split (here labelled against the training set, so its loss only grows: the best epoch is
    the first) and restores that epoch's weights; the pruning hook ends the fold after its epoch."""
    x, y = toy_data()
    trainer, f = _on_features(frozen(epochs=8, early_stopping=2, reduce_lr=0), x, tmp_path)
    monkeypatch.setattr(keras.Model, "fit", lambda *a, **k: pytest.fail("model.fit called on the cached path"))

    class Snapshots(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.weights: list[list[np.ndarray]] = []

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            self.weights.append([np.array(w) for w in self.model.get_weights()])

    seen = Snapshots()
    fit, stop, val = slice(0, 56), slice(56, 72), slice(72, 96)
    result = trainer.fit_fold(0, f[fit], y[fit], f[val], y[val], f[stop], 1 - y[stop], callbacks=[seen])
    assert result.ok and result.best_epoch == 1 and result.epochs_run == 3, (result.best_epoch, result.history)
    assert result.history["val_loss"][0] < min(result.history["val_loss"][1:])
    assert set(result.history) >= {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"}
    assert all(np.array_equal(a, b) for a, b in zip(trainer.model.get_weights(), seen.weights[0]))
    assert not all(np.array_equal(a, b) for a, b in zip(seen.weights[0], seen.weights[-1]))

    def prune(epoch: int, logs: dict[str, float]) -> str | None:
        assert "val_loss" in logs
        return f"pruned at epoch {epoch + 1}" if epoch == 1 else None

    pruned = trainer.fit_fold(1, f[fit], y[fit], f[val], y[val], f[stop], y[stop], on_epoch=prune)
    assert pruned.status == "pruned at epoch 2" and pruned.pruned and pruned.epochs_run == 2
    assert len(pruned.history["loss"]) == 2


def _head_alone(config: TrainConfig, cached: np.ndarray, monkeypatch: pytest.MonkeyPatch, base_params: int = 0) -> FoldTrainer:
    """A trainer on ``cached`` feature maps that builds no backbone (building one fails the test)."""
    from bench.training import graph

    with monkeypatch.context() as m:
        m.setattr(graph, "build_classifier", lambda *a, **k: pytest.fail("the backbone was built"))
        return FoldTrainer(config, 2, n_train_hint=56, on_features=True, feature_shape=cached.shape[1:],
                           base_params=base_params)


@pytest.mark.parametrize("backbone", ["simple_cnn", "dropout_cnn"])
def test_a_head_trained_alone_equals_the_ordinary_path_and_assembles_into_the_classifier(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, backbone: str) -> None:
    """The head built alone on the cached maps' shape starts from the classifier's own head's
    weights (the head's seed does not depend on the backbone's build), trains as the ordinary path
    on images does (a backbone without and with dropout inside), and the classifier assembled
    afterwards predicts on images what the head predicted on features."""
    if backbone == "dropout_cnn":
        backbone = request.getfixturevalue("dropout_cnn")
    x, y = toy_data()
    config = frozen(backbone=backbone, epochs=4)
    full, f = _on_features(config, x, tmp_path)
    alone = _head_alone(config, f, monkeypatch, base_params=full.extractor.count_params())
    assert alone._full is None
    assert all(np.array_equal(a, b) for a, b in zip(alone.model.get_weights(), full.model.get_weights()))
    assert (alone.trainable_params, alone.total_params) == (full.trainable_params, full.total_params)
    fit, stop, val = slice(0, 56), slice(56, 72), slice(72, 96)
    ordinary = FoldTrainer(config, 2, n_train_hint=56).fit_fold(0, x[fit], y[fit], x[val], y[val], x[stop], y[stop])
    b = alone.fit_fold(0, f[fit], y[fit], f[val], y[val], f[stop], y[stop])
    assert ordinary.ok and b.ok and ordinary.epochs_run == b.epochs_run and ordinary.best_epoch == b.best_epoch
    assert np.allclose(ordinary.history["loss"], b.history["loss"], atol=2e-3), (ordinary.history, b.history)
    assert np.allclose(ordinary.history["val_loss"], b.history["val_loss"], atol=2e-3)
    assert np.abs(ordinary.proba - b.proba).max() < 2e-3
    assert alone._full is None  # trained and predicted without a backbone
    whole = np.asarray(alone.classifier.predict(x[val].astype("float32"), verbose=0))
    assert np.abs(whole - b.proba).max() < 2e-3
    assert np.abs(alone.predict_images(x[val]) - b.proba).max() < 2e-3
    # A later fold trains the head on: the classifier asked for again holds the new head.
    c = alone.fit_fold(1, f[24:80], y[24:80], f[:24], y[:24], f[80:], y[80:])
    assert np.abs(alone.predict_images(x[:24]) - c.proba).max() < 2e-3


def test_a_warm_entry_of_a_weights_file_trains_the_head_without_building_the_backbone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cross_validate with a weights file: the first trial builds the backbone and the entry; the
    next finds the entry, trains the head alone (no backbone built) and scores the same."""
    from bench.models import build_classifier
    from bench.training import graph
    from bench.training.pool import POOL

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "cnn.weights.h5"
    build_classifier("simple_cnn", 2, 32, weights=None).base.save_weights(weights)
    data = prepare_data("pneumonia-demo", folds=2, size=32, seed=0)
    config = frozen(weights=str(weights), epochs=3)
    POOL.clear()
    runs = {}
    for tag in ("cold", "warm"):
        runs[tag] = RunDir.create(tmp_path / "runs", "demo", tag=tag)
        with monkeypatch.context() as m:
            if tag == "warm":
                m.setattr(graph, "build_classifier", lambda *a, **k: pytest.fail("the backbone was built"))
            scores = cross_validate(data, config, runs[tag])
        assert [s.status for s in scores] == ["ok", "ok"]
    POOL.clear()
    cold, warm = (runs[t].table("folds") for t in ("cold", "warm"))
    assert list(warm.features) == ["cached", "cached"] and list(warm.model) == ["built", "reused"]
    assert list(warm.total_params) == list(cold.total_params)
    assert list(warm.trainable_params) == list(cold.trainable_params)
    p = {t: r.table("predictions").filter(like="p_").to_numpy() for t, r in runs.items()}
    assert np.abs(p["cold"] - p["warm"]).max() < 1e-5


def test_an_entry_without_the_backbone_size_gets_it_on_its_next_load(tmp_path: Path) -> None:
    """Entries written before their record said the backbone's size are not rebuilt: the next
    load with the backbone at hand adds it, and from then on a head alone can train on them."""
    import json

    images = np.random.default_rng(0).integers(0, 255, (12, 8, 8, 3)).astype(np.uint8)
    extractor = tiny_extractor()
    assert features.load_or_build(extractor, images, "k", cache_dir=tmp_path) is not None
    assert features.peek("k", cache_dir=tmp_path) == features.Entry((4, 4, 4), extractor.count_params())
    meta_path = tmp_path / "k.json"
    meta = json.loads(meta_path.read_text())
    del meta["base_params"]
    meta_path.write_text(json.dumps(meta))
    assert features.peek("k", cache_dir=tmp_path) is None
    found = features.load_or_build(extractor, images, "k", cache_dir=tmp_path)
    assert found is not None and not found.built
    assert features.peek("k", cache_dir=tmp_path) == features.Entry((4, 4, 4), extractor.count_params())
    # Known shape: the extractor is not even built to read the entry.
    again = features.load_or_build(lambda: pytest.fail("built the extractor"), images, "k", cache_dir=tmp_path,
                                   feature_shape=(4, 4, 4))
    assert again is not None and np.array_equal(again.array, found.array)
