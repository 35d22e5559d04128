"""bench.models: registry, cut points and blocks, unfreezing, preprocessing, head, weights.

Real Keras models at small input sizes; the network is blocked for every test in this file.
"""

from __future__ import annotations

import socket
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from bench.errors import ConfigError, NetworkError
from bench.models import (
    Backbone,
    Preprocess,
    backbone_names,
    block_ends,
    block_outputs,
    blocks,
    build_classifier,
    cut_points,
    describe_backbone,
    get_backbone,
    load_weights_file,
    resolve_weights,
    set_unfrozen,
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def small_size(name: str) -> int:
    return max(get_backbone(name).min_size, 32)


# --- cut points and blocks on hand-built graphs ----------------------------------------------


def conv(name: str, filters: int = 4) -> keras.layers.Conv2D:
    return keras.layers.Conv2D(filters, 3, padding="same", name=name)


def test_cut_points_of_a_residual_model() -> None:
    inputs = keras.Input((8, 8, 3), name="in")
    a = conv("stem")(inputs)
    b = conv("branch_c1")(a)
    b = conv("branch_c2")(b)
    x = keras.layers.Add(name="res_add")([a, b])
    x = keras.layers.ReLU(name="res_relu")(x)
    left, right = conv("left", 2)(x), conv("right", 2)(x)
    x = keras.layers.Concatenate(name="cat")([left, right])
    x = conv("last")(x)
    model = keras.Model(inputs, x)

    assert cut_points(model) == ["stem", "res_add", "res_relu", "cat", "last"]
    assert block_ends(model) == ["res_add", "cat", "last"]
    assert [[layer.name for layer in b] for b in blocks(model)] == [
        ["in", "stem", "branch_c1", "branch_c2", "res_add"],
        ["res_relu", "left", "right", "cat"],
        ["last"],
    ]


def test_op_level_add_is_a_merge_and_weightless_spans_join_the_block_before() -> None:
    # ConvNeXt writes its residuals as `x + y` (a keras op, not an Add layer).
    inputs = keras.Input((8, 8, 3), name="in")
    a = conv("stem")(inputs)
    x = a + conv("branch")(a)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.MaxPooling2D(name="stage1_pool")(x)  # [relu, pool] holds no weights
    x = conv("head")(x)
    model = keras.Model(inputs, x)

    assert cut_points(model)[0] == "stem" and cut_points(model)[-3:] == ["relu", "stage1_pool", "head"]
    assert block_ends(model) == ["stage1_pool", "head"]
    assert [len(b) for b in blocks(model)] == [5, 1]  # in, stem, branch, relu, pool | head

    # Splitting at a block output (the frozen-feature cache's job) reproduces the model exactly.
    boundary = block_outputs(model)[0]
    prefix, suffix = keras.Model(inputs, boundary), keras.Model(boundary, model.outputs[0])
    images = np.random.default_rng(5).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(suffix(prefix(images))),
        keras.ops.convert_to_numpy(model(images)),
        rtol=1e-6,
    )


def test_cut_points_of_a_plain_chain_are_every_layer() -> None:
    model = get_backbone("simple_cnn").build((16, 16, 3), None)
    assert cut_points(model) == [layer.name for layer in model.layers[1:]]
    assert block_ends(model) == [f"block{i}_pool" for i in range(1, 5)]


# --- every backbone --------------------------------------------------------------------------

# (layers, cut points, blocks) with Keras 3.15; DESIGN.md lists the cut counts.
EXPECTED = {
    "resnet50": (175, 38, 17),
    "resnet50v2": (190, 30, 18),
    "vgg16": (19, 18, 5),
    "densenet121": (427, 78, 63),
    "inception_v3": (311, 28, 13),
    "efficientnet_b0": (237, 82, 10),
    "efficientnetv2_b0": (270, 63, 16),
    "mobilenet_v2": (154, 73, 11),
    "mobilenet_v3_small": (157, 58, 7),
    "convnext_tiny": (133, 24, 19),
    "efficientnet_lite0": (141, 68, 10),
    "simple_cnn": (17, 16, 4),
    # keras-hub ViTs (tests/test_hub.py): patch embedding + one block per transformer layer.
    "vit_b16": (16, 15, 13),
    "vit_b32": (16, 15, 13),
    "vit_l16": (28, 27, 25),
}


