"""LR schedules, two-phase fine-tuning, the backbone LR scale and the head's shape, with real Keras
training on tiny inputs; and the `paper` search space that searches them."""

from __future__ import annotations

import keras
import numpy as np
import optuna
import pandas as pd
import pytest

from bench.deploy.export import load_model
from bench.deploy.gradcam import GradCam
from bench.errors import ConfigError
from bench.models import FLATTEN_MAX_SIDE, HeadSpec, build_classifier
from bench.search.objective import config_from_values
from bench.search.space import builtin_space, load_space
from bench.training.schedules import EXPONENTIAL_END, MIN_LR_SCALE, learning_rates
from bench.training.train import FoldTrainer
from tests.test_train import config, toy_data


def _values(variables: list) -> list[np.ndarray]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


class _Snapshots(keras.callbacks.Callback):
    """The backbone's and the head's trainable values at the start and at each epoch's end."""

    def __init__(self, trainer: FoldTrainer) -> None:
        super().__init__()
        self.base = trainer.parts.base
        self.head = trainer.classifier.get_layer("predictions")
        self.taken: list[tuple[list[np.ndarray], list[np.ndarray]]] = []

    def _take(self) -> None:
        # Kernels and biases only: BN moving statistics change in training mode whatever the rate.
        base = [w for layer in self.base.layers for w in layer.weights if "moving" not in w.path]
        self.taken.append((_values(base), _values(self.head.weights)))

    def on_train_begin(self, logs=None) -> None:
        if not self.taken:
            self._take()

    def on_epoch_end(self, epoch, logs=None) -> None:
        self._take()


def test_schedules_give_the_documented_rates():
    assert learning_rates("plateau", 1e-3, 5) is None  # decided while training
    assert learning_rates("constant", 1e-3, 3) == pytest.approx([1e-3] * 3)
    assert learning_rates("step", 1.0, 6) == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])
    exp = learning_rates("exponential", 1.0, 5)
    assert exp[0] == 1.0 and exp[-1] == pytest.approx(EXPONENTIAL_END)
    assert np.allclose(np.diff(np.log(exp)), np.log(exp[1] / exp[0]))  # a constant factor per epoch
    cos = learning_rates("cosine", 1.0, 10)
    assert cos[0] == pytest.approx(1.0) and cos[-1] == pytest.approx(MIN_LR_SCALE) and np.all(np.diff(cos) < 0)
    warm = learning_rates("cosine", 1.0, 6, warmup_epochs=2)
    assert warm[:3] == pytest.approx([0.1, 0.55, 1.0]) and warm[-1] == pytest.approx(MIN_LR_SCALE)


def test_bad_schedule_settings_are_config_errors():
    with pytest.raises(ConfigError, match="Unknown schedule 'cosin'.*'cosine'"):
        config(schedule="cosin")
    with pytest.raises(ConfigError, match="warmup-epochs 1 cannot be combined with schedule 'plateau'"):
        config(schedule="plateau", warmup_epochs=1)
    with pytest.raises(ConfigError, match="leaves no epoch at the full rate"):
        config(schedule="cosine", warmup_epochs=3, epochs=3)
    with pytest.raises(ConfigError, match="head-epochs must be .* epochs - 1 \\(2\\)"):
        config(head_epochs=3, epochs=3)
    with pytest.raises(ConfigError, match="backbone-lr-scale must be a number >= 0"):
        config(backbone_lr_scale=-0.1)
    with pytest.raises(ConfigError, match="head_layers must be 0 to 2"):
        config(head_layers=3)
    with pytest.raises(ConfigError, match="pooling 'mean' is unknown.*Allowed: avg, max, flatten"):
        config(pooling="mean")


