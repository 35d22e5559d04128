"""Vision transformers from keras-hub: blocks at the transformer layers, a 4-D feature map, preset
weights from a local folder, a clear error offline, and a real fit, at random init and tiny size
(32 px, 8 px patches, 2 layers of width 32): no test downloads a preset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from bench.cli import main
from bench.deploy.export import load_model
from bench.deploy.gradcam import GradCam, find_target_layer
from bench.errors import ConfigError, NetworkError
from bench.models import (
    blocks,
    build_classifier,
    check_size,
    cut_points,
    get_backbone,
    hub,
    registry,
    resolve_weights,
    set_unfrozen,
    store,
)
from bench.results import RunDir

REPO = Path(__file__).resolve().parents[1]
TINY = "vit_tiny_test"
TINY_PRESET = "vit_tiny_test_preset"
TINY_ARCH = hub.ViTArch(patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> registry.Backbone:
    """A tiny ViT registered for this test only (the registry is restored afterwards)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    hub.register_vit(TINY, TINY_ARCH, title="tiny ViT (tests)", preset=TINY_PRESET, default_size=32)
    return get_backbone(TINY)


def keras_hub_vit(size: int = 32) -> keras.Model:
    import keras_hub

    return keras_hub.models.ViTBackbone(**TINY_ARCH.config((size, size, 3)))


def images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype("float32")


# --- the graph -------------------------------------------------------------------------------


def test_blocks_are_the_patch_embedding_and_each_transformer_layer(tiny: registry.Backbone) -> None:
    model = tiny.build((32, 32, 3), None)
    assert [[layer.name for layer in b] for b in blocks(model)] == [
        ["input_layer", "vit_patching_and_embedding"],
        ["transformer_block_1"],
        ["transformer_block_2", "encoder_ln", "token_grid"],  # the final norm joins the last layer
    ]
    assert cut_points(model) == ["vit_patching_and_embedding", "transformer_block_1", "transformer_block_2",
                                 "encoder_ln", "token_grid"]
    assert tuple(model.output.shape) == (None, 4, 4, 32)  # 32/8 patches a side, hidden 32
    # The registered ones: patch embedding + one block per transformer layer.
    vit_b16 = get_backbone("vit_b16").build((32, 32, 3), None)
    assert len(blocks(vit_b16)) == 1 + 12 and tuple(vit_b16.output.shape) == (None, 2, 2, 768)


def test_same_function_as_keras_hubs_backbone_with_its_weights(tiny: registry.Backbone) -> None:
    # keras-hub's own ViTBackbone with random weights, copied into bench's graph: the patch
    # tokens of both agree, and bench's grid puts token (r * w + c) at row r, column c.
    reference = keras_hub_vit()
    model = hub.assemble(TINY, (32, 32, 3), TINY_ARCH.config((32, 32, 3)))
    hub.copy_hub_weights(reference, model)
    x = images(2) / 127.5 - 1.0
    tokens = keras.ops.convert_to_numpy(reference(x))
    grid = keras.ops.convert_to_numpy(model(x))
    assert tokens.shape == (2, 1 + 16, 32)
    np.testing.assert_allclose(grid, tokens[:, 1:, :].reshape(2, 4, 4, 32), atol=1e-5)
    assert np.abs(grid[:, 1, 2] - tokens[:, 1 + 1 * 4 + 2]).max() < 1e-5


def test_unfrozen_one_trains_the_last_transformer_layer_and_the_head(tiny: registry.Backbone) -> None:
    clf = build_classifier(TINY, 2, 32, unfrozen=1)
    assert clf.n_blocks == 3 and clf.trainable_blocks == 1
    trainable = {layer.name for layer in clf.base.layers if layer.trainable}
    assert trainable == {"transformer_block_2", "encoder_ln", "token_grid"}
    block = clf.base.get_layer("transformer_block_2")
    ln = clf.base.get_layer("encoder_ln")
    head = clf.model.get_layer("predictions")
    expected = block.count_params() + ln.count_params() + head.count_params()
    assert clf.trainable_params == expected
    assert not clf.base.get_layer("transformer_block_1").trainable_weights  # its attention too
    # Frozen entirely, then all again: the sublayers (attention, MLP) follow every time.
    set_unfrozen(clf.base, 0)
    assert not clf.base.trainable_weights
    set_unfrozen(clf.base, "all")
    assert len(clf.base.trainable_weights) == len(clf.base.weights)