def test_registry_lists_the_builtin_backbones() -> None:
    assert set(EXPECTED) == set(backbone_names())


# Building (no forward pass) takes 0.1-1.5 s per backbone here, so all of them run by default.
# ViT-L/16's 300M random weights take ~10 s to initialise: in the slow suite.
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "vit_l16" else n for n in EXPECTED])
def test_backbone_builds_and_splits_into_blocks(name: str) -> None:
    size = small_size(name)
    model = get_backbone(name).build((size, size, 3), None)
    parts = blocks(model)

    assert (len(model.layers), len(cut_points(model)), len(parts)) == EXPECTED[name]
    assert len(parts) >= 3
    # Blocks partition the layers (each exactly once) and each ends at a cut point.
    assert sorted(id(x) for part in parts for x in part) == sorted(id(x) for x in model.layers)
    assert set(block_ends(model)) <= set(cut_points(model))
    assert block_ends(model)[-1] == model.layers[-1].name


def test_backbone_forward_pass_at_min_size() -> None:
    model = get_backbone("mobilenet_v2").build((32, 32, 3), None)
    out = model(np.zeros((1, 32, 32, 3), "float32"))
    assert out.shape[0] == 1 and out.shape[-1] == 1280


def test_unknown_backbone_suggests_close_matches() -> None:
    with pytest.raises(ConfigError, match=r"'resnet5'.*Did you mean 'resnet50'.*bench backbones"):
        get_backbone("resnet5")


@pytest.mark.filterwarnings("ignore:`input_shape` is undefined:UserWarning")
def test_imagenet_file_names_and_urls_are_the_ones_keras_downloads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Ask each Keras constructor for 'imagenet' and catch the (fname, origin) it would fetch.
    class Asked(Exception):
        pass

    def fake_get_file(fname: str, origin: str, **kwargs: object) -> str:
        raise Asked(fname, origin)

    monkeypatch.setattr("keras.src.utils.file_utils.get_file", fake_get_file)
    constructors = {
        "resnet50": keras.applications.ResNet50,
        "resnet50v2": keras.applications.ResNet50V2,
        "vgg16": keras.applications.VGG16,
        "densenet121": keras.applications.DenseNet121,
        "inception_v3": keras.applications.InceptionV3,
        "efficientnet_b0": keras.applications.EfficientNetB0,
        "efficientnetv2_b0": keras.applications.EfficientNetV2B0,
        "mobilenet_v2": keras.applications.MobileNetV2,
        "mobilenet_v3_small": keras.applications.MobileNetV3Small,
        "convnext_tiny": keras.applications.ConvNeXtTiny,
    }
    # Converted weights (efficientnet_lite0) have no Keras URL: tests/test_weights.py covers them.
    assert set(constructors) == {n for n in backbone_names() if get_backbone(n).imagenet_url}
    for name, constructor in constructors.items():
        size = 224 if name == "mobilenet_v2" else small_size(name)
        with pytest.raises(Asked) as asked:
            constructor(include_top=False, weights="imagenet", input_shape=(size, size, 3))
        spec = get_backbone(name)
        assert asked.value.args == (spec.imagenet_file, spec.imagenet_url), name


# --- unfreezing ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet() -> keras.Model:
    return get_backbone("resnet50").build((32, 32, 3), None)


def trainable_layer_names(model: keras.Model) -> set[str]:
    return {layer.name for layer in model.layers if layer.trainable and layer.weights}