def test_each_fold_records_the_rate_its_schedule_gave():
    schedule, warmup = "cosine", 1
    x, y = toy_data(n=48, size=16)
    c = config(size=16, schedule=schedule, warmup_epochs=warmup, epochs=4, early_stopping=2, reduce_lr=1)
    trainer = FoldTrainer(c, n_classes=2, n_train_hint=32)
    for fold in range(2):  # the second fold starts again from the schedule's first rate
        result = trainer.fit_fold(fold, x[:32], y[:32], x[32:], y[32:], x[24:32], y[24:32])
        assert result.ok
        ran = result.history["learning_rate"]
        assert ran == pytest.approx(learning_rates(schedule, c.lr, 4, warmup)[: len(ran)], rel=1e-5)
        assert "phase" not in result.history


def test_plateau_keeps_its_rule_and_other_schedules_ignore_reduce_lr():
    from bench.training.train import _InnerValidation  # noqa: F401  (the rules read the inner split)

    trainer = FoldTrainer(config(size=16, reduce_lr=2), n_classes=2, n_train_hint=32)
    x, y = toy_data(n=16, size=16)
    rules = trainer._rules(x, x[:4], y[:4], None, 0, last=True)
    assert [type(r).__name__ for r in rules] == ["_InnerValidation", "ReduceLROnPlateau"]
    assert rules[1].patience == 2 and rules[1].factor == 0.3
    assert learning_rates(trainer.config.schedule, 1e-3, 3) is None  # no per-epoch setter for plateau
    cosine = FoldTrainer(config(size=16, reduce_lr=2, schedule="cosine"), n_classes=2, n_train_hint=32)
    assert [type(r).__name__ for r in cosine._rules(x, x[:4], y[:4], None, 0, last=True)] == ["_InnerValidation"]


def test_two_phase_freezes_the_backbone_first_then_trains_it_without_recompiling():
    x, y = toy_data(n=48, size=16)
    c = config(size=16, head_epochs=2, epochs=3, unfrozen="all", schedule="step", early_stopping=3)
    trainer = FoldTrainer(c, n_classes=2, n_train_hint=32)
    assert len(trainer.phases) == 2
    traces = [0, 0]  # a train_step's Python body runs only while TensorFlow traces it
    for i, phase in enumerate(trainer.phases):
        def counted(data, step=phase.model.train_step, i=i):
            traces[i] += 1
            return step(data)
        phase.model.train_step = counted
    snaps = _Snapshots(trainer)
    first = trainer.fit_fold(0, x[:32], y[:32], x[32:], y[32:], x[24:32], y[24:32], callbacks=[snaps])
    assert first.ok and first.history["phase"] == [1.0, 1.0, 2.0]
    assert first.history["learning_rate"] == pytest.approx(learning_rates("step", c.lr, 3), rel=1e-5)
    (b0, h0), (b1, h1), (b2, h2), (b3, h3) = snaps.taken
    assert _same(b0, b1) and _same(b1, b2), "the backbone changed during the head-only phase"
    assert not _same(h0, h1) and not _same(h1, h2), "the head did not train in phase 1"
    assert not _same(b2, b3), "the unfrozen backbone did not train in phase 2"
    assert all(layer.trainable for layer in trainer.parts.base.layers if layer.weights)  # phase-2 flags kept

    functions, traced = [p.model.train_function for p in trainer.phases], list(traces)
    assert all(traced)
    again = trainer.fit_fold(0, x[:32], y[:32], x[32:], y[32:], x[24:32], y[24:32])
    assert [p.model.train_function for p in trainer.phases] == functions and traces == traced  # no recompilation
    assert again.history == first.history  # the reset restored weights and both optimizers
    np.testing.assert_array_equal(again.proba, first.proba)


def test_backbone_lr_scale_zero_leaves_the_backbone_as_it_was():
    x, y = toy_data(n=48, size=16)
    # AdamW: its decoupled weight decay must be scaled too, or the backbone would shrink.
    trainer = FoldTrainer(config(size=16, epochs=2, backbone_lr_scale=0.0, optimizer="adamw", weight_decay=0.1),
                          n_classes=2, n_train_hint=32)
    snaps = _Snapshots(trainer)
    assert trainer.fit_fold(0, x[:32], y[:32], x[32:], y[32:], callbacks=[snaps]).ok
    (b0, h0), *_, (b_end, h_end) = snaps.taken
    assert _same(b0, b_end) and not _same(h0, h_end)
    scaled = FoldTrainer(config(size=16, epochs=1, backbone_lr_scale=0.1), n_classes=2, n_train_hint=32)
    snaps = _Snapshots(scaled)
    assert scaled.fit_fold(0, x[:32], y[:32], x[32:], y[32:], callbacks=[snaps]).ok
    assert not _same(snaps.taken[0][0], snaps.taken[-1][0])  # a small scale still trains


