"""The worker's trainer pool: a later trial with the same graph trains bit for bit as a fresh
build would (also after another architecture ran in between), the pool keeps at most
BENCH_WORKER_MODELS trainers (least recently used out), and folds.csv says how each fold's model
came to be."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.errors import ConfigError
from bench.models import RateDropout, iter_layers
from bench.results import RunDir
from bench.training import features
from bench.training.pool import POOL, POOL_ENV, TrainerPool, capacity, graph_key
from bench.training.train import BUILT, RESTORED, REUSED, FoldResult, FoldTrainer, TrainConfig


def toy_data(n: int = 96, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two classes told apart by brightness, unbalanced (class weights matter)."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 3 == 0).astype(int)
    x = rng.integers(0, 90, (n, size, size, 3)) + 100 * y[:, None, None, None]
    return x.astype(np.uint8), y


def config(**kw) -> TrainConfig:
    # Dropout in the head, augmentation layers with their own random streams, a plateau rule and
    # early stopping reading the inner split: everything a renewed trainer must start afresh.
    base = dict(backbone="simple_cnn", size=32, epochs=3, lr=3e-3, batch_size=16, augment="light",
                dropout=0.3, early_stopping=2, reduce_lr=1, seed=3)
    return TrainConfig(**{**base, **kw})


FOLDS = [(slice(0, 56), slice(56, 72), slice(72, 96)), (slice(40, 96), slice(24, 40), slice(0, 24))]


def two_folds(trainer: FoldTrainer, x: np.ndarray, y: np.ndarray) -> list[FoldResult]:
    return [trainer.fit_fold(k, x[fit], y[fit], x[val], y[val], x[stop], y[stop])
            for k, (fit, stop, val) in enumerate(FOLDS)]


def assert_identical(a: list[FoldResult], b: list[FoldResult]) -> None:
    for fa, fb in zip(a, b, strict=True):
        assert fa.ok and fb.ok
        assert fa.history == fb.history  # every epoch's loss, inner scores and learning rate, exactly
        assert fa.epochs_run == fb.epochs_run and fa.best_epoch == fb.best_epoch
        assert np.array_equal(fa.proba, fb.proba)


def tracing_count(model) -> int:
    """Traces of the compiled train step (Keras keeps the tf.function in a closure)."""
    cells = [c.cell_contents for c in model.train_function.__closure__ or ()]
    return sum(f.experimental_get_tracing_count() for f in cells if hasattr(f, "experimental_get_tracing_count"))


def rates(model) -> list[float]:
    """The head's dropout rates (bench.models.dropout), rounded to float32's precision."""
    return [round(layer.rate, 6) for layer in iter_layers(model) if isinstance(layer, RateDropout)]


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> TrainerPool:
    monkeypatch.setenv(POOL_ENV, "2")
    return TrainerPool()


def test_a_restored_trainer_trains_bit_for_bit_as_a_fresh_build(pool: TrainerPool) -> None:
    x, y = toy_data()
    first = config()
    # Same graph, another trial: its own seed (other initial weights), rate, schedule and dropout.
    later = config(seed=8, lr=1e-3, schedule="cosine", epochs=4, early_stopping=0, dropout=0.1)
    other = config(batch_size=8)  # another graph (batch shapes)
    fresh = {c.seed: two_folds(FoldTrainer(c, 2, n_train_hint=56), x, y) for c in (first, later)}

    kept = pool.trainer(first, 2, n_train_hint=56)
    assert kept.origin == BUILT
    assert_identical(two_folds(kept, x, y), fresh[first.seed])
    in_between = pool.trainer(other, 2, n_train_hint=56)
    assert in_between is not kept and in_between.origin == BUILT
    two_folds(in_between, x, y)
    renewed = pool.trainer(later, 2, n_train_hint=56)
    assert renewed is kept and renewed.origin == RESTORED
    results = two_folds(renewed, x, y)
    assert [r.origin for r in results] == [RESTORED, REUSED]
    assert_identical(results, fresh[later.seed])
    assert tracing_count(renewed.model) == 1  # its train step was traced once, by the first trial
    assert fresh[later.seed][0].history["loss"] != fresh[first.seed][0].history["loss"]  # the seeds differ
    # And back to the first trial's seed and recipe, after the other trial trained this trainer.
    again = pool.trainer(first, 2, n_train_hint=56)
    assert again is kept
    assert_identical(two_folds(again, x, y), fresh[first.seed])


def test_a_restored_two_phase_trainer_restarts_both_phases(pool: TrainerPool) -> None:
    """Two compiled phases (head only, then the backbone at a scaled rate): both optimizers start
    fresh at the new trial's rate, and the phases' trainability is the new trial's."""
    x, y = toy_data()
    two_phase = dict(head_epochs=1, backbone_lr_scale=0.5, epochs=3, augment="none")
    first, later = config(**two_phase), config(**two_phase, seed=21, lr=1e-3)
    fresh = two_folds(FoldTrainer(later, 2, n_train_hint=56), x, y)[:1]
    kept = pool.trainer(first, 2, n_train_hint=56)
    two_folds(kept, x, y)
    renewed = pool.trainer(later, 2, n_train_hint=56)
    assert renewed is kept and renewed.origin == RESTORED
    assert_identical(two_folds(renewed, x, y)[:1], fresh)
    assert fresh[0].history["phase"] == [1.0, 2.0, 2.0]