def test_image_size_must_be_a_multiple_of_the_patch(tiny: registry.Backbone) -> None:
    assert check_size(tiny, 40) == 40
    with pytest.raises(ConfigError, match=r"36 does not suit backbone 'vit_tiny_test'.*multiple of 8 \(e.g. 32 or 40\)"):
        check_size(tiny, 36)
    with pytest.raises(ConfigError, match="at least 8 px"):
        check_size(tiny, 4)
    with pytest.raises(ConfigError, match="multiple of 16"):
        build_classifier("vit_b16", 2, 100)


@pytest.mark.parametrize("name", ["vit_b16", "vit_b32", pytest.param("vit_l16", marks=pytest.mark.slow)])
def test_registered_presets_are_keras_hubs_and_fit_at_their_size(name: str) -> None:
    # The preset exists in this keras-hub, and bench's graph at the preset's size has exactly the
    # parameter count keras-hub publishes for it (position embeddings included): its weights fit.
    import keras_hub

    spec = get_backbone(name)
    presets = keras_hub.models.ViTBackbone.presets
    assert spec.imagenet_preset in presets and "ImageNet 1k" in presets[spec.imagenet_preset]["metadata"]["description"]
    assert f"{spec.default_size}x{spec.default_size}" in presets[spec.imagenet_preset]["metadata"]["description"]
    model = spec.build((spec.default_size,) * 2 + (3,), None)
    assert model.count_params() == presets[spec.imagenet_preset]["metadata"]["params"]


# --- weights: a local preset folder, offline, download failures, no keras-hub ----------------