def test_set_unfrozen_depths(resnet: keras.Model) -> None:
    parts = blocks(resnet)
    assert set_unfrozen(resnet, 0) == 0
    assert resnet.trainable_weights == []

    assert set_unfrozen(resnet, 1) == 1
    assert trainable_layer_names(resnet) == {x.name for x in parts[-1] if x.weights}
    assert trainable_layer_names(resnet) >= {"conv5_block3_3_conv", "conv5_block3_3_bn"}

    assert set_unfrozen(resnet, 3) == 3
    assert trainable_layer_names(resnet) == {x.name for p in parts[-3:] for x in p if x.weights}

    assert set_unfrozen(resnet, "all") == len(parts) == 17
    assert len(resnet.trainable_weights) == len([w for w in resnet.weights if w.trainable])
    assert trainable_layer_names(resnet) == {x.name for x in resnet.layers if x.weights}
    assert set_unfrozen(resnet, "2") == 2  # from a command line


@pytest.mark.parametrize("depth", [18, -1, "lots", True, 1.5])
def test_set_unfrozen_rejects_bad_depths(resnet: keras.Model, depth: object) -> None:
    with pytest.raises(ConfigError, match=r"resnet50.*from 0 .* to 17 or 'all'"):
        set_unfrozen(resnet, depth)  # type: ignore[arg-type]


def bn_stats(model: keras.Model) -> list[np.ndarray]:
    return [
        keras.ops.convert_to_numpy(w)
        for layer in model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
        for w in (layer.moving_mean, layer.moving_variance)
    ]


def test_frozen_batchnorm_runs_in_inference_mode() -> None:
    model = get_backbone("simple_cnn").build((16, 16, 3), None)
    x = np.random.default_rng(0).uniform(-3, 3, (4, 16, 16, 3)).astype("float32")

    set_unfrozen(model, 0)
    before = bn_stats(model)
    trained = keras.ops.convert_to_numpy(model(x, training=True))
    inferred = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(trained, inferred, rtol=1e-5, atol=1e-5)
    for a, b in zip(before, bn_stats(model)):
        np.testing.assert_array_equal(a, b)

    # Contrast: the unfrozen last block's BN does use batch statistics and update.
    set_unfrozen(model, 1)
    model(x, training=True)
    after = bn_stats(model)
    for a, b in zip(before[:6], after[:6]):  # blocks 1-3: mean and variance each
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(before[6], after[6])


# --- preprocessing ---------------------------------------------------------------------------

KERAS_PREPROCESS = {
    "resnet50": keras.applications.resnet50,
    "resnet50v2": keras.applications.resnet_v2,
    "vgg16": keras.applications.vgg16,
    "densenet121": keras.applications.densenet,
    "inception_v3": keras.applications.inception_v3,
    "efficientnet_b0": keras.applications.efficientnet,
    "efficientnetv2_b0": keras.applications.efficientnet_v2,
    "mobilenet_v2": keras.applications.mobilenet_v2,
    "mobilenet_v3_small": keras.applications.mobilenet_v3,
    "convnext_tiny": keras.applications.convnext,
}


@pytest.mark.parametrize("name", sorted(KERAS_PREPROCESS))
def test_preprocess_matches_keras_preprocess_input(name: str) -> None:
    images = np.random.default_rng(1).uniform(0, 255, (2, 5, 5, 3)).astype("float32")
    expected = KERAS_PREPROCESS[name].preprocess_input(images.copy())
    got = keras.ops.convert_to_numpy(Preprocess(get_backbone(name).preprocess)(images))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_preprocess_serializes_and_rejects_unknown_modes() -> None:
    layer = Preprocess("torch", name="pre")
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(clone, Preprocess) and clone.mode == "torch" and clone.name == "pre"
    with pytest.raises(ConfigError, match=r"'torc'.*Did you mean 'torch'"):
        Preprocess("torc")


# --- the classifier --------------------------------------------------------------------------