def test_a_restored_head_on_features_trains_as_a_fresh_build(pool: TrainerPool, tmp_path: Path) -> None:
    """A random-init frozen backbone: the renewed trainer's extractor gives the new seed's
    features (the cache key's weights identity reads them), and its head trains as a fresh one
    (at its own dropout rate)."""
    x, y = toy_data()
    frozen = dict(unfrozen=0, augment="none")
    first, later = config(**frozen), config(**frozen, seed=11, lr=1e-2, dropout=0.1)

    def on_features(trainer: FoldTrainer, tag: str) -> list[FoldResult]:
        key = features.feature_key(tag, 32, "squash", "simple_cnn", features.weights_identity(None, trainer.parts.base))
        found = features.load_or_build(trainer.extractor, x, key, cache_dir=tmp_path / tag)
        assert found is not None
        return two_folds(trainer, np.asarray(found.array), y)

    fresh = on_features(FoldTrainer(later, 2, n_train_hint=56, on_features=True), "fresh")
    kept = pool.trainer(first, 2, n_train_hint=56, on_features=True)
    on_features(kept, "first")
    renewed = pool.trainer(later, 2, n_train_hint=56, on_features=True)
    assert renewed is kept and renewed.origin == RESTORED
    assert_identical(on_features(renewed, "pooled"), fresh)