def test_imagenet_resolves_to_a_local_preset_folder_with_its_weights(
    tiny: registry.Backbone, weights_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = keras_hub_vit()
    reference.save_to_preset(str(weights_dir / TINY_PRESET))  # as an air-gapped user copies it
    assert resolve_weights(tiny, "imagenet") == str(weights_dir / TINY_PRESET)

    clf = build_classifier(TINY, 2, 32, weights="imagenet", unfrozen=0)
    x = images(2) / 127.5 - 1.0
    np.testing.assert_allclose(keras.ops.convert_to_numpy(clf.base(x)),
                               keras.ops.convert_to_numpy(reference(x))[:, 1:, :].reshape(2, 4, 4, 32), atol=1e-5)
    # A preset folder given as a path works too; at another size the position embeddings don't fit.
    assert resolve_weights(tiny, str(weights_dir / TINY_PRESET)) == str(weights_dir / TINY_PRESET)
    with pytest.raises(ConfigError, match=r"vit_tiny_test_preset\) are for 32x32 px.*Use size 32"):
        build_classifier(TINY, 2, 64, weights="imagenet")

    # The feature cache keys frozen features by the weights: for a preset, by its folder's files.
    from bench.training.features import weights_identity

    folder_id = weights_identity(str(weights_dir / TINY_PRESET), clf.base)
    assert len(folder_id) == 64 and folder_id == weights_identity(str(weights_dir / TINY_PRESET), clf.base)
    keras_hub_vit().save_to_preset(str(weights_dir / "other"))  # same config, other random weights
    assert weights_identity(str(weights_dir / "other"), clf.base) != folder_id

    [info] = store.inspect([TINY])
    assert info.present and info.path == weights_dir / TINY_PRESET and info.check == "keras-hub preset"
    assert info.size and info.size > 4 * reference.count_params()  # float32 weights in the folder
    assert main(["weights", "list", TINY]) == 0
    out = capsys.readouterr().out
    assert "vit_tiny_test" in out and "present" in out and "keras-hub preset" in out


def test_offline_without_the_preset_names_it_and_how_to_get_it(weights_dir: Path, monkeypatch) -> None:
    import keras_hub

    monkeypatch.setenv("BENCH_OFFLINE", "1")
    asked: list[str] = []  # offline means no download is even tried (keras-hub's goes to Kaggle)
    monkeypatch.setattr(keras_hub.models.ViTBackbone, "from_preset", lambda preset, **kw: asked.append(preset))
    with pytest.raises(NetworkError) as caught:
        resolve_weights(get_backbone("vit_b16"), "imagenet")
    assert asked == []
    message = str(caught.value)
    for part in ("'vit_b16'", "vit_base_patch16_224_imagenet", "offline", "bench weights pull vit_b16",
                 "save_to_preset('vit_base_patch16_224_imagenet')", str(weights_dir)):
        assert part in message, (part, message)
    [info] = store.inspect(["vit_b16"])
    assert not info.present and info.file == "vit_base_patch16_224_imagenet"


def test_a_failed_download_names_the_preset(weights_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    import keras_hub

    asked = []

    def unreachable(preset, **kwargs):
        asked.append(preset)
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.ViTBackbone, "from_preset", unreachable)
    with pytest.raises(NetworkError, match=r"vit_large_patch16_224_imagenet.*'vit_l16'.*api\.kaggle\.com.*save_to_preset"):
        resolve_weights(get_backbone("vit_l16"), "imagenet")
    assert asked == ["vit_large_patch16_224_imagenet"]
    assert not weights_dir.exists() or not any(weights_dir.iterdir())  # no half-written folder
    # The CLI: a clear message and a non-zero exit, no traceback.
    assert main(["weights", "pull", "vit_l16"]) != 0
    err = capsys.readouterr().err
    assert "vit_large_patch16_224_imagenet" in err and "Traceback" not in err


def test_bench_imports_and_lists_without_keras_hub_and_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['keras_hub'] = None\n"
        "from bench.errors import ConfigError\n"
        "from bench.models import backbone_names, build_classifier\n"
        "assert 'vit_b16' in backbone_names() and 'resnet50' in backbone_names()\n"
        "try:\n"
        "    build_classifier('vit_b16', 2, 32)\n"
        "except ConfigError as err:\n"
        "    print('ERROR', err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ERROR Backbone 'vit_b16' is built from keras-hub, which is not installed" in done.stdout
    assert "pip install -e '.[hub]'" in done.stdout


# --- training, Grad-CAM, features, saving ----------------------------------------------------


def cv_tiny(out_dir: Path, capsys, *options: str) -> None:
    """`bench cv` of the tiny ViT on the demo X-rays: 32 px, 2 folds, 2 epochs, random init."""
    code = main(["cv", "--dataset", "pneumonia-demo", "--backbone", TINY, "--weights", "none", "--size", "32",
                 "--folds", "2", "--epochs", "2", *options, "--out", str(out_dir)])
    assert code == 0, capsys.readouterr().err


def test_cv_fits_a_tiny_vit_with_its_last_layer_unfrozen(tiny: registry.Backbone, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "run"
    cv_tiny(out_dir, capsys, "--unfrozen", "1", "--pooling", "max")
    preds = RunDir.open(out_dir).table("predictions")
    proba = preds[["p_NORMAL", "p_PNEUMONIA"]].to_numpy()
    assert len(preds) > 100 and np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-4)


def test_frozen_features_are_cached_for_a_tiny_vit(tiny: registry.Backbone, tmp_path: Path, capsys) -> None:
    # unfrozen 0 + no augmentation: the trial trains its head on cached (4, 4, 32) token grids.
    cv_tiny(tmp_path / "run", capsys, "--unfrozen", "0", "--augment", "none")
    from bench.training.features import features_dir

    entries = list(features_dir().rglob("*.npy"))
    assert entries, "no feature cache entry written"
    assert np.load(entries[0], mmap_mode="r").shape[1:] == (4, 4, 32)


def test_grad_cam_and_a_saved_model_round_trip(tiny: registry.Backbone, tmp_path: Path) -> None:
    clf = build_classifier(TINY, 3, 32, unfrozen=1)
    target = find_target_layer(clf.model)
    assert target.shape == (4, 4, 32) and target.block == 2 and target.n_blocks == 3
    result = GradCam(clf.model)(images(2).astype(np.uint8))
    assert result.cams.shape == (2, 4, 4) and np.isfinite(result.cams).all()
    path = tmp_path / "vit.keras"
    clf.model.save(path)
    loaded = load_model(path)  # what bench predict / explain use
    x = images(3)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), clf.model.predict(x, verbose=0), atol=1e-5)
    assert find_target_layer(loaded).n_blocks == 3  # blocks survive saving (declared in the config)