def test_build_classifier_outputs_probabilities() -> None:
    clf = build_classifier("simple_cnn", 3, 32, unfrozen="all")
    probs = keras.ops.convert_to_numpy(
        clf.model.predict(np.random.default_rng(2).uniform(0, 255, (4, 32, 32, 3)), verbose=0)
    )
    assert probs.shape == (4, 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert clf.n_blocks == clf.trainable_blocks == 4
    assert clf.total_params == clf.model.count_params() - 1  # the head dropout's rate is no parameter
    assert clf.trainable_params < clf.total_params  # BN moving statistics never train


def test_build_classifier_keeps_float32_outputs_under_mixed_precision() -> None:
    old = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        clf = build_classifier("simple_cnn", 2, 16)
        out = clf.model(np.zeros((1, 16, 16, 3), "float32"))
    finally:
        keras.config.set_dtype_policy(old)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"


def test_build_classifier_with_a_frozen_base_trains_only_the_head() -> None:
    clf = build_classifier("mobilenet_v2", 2, 32, unfrozen=0)
    assert (clf.n_blocks, clf.trainable_blocks) == (11, 0)
    head = clf.model.get_layer("predictions")
    assert clf.trainable_params == head.count_params()


def test_bn_momentum_is_set_on_trainable_batchnorm_only() -> None:
    clf = build_classifier("mobilenet_v2", 2, 32, unfrozen=2, bn_momentum=0.5)
    bns = [x for x in clf.base.layers if isinstance(x, keras.layers.BatchNormalization)]
    trainable = [x.momentum for x in bns if x.trainable]
    frozen = [x.momentum for x in bns if not x.trainable]
    assert trainable and frozen
    assert set(trainable) == {0.5}
    assert set(frozen) == {0.999}  # MobileNetV2's own value, untouched


def test_size_below_min_size_names_both() -> None:
    with pytest.raises(ConfigError, match=r"64.*'inception_v3'.*75"):
        build_classifier("inception_v3", 2, 64)


@pytest.mark.parametrize(
    "kwargs, message",
    [({"n_classes": 1}, "at least 2"), ({"dropout": 1.0}, "Dropout"), ({"bn_momentum": 1.5}, "momentum")],
)
def test_build_classifier_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"backbone": "simple_cnn", "n_classes": 2, "size": 16, **kwargs}
    with pytest.raises(ConfigError, match=message):
        build_classifier(**args)


def test_describe_backbone() -> None:
    info = describe_backbone("vgg16", 32)
    assert info["layers"] == 19 and info["cut_points"] == 18 and info["blocks"] == 5
    assert info["params"] == 14714688 and info["min_size"] == 32
    assert info["preprocess"] == info["preprocessing"] == "caffe" and info["imagenet"] is True
    assert describe_backbone("simple_cnn")["size"] == 128


# --- weights ---------------------------------------------------------------------------------


@pytest.fixture
def weights_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("BENCH_WEIGHTS", raising=False)
    return tmp_path


def test_no_weights_and_bad_paths(weights_home: Path) -> None:
    spec = get_backbone("resnet50")
    assert resolve_weights(spec, None) is None
    assert resolve_weights(spec, "none") is None
    missing = weights_home / "nope.weights.h5"
    with pytest.raises(ConfigError, match=r"nope\.weights\.h5.*does not exist"):
        resolve_weights(spec, missing)
    with pytest.raises(ConfigError, match=r"'simple_cnn' has no ImageNet weights"):
        resolve_weights(get_backbone("simple_cnn"), "imagenet")


