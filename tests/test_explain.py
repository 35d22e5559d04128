"""Grad-CAM: the target layer of every backbone, heat on a known signal, `bench explain`, the report grid."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.deploy.explain import explanation_grid
from bench.deploy.explainers import METHODS, get_method, make_explainer
from bench.deploy.gradcam import (
    GRADIENTS,
    GradCam,
    find_target_layer,
    overlay,
    upsample,
)
from bench.errors import ConfigError
from bench.models import backbone_names, block_outputs, build_classifier, get_backbone
from tests.test_export import class_folder, final_run, heldout_images, run_main  # noqa: F401  (final_run: a session fixture)


# ViT-L/16's 300M random weights take ~10 s to initialise: in the slow suite.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "vit_l16" else n
                                  for n in backbone_names()])
def test_target_is_the_last_block_of_every_backbone(name):
    size = max(get_backbone(name).min_size, 32)
    parts = build_classifier(name, 3, size)
    target = find_target_layer(parts.model)
    assert target.backbone == parts.base.name
    assert target.block == target.n_blocks - 1 and target.n_blocks == len(block_outputs(parts.base))
    assert target.tensor is block_outputs(parts.base)[-1]
    assert len(target.shape) == 3 and min(target.shape) >= 1
    # The split into features and head reproduces the model (checked inside), and gives maps.
    cam = GradCam(parts.model)
    result = cam(np.random.default_rng(0).integers(0, 256, (1, size, size, 3)).astype(np.uint8))
    assert result.cams.shape == (1, *target.shape[:2])
    assert np.isfinite(result.cams).all() and result.cams.min() >= 0 and result.cams.max() <= 1
    np.testing.assert_allclose(result.proba.sum(axis=1), 1.0, atol=1e-5)


def test_earlier_blocks_and_bad_blocks():
    model = build_classifier("simple_cnn", 2, 64).model
    assert find_target_layer(model).shape == (4, 4, 256)
    second_last = find_target_layer(model, block=-2)
    assert second_last.shape == (8, 8, 128) and second_last.name == "block3_pool"
    cam = GradCam(model, block=-2)
    assert cam(np.zeros((2, 64, 64, 3), np.uint8), 1).cams.shape == (2, 8, 8)
    with pytest.raises(ConfigError, match="out of range.*4 blocks"):
        find_target_layer(model, block=-5)


def test_a_flat_model_uses_its_last_4d_layer():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_a")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    target = find_target_layer(model)
    assert target.name == "conv_b" and target.backbone is None and target.shape == (16, 16, 4)
    assert GradCam(model)(np.full((1, 16, 16, 3), 128, np.uint8)).cams.shape == (1, 16, 16)


def test_every_backend_has_a_gradient_function():
    assert set(GRADIENTS) == {"tensorflow", "torch", "jax"}


SIZE, SIDE = 64, 14


def squares(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Noise images; class 1 has a bright square at a random place (its top-left corner returned)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(40, 120, (n, SIZE, SIZE, 3)).astype(np.uint8)
    y = np.arange(n) % 2
    corners = []
    for i in range(n):
        r, c = (int(v) for v in rng.integers(0, SIZE - SIDE + 1, 2))
        corners.append((r, c))
        if y[i] == 1:
            x[i, r:r + SIDE, c:c + SIDE] = 230
    return x, y, corners


def test_gradcam_heat_lies_on_the_bright_square():
    from bench.training.train import FoldTrainer, TrainConfig

    x, y, _ = squares(320, seed=0)
    config = TrainConfig(backbone="simple_cnn", size=SIZE, epochs=3, augment="none", lr=2e-3, batch_size=32)
    trainer = FoldTrainer(config, 2, n_train_hint=len(x))
    trainer.fit_full(x, y)  # no inner split: the configured epochs at a constant rate
    xt, yt, corners = squares(40, seed=1)
    assert (trainer.predict(xt).argmax(axis=1) == yt).mean() >= 0.9
    cam = GradCam(trainer.classifier)
    assert cam.target.shape[:2] == (4, 4)  # simple_cnn's last block at 64 px
    positives = np.flatnonzero(yt == 1)
    heat = cam(xt[positives], 1).heat(SIZE)
    inside, outside = [], []
    for k, i in enumerate(positives):
        r, c = corners[i]
        box = np.zeros((SIZE, SIZE), bool)
        box[r:r + SIDE, c:c + SIDE] = True
        inside.append(heat[k][box].mean())
        outside.append(heat[k][~box].mean())
    inside, outside = np.array(inside), np.array(outside)
    assert inside.mean() > outside.mean() + 0.3, (inside.mean(), outside.mean())
    assert (inside > outside + 0.1).mean() >= 0.9


def test_overlay_and_upsample():
    heat = np.zeros((2, 2), np.float32)
    heat[0, 0] = 1.0
    big = upsample(heat, 32)
    assert big.shape == (32, 32) and big[:8, :8].mean() > big[24:, 24:].mean()
    image = np.full((32, 32, 3), 100, np.uint8)
    out = overlay(image, heat)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(out[:8, :8].astype(int) - 100).sum() > np.abs(out[24:, 24:].astype(int) - 100).sum()


def test_bench_explain_writes_overlays(final_run, tmp_path, capsys):
    images = heldout_images(final_run, n_per_class=2)
    folder = tmp_path / "images"
    for row in images.itertuples():
        (folder / row.truth).mkdir(parents=True, exist_ok=True)
        shutil.copy(row.file, folder / row.truth / Path(row.file).name)
    (folder / "NORMAL" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "cams"
    code, text, err = run_main(capsys, "explain", final_run / "models" / "simple_cnn.keras", folder,
                               "--out", out, "--display-size", "96")
    assert code == 0, err
    assert "block4_pool" in text and "broken.png" in err
    index = pd.read_csv(out / "gradcam.csv")
    assert len(index) == 4 and set(index.truth) == {"NORMAL", "PNEUMONIA"}
    assert (index.explained == index.predicted).all()
    for name in index.overlay:
        with Image.open(out / name) as im:
            assert im.size == (96, 96) and im.mode == "RGB"
    # Explaining a named class, and a class the model does not have.
    code, _, err = run_main(capsys, "explain", final_run / "models" / "simple_cnn.keras", folder / "NORMAL",
                            "--out", tmp_path / "cams2", "--class", "PNEUMONIA")
    assert code == 0 and (pd.read_csv(tmp_path / "cams2" / "gradcam.csv").explained == "PNEUMONIA").all()
    code, _, err = run_main(capsys, "explain", final_run / "models" / "simple_cnn.keras", folder,
                            "--out", tmp_path / "cams3", "--class", "PNEUMONA")
    assert code == 2 and "Did you mean 'PNEUMONIA'" in err


def test_gradcam_grid_for_the_report(final_run, tmp_path):
    png = explanation_grid(final_run, tmp_path / "fig" / "gradcam.png", per_class=2)
    assert png == tmp_path / "fig" / "gradcam.png" and png.is_file()
    with Image.open(png) as im:
        assert im.size[0] > 300 and im.size[1] > 300
    # No final model: nothing to draw.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(final_run / "manifest.json", bare / "manifest.json")
    assert explanation_grid(bare, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    # The final model's file gone (e.g. a run copied without models/): also None.
    moved = tmp_path / "moved"
    shutil.copytree(final_run, moved, ignore=shutil.ignore_patterns("models", "export"))
    assert json.loads((moved / "final.json").read_text())["backbones"]
    assert explanation_grid(moved, tmp_path / "none.png") is None


# ---- every explanation method (bench.deploy.explainers) -------------------------------------------------------

BRIGHT_SIZE, BRIGHT_SIDE = 32, 10


def bright_square_model() -> keras.Model:
    """Class 1 exactly when the image has bright pixels: a 1x1 convolution passes brightness above
    0.6 (a bright square, not the 40-120 noise), averaged over the image, so the score grows with
    the bright area. Built, not trained: the test checks the methods, in seconds."""
    inputs = keras.Input((BRIGHT_SIZE, BRIGHT_SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(1, 1, activation="relu", name="bright")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.get_layer("bright").set_weights([np.full((1, 1, 3, 1), 1 / 3, "float32"), np.array([-0.6], "float32")])
    model.layers[-1].set_weights([np.array([[-150.0, 150.0]], "float32"), np.array([1.5, -1.5], "float32")])
    return model


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_puts_its_weight_on_the_bright_square(method):
    rng = np.random.default_rng(3)
    x = rng.integers(40, 120, (3, BRIGHT_SIZE, BRIGHT_SIZE, 3)).astype(np.uint8)
    boxes = []
    for i, (r, c) in enumerate([(3, 4), (18, 15), (10, 20)]):
        x[i, r:r + BRIGHT_SIDE, c:c + BRIGHT_SIDE] = 230
        box = np.zeros((BRIGHT_SIZE, BRIGHT_SIZE), bool)
        box[r:r + BRIGHT_SIDE, c:c + BRIGHT_SIDE] = True
        boxes.append(box)
    model = bright_square_model()
    result = make_explainer(method, model)(x, 1)
    assert (result.proba.argmax(axis=1) == 1).all() and (result.explained == 1).all()
    noise = rng.integers(40, 120, (1, BRIGHT_SIZE, BRIGHT_SIZE, 3)).astype(np.uint8)
    assert model.predict(noise, verbose=0).argmax() == 0  # the square decides the class
    heat = np.stack([upsample(m, BRIGHT_SIZE) for m in result.maps])
    k = BRIGHT_SIDE * BRIGHT_SIDE
    for h, box in zip(heat, boxes):
        assert h.min() >= 0 and h.max() == pytest.approx(1.0)
        assert h[box].mean() > 3 * h[~box].mean(), (method, h[box].mean(), h[~box].mean())
        top = np.argsort(-h.ravel(), kind="stable")[:k]
        assert box.ravel()[top].mean() >= 0.7, (method, box.ravel()[top].mean())


def test_unknown_method_is_a_clear_error():
    with pytest.raises(ConfigError, match="Unknown explanation method 'limes'.*Did you mean 'lime'"):
        get_method("limes")


def test_bench_explain_with_lime_and_occlusion(final_run, tmp_path, capsys):
    folder = class_folder(heldout_images(final_run, n_per_class=1), tmp_path / "images")
    model = final_run / "models" / "simple_cnn.keras"
    for method in ("lime", "occlusion"):
        out = tmp_path / method
        code, text, err = run_main(capsys, "explain", model, folder, "--out", out, "--method", method,
                                   "--display-size", "96")
        assert code == 0, err
        index = pd.read_csv(out / f"{method}.csv")
        assert len(index) == 2 and all(name.endswith(f".{method}.png") for name in index.overlay)
        for name in index.overlay:
            with Image.open(out / name) as im:
                assert im.size == (96, 96)
    code, _, err = run_main(capsys, "explain", model, folder, "--out", tmp_path / "x", "--method", "lime",
                            "--block", "-2")
    assert code == 2 and "--block chooses the layer Grad-CAM reads" in err


def test_the_held_out_grid_with_another_method(final_run, tmp_path):
    png = explanation_grid(final_run, tmp_path / "occlusion_simple_cnn.png", per_class=1, method="occlusion")
    assert png is not None and png.is_file()
    with Image.open(png) as im:
        assert im.size[0] > 200