@pytest.mark.parametrize("pooling, layers", [("max", 1), ("flatten", 2)])
def test_head_variants_train_export_and_explain(tmp_path, pooling, layers):
    x, y = toy_data(n=32, size=32)
    trainer = FoldTrainer(config(size=32, epochs=1, pooling=pooling, head_layers=layers, head_units=8),
                          n_classes=2, n_train_hint=24)
    dense = [layer.name for layer in trainer.classifier.layers if layer.name.startswith("head_dense")]
    assert dense == [f"head_dense_{i}" for i in range(1, layers + 1)]
    assert trainer.classifier.get_layer("head_dense_1").units == 8
    result = trainer.fit_fold(0, x[:24], y[:24], x[24:], y[24:])
    assert result.ok
    path = tmp_path / "model.keras"
    trainer.classifier.save(path)
    loaded = load_model(path)
    np.testing.assert_allclose(loaded.predict(x[24:], verbose=0), result.proba, atol=1e-5)
    cams = GradCam(loaded)(x[24:26])  # splits the loaded model into features and this head
    assert cams.cams.shape == (2, 2, 2) and np.isfinite(cams.cams).all()


def test_flatten_needs_a_small_feature_map():
    side = 16 * (FLATTEN_MAX_SIDE + 1)  # simple_cnn halves 4 times: a 9x9 map
    with pytest.raises(ConfigError, match="flatten' needs a feature map of at most 8x8; .* gives 9x9"):
        build_classifier("simple_cnn", 2, side, head=HeadSpec(pooling="flatten"))
    assert build_classifier("simple_cnn", 2, 16 * FLATTEN_MAX_SIDE, head=HeadSpec(pooling="flatten")).model


def test_the_paper_space_loads_and_every_sample_is_a_valid_config():
    space = load_space(builtin_space("paper"))
    for name in ("weights", "schedule", "warmup_epochs", "head_epochs", "backbone_lr_scale", "pooling",
                 "head_layers", "head_units"):
        assert name in space
    assert set(space.param("weights").choices) == {"imagenet", "none"}
    assert space.param("size").value == 224
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        # One backbone pinned: the combinations do not depend on it, and counting blocks builds it.
        c = config_from_values(space.suggest(trial, {"backbone": "vgg16"}), seed=0)  # a TrainConfig: raises on a bad combination
        seen.add((c.weights, c.schedule, c.head_epochs > 0, c.pooling))
        study.tell(trial, 0.0)
    assert {s[0] for s in seen} == {"imagenet", None} and {s[3] for s in seen} == {"avg", "max", "flatten"}
    assert any(s[2] for s in seen) and not any(s[2] for s in seen if s[0] is None)


def test_training_curves_draw_the_learning_rate_and_the_phases(tmp_path):
    from PIL import Image

    from bench.report.figures import training_curves_figure

    rows = [{"fold": f, "epoch": e, "metric": m, "value": v}
            for f in range(2) for e in range(1, 5)
            for m, v in (("loss", 1 / e), ("val_loss", 1.2 / e), ("accuracy", 0.5 + e / 10),
                         ("learning_rate", 1e-3 * 0.5 ** (e // 2)), ("phase", 1.0 if e <= 2 else 2.0))]
    history = pd.DataFrame(rows)
    with_lr = training_curves_figure(history, tmp_path, "with", "t", "c")
    without = training_curves_figure(history[~history.metric.isin(["learning_rate", "phase"])], tmp_path, "without",
                                     "t", "c")
    assert Image.open(with_lr.png).width > Image.open(without.png).width  # a third panel