def test_offline_imagenet_error_says_what_to_put_where(
    weights_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = get_backbone("resnet50")
    with pytest.raises(NetworkError) as err:
        resolve_weights(spec, "imagenet")
    message = str(err.value)
    assert spec.imagenet_file in message and spec.imagenet_url in message
    assert str(weights_home / "keras" / "models") in message

    monkeypatch.setenv("BENCH_WEIGHTS", str(weights_home / "mine"))
    with pytest.raises(NetworkError, match=str(weights_home / "mine")):
        resolve_weights(spec, "imagenet")
    assert not (weights_home / "mine" / spec.imagenet_file).exists()  # no partial file left


def test_imagenet_file_found_locally_is_used_without_network(
    weights_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in backbone whose "ImageNet" file is a saved simple_cnn, put in the Keras cache.
    real = get_backbone("simple_cnn")
    source = real.build((16, 16, 3), None)
    for w in source.weights:
        w.assign(np.random.default_rng(3).normal(size=w.shape).astype(w.dtype))
    spec = Backbone(
        name="fake", title="Fake", build=real.build, preprocess="tf", min_size=16,
        imagenet_file="fake_notop.weights.h5", imagenet_url="https://example.invalid/fake",
    )  # fmt: skip
    cache = weights_home / "keras" / "models"
    cache.mkdir(parents=True)
    source.save_weights(cache / spec.imagenet_file)

    path = resolve_weights(spec, "imagenet")
    assert path == str(cache / spec.imagenet_file)
    loaded = spec.build((16, 16, 3), path)
    for a, b in zip(source.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))

    # $BENCH_WEIGHTS wins over the Keras cache.
    override = weights_home / "mine"
    override.mkdir()
    (override / spec.imagenet_file).write_bytes((cache / spec.imagenet_file).read_bytes())
    monkeypatch.setenv("BENCH_WEIGHTS", str(override))
    assert resolve_weights(spec, "imagenet") == str(override / spec.imagenet_file)


def test_weights_file_round_trip(tmp_path: Path) -> None:
    first = build_classifier("simple_cnn", 2, 16)
    for w in first.base.weights:
        w.assign(np.random.default_rng(4).normal(size=w.shape).astype(w.dtype))
    path = tmp_path / "base.weights.h5"
    first.base.save_weights(path)

    second = build_classifier("simple_cnn", 2, 16, weights=path)
    for a, b in zip(first.base.weights, second.base.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_foreign_weights_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "vgg.weights.h5"
    get_backbone("vgg16").build((32, 32, 3), None).save_weights(path)
    with pytest.raises(ConfigError, match=r"vgg\.weights\.h5.*simple_cnn"):
        build_classifier("simple_cnn", 2, 32, weights=path)


def test_partially_matching_file_is_an_error_not_a_warning(tmp_path: Path) -> None:
    # Keras only warns when parts of a .weights.h5 file match nothing and keeps random weights.
    class PartlyLoads:
        name = "fake"

        def load_weights(self, path: str) -> None:
            warnings.warn(
                "Skipping nested container at 'x': no matching group found in the saved file. "
                "Affected layers will retain their freshly-initialized weights.",
                UserWarning,
            )

    with pytest.raises(ConfigError, match=r"'fake'.*Skipping nested container"):
        load_weights_file(PartlyLoads(), tmp_path / "x.weights.h5")  # type: ignore[arg-type]


def test_efficientnet_b0_imagenet_file_gets_the_std_scaling(tmp_path: Path) -> None:
    # Keras adds Rescaling(1/sqrt(std)) after the Normalization only for 'imagenet'; loading the
    # ImageNet file by path must fold that factor in (and a bench-saved file must not).
    import h5py
    from keras.src.legacy.saving import (
        legacy_h5_format,  # the .h5 layout of the ImageNet files
    )

    spec = get_backbone("efficientnet_b0")
    source = spec.build((32, 32, 3), None)
    norm = next(x for x in source.layers if isinstance(x, keras.layers.Normalization))
    norm.adapt_mean.assign([120.0, 115.0, 100.0])
    norm.adapt_variance.assign([0.05, 0.04, 0.06])
    for name in (spec.imagenet_file, "other_notop.h5"):
        with h5py.File(tmp_path / name, "w") as f:
            legacy_h5_format.save_weights_to_hdf5_group(f, source)

    def variance(path: Path) -> np.ndarray:
        model = spec.build((32, 32, 3), str(path))
        layer = next(x for x in model.layers if isinstance(x, keras.layers.Normalization))
        return keras.ops.convert_to_numpy(layer.variance).reshape(-1)

    np.testing.assert_allclose(variance(tmp_path / "other_notop.h5"), [0.05, 0.04, 0.06], rtol=1e-6)
    np.testing.assert_allclose(
        variance(tmp_path / spec.imagenet_file),
        [0.05 * 0.229, 0.04 * 0.224, 0.06 * 0.225],
        rtol=1e-6,
    )