def test_the_pool_keeps_its_bound_least_recently_used_out(pool: TrainerPool, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = config(epochs=1), config(epochs=1, pooling="max"), config(epochs=1, batch_size=8)
    ta = pool.trainer(a, 2, 56)
    tb = pool.trainer(b, 2, 56)
    assert pool.trainer(a, 2, 56) is ta  # a is now the most recently used
    tc = pool.trainer(c, 2, 56)
    assert pool.keys() == [graph_key(a, 2, 56, False), graph_key(c, 2, 56, False)]  # b went
    assert pool.trainer(a, 2, 56) is ta and pool.trainer(c, 2, 56) is tc
    rebuilt = pool.trainer(b, 2, 56)  # b was evicted: built again
    assert rebuilt is not tb and rebuilt.origin == BUILT
    assert len(pool) == 2
    monkeypatch.setenv(POOL_ENV, "0")  # off: every trainer is new, none is kept
    assert pool.trainer(b, 2, 56) is not rebuilt and pool.trainer(b, 2, 56).origin == BUILT
    assert len(pool) == 0


@pytest.mark.parametrize("raw", ["-1", "two", "1.5"])
def test_a_bad_pool_bound_is_a_config_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(POOL_ENV, raw)
    with pytest.raises(ConfigError, match=POOL_ENV):
        capacity()


def test_folds_csv_records_how_each_fold_model_came_to_be(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bench.training.experiment import cross_validate, prepare_data

    monkeypatch.setenv(POOL_ENV, "2")
    POOL.clear()
    data = prepare_data("pneumonia-demo", folds=2, seed=0, size=32)
    tables = []
    for seed in (1, 2):  # two trials of one graph in one process, as in a search worker
        run = RunDir.create(tmp_path, "pneumonia-demo", out=tmp_path / f"run{seed}", tag="cv")
        scores = cross_validate(data, TrainConfig(backbone="simple_cnn", size=32, epochs=2, augment="none", seed=seed),
                                run, trial=seed)
        assert [s.status for s in scores] == ["ok", "ok"]
        tables.append(run.table("folds"))
    first, second = tables
    assert list(first.model) == [BUILT, REUSED] and list(second.model) == [RESTORED, REUSED]
    for column in ("seconds_build", "seconds_restore", "seconds_trace", "seconds_first_epoch"):
        assert (first[column] >= 0).all() and (second[column] >= 0).all()
    assert first.seconds_build.iloc[0] > 0 and first.seconds_restore.iloc[0] == 0
    assert second.seconds_build.iloc[0] == 0 and second.seconds_restore.iloc[0] > 0
    assert (first.seconds_build.iloc[1:] == 0).all() and (second.seconds_restore.iloc[1:] == 0).all()
    POOL.clear()


def test_report_line_sums_build_restore_and_trace_seconds() -> None:
    import pandas as pd

    from bench.report.fixed_cost import cost_lines, fixed_cost_line

    folds = pd.DataFrame({"model": ["built", "reused", "restored", "reused"], "seconds_build": [6.0, 0, 0, 0],
                          "seconds_restore": [0, 0, 1.0, 0], "seconds_trace": [3.0, 0.5, 0.5, 0.0],
                          "seconds_fit": [10.0, 4.0, 5.0, 4.0]})
    line = fixed_cost_line(folds)
    assert line is not None and "11 s (37%) of 30 training seconds" in line
    assert "building 1 model(s) (6 s)" in line and "restoring 1" in line and "(1 s;" in line
    assert "tracing (est. 4 s" in line
    assert fixed_cost_line(folds.drop(columns="model")) is None  # a run from before the pool
    assert cost_lines(folds) == [line]  # no fold used the feature cache


@pytest.mark.parametrize("change", [dict(seed=11, lr=1e-2), dict(seed=11, lr=1e-2, dropout=0.0), dict(dropout=0.6)],
                         ids=["seed", "seed-and-dropout", "dropout"])
def test_a_restored_head_alone_trains_as_a_fresh_build(pool: TrainerPool, tmp_path: Path, change: dict) -> None:
    """A head built alone on cached maps (no backbone): renewed with another seed, dropout or
    both, it starts from that seed's head at that rate and trains bit for bit as a fresh
    head-only trainer; the classifier it assembles carries the rate."""
    x, y = toy_data()
    frozen = dict(unfrozen=0, augment="none")
    first, later = config(**frozen), config(**frozen, **change)
    full = FoldTrainer(first, 2, n_train_hint=56, on_features=True)
    found = features.load_or_build(full.extractor, x, "maps", cache_dir=tmp_path)
    assert found is not None
    maps = np.asarray(found.array)
    shape = maps.shape[1:]
    fresh = two_folds(FoldTrainer(later, 2, n_train_hint=56, on_features=True, feature_shape=shape), maps, y)
    kept = pool.trainer(first, 2, n_train_hint=56, on_features=True, feature_shape=shape)
    two_folds(kept, maps, y)
    assert kept._full is None
    renewed = pool.trainer(later, 2, n_train_hint=56, on_features=True, feature_shape=shape)
    assert renewed is kept and renewed.origin == RESTORED
    assert_identical(two_folds(renewed, maps, y), fresh)
    assert rates(renewed.classifier) == [later.dropout]
    back = pool.trainer(first, 2, n_train_hint=56, on_features=True, feature_shape=shape)
    assert back is kept and rates(back.classifier) == [first.dropout]  # the assembled classifier follows
    assert pool.trainer(later, 2, n_train_hint=56, on_features=True) is not kept  # another graph: the whole classifier


def test_dropout_is_not_part_of_the_graph_key() -> None:
    """The head's rate is a weight a renewed trainer sets: 0 and 0.25 are one graph; the head's
    shape and pooling are not."""
    assert graph_key(config(dropout=0.0), 2, 56, False) == graph_key(config(dropout=0.25), 2, 56, False)
    assert graph_key(config(), 2, 56, False) != graph_key(config(head_layers=1), 2, 56, False)
    assert graph_key(config(), 2, 56, False) != graph_key(config(pooling="max"), 2, 56, False)


def test_a_trainer_renewed_with_only_another_dropout_trains_at_that_rate(pool: TrainerPool) -> None:
    """Same seed, so the initial weights are not rebuilt: the renewed trainer's rate alone changes,
    through the step traced at the first trial's rate, and it trains as a fresh build at its own
    rate (and differently from the first rate); back at the first rate it trains as that one."""
    x, y = toy_data()
    first, later = config(dropout=0.0), config(dropout=0.5)
    fresh = {c.dropout: two_folds(FoldTrainer(c, 2, n_train_hint=56), x, y) for c in (first, later)}
    assert fresh[0.0][0].history["loss"] != fresh[0.5][0].history["loss"]
    kept = pool.trainer(first, 2, n_train_hint=56)
    assert_identical(two_folds(kept, x, y), fresh[0.0])
    renewed = pool.trainer(later, 2, n_train_hint=56)
    assert renewed is kept and renewed.origin == RESTORED
    assert rates(renewed.classifier) == [0.5]
    assert_identical(two_folds(renewed, x, y), fresh[0.5])  # both folds: the reset keeps the rate
    assert tracing_count(renewed.model) == 1
    again = pool.trainer(first, 2, n_train_hint=56)
    assert again is kept and rates(again.classifier) == [0.0]
    assert_identical(two_folds(again, x, y), fresh[0.0])
