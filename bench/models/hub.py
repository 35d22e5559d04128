"""Vision transformers from keras-hub: ViT-B/16, ViT-L/16, ViT-B/32, blocks at their layers.

bench's ViT is its own functional model calling keras-hub's layers in sequence (patch
embedding, each transformer layer, the final LayerNorm; see ``hub_layers``), so that every
transformer layer is a cut point and a block: ``unfrozen 1`` trains the last transformer layer
(with the final LayerNorm) and the head, ``unfrozen 0`` makes it a frozen feature extractor.
The output is the patch tokens without the class token, reshaped to the patch grid
(size/patch x size/patch x hidden), the 4-D feature map bench's head, Grad-CAM and feature cache
read.

ImageNet weights are keras-hub presets: a folder (config.json + model.weights.h5 ...) that
``save_to_preset`` writes. ``--weights imagenet`` uses ``$BENCH_WEIGHTS/<preset>/`` when it is
there (air-gapped machines: copy the folder), else keras-hub downloads it from Kaggle and bench
saves it there; offline, or when the download fails, an error names the preset and that route.
A ViT's position embeddings fix its grid: the preset weights load at the preset's size only
(keras-hub 0.32 does not interpolate them), random init works at any multiple of the patch.

CoAtNet is not in keras-hub (0.32), so bench has none: it is not written by hand here.

keras-hub is imported only when a ViT is built (``keras_hub_layers``): bench imports, lists and
runs its other backbones without it.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import keras

from bench.errors import BenchError, ConfigError, NetworkError
from bench.models.registry import Backbone, BuildFn, register_backbone
from bench.models.weights import load_weights_file

HUB_INSTALL = "pip install -e '.[hub]'"
PRESET_CONFIG = "config.json"  # what makes a folder a keras-hub preset


@dataclass(frozen=True)
class ViTArch:
    """A ViT's shape: keras-hub ``ViTBackbone`` arguments (its ImageNet presets use these)."""

    patch_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int

    def config(self, image_shape: tuple[int, int, int]) -> dict[str, Any]:
        return {
            "image_shape": list(image_shape), "patch_size": [self.patch_size] * 2,
            "num_layers": self.num_layers, "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim, "mlp_dim": self.mlp_dim,
        }  # fmt: skip


def keras_hub_layers(backbone: str, *, what: str | None = None) -> ModuleType:
    """``bench.models.hub_layers`` (which imports keras-hub), or a ConfigError naming the extra.

    ``what`` replaces "Backbone '<backbone>'" at the start of the message (e.g. a model file).
    """
    try:
        return importlib.import_module("bench.models.hub_layers")
    except ImportError as err:
        if not (err.name or "").startswith("keras_hub"):
            raise
        raise ConfigError(
            f"{what or f'Backbone {backbone!r}'} is built from keras-hub, which is not installed: run "
            f"`{HUB_INSTALL}` (or `pip install 'keras-hub>=0.22'`), or choose another backbone."
        ) from None


# --- building --------------------------------------------------------------------------------


def assemble(name: str, image_shape: tuple[int, int, int], config: dict[str, Any]) -> keras.Model:
    """bench's ViT graph for a keras-hub ``ViTBackbone`` config, with random weights."""
    hl = keras_hub_layers(name)
    patch = tuple(config["patch_size"]) if not isinstance(config["patch_size"], int) else (config["patch_size"],) * 2
    n_layers = int(config["num_layers"])
    eps = config.get("layer_norm_epsilon", 1e-6)
    class_token = config.get("use_class_token", True)
    rate = config.get("dropout_rate", 0.0)
    inputs = keras.Input(image_shape, name="input_layer")
    x = hl.PatchEmbedding(
        image_size=image_shape[:2], patch_size=patch, hidden_dim=config["hidden_dim"],
        num_channels=image_shape[2], use_class_token=class_token,
        use_patch_bias=config.get("use_patch_bias", True), name="vit_patching_and_embedding",
    )(inputs)  # fmt: skip
    if rate:
        x = keras.layers.Dropout(rate, name="encoder_dropout")(x)  # as keras-hub's ViTEncoder
    for i in range(1, n_layers + 1):
        x = hl.TransformerLayer(
            num_heads=config["num_heads"], hidden_dim=config["hidden_dim"], mlp_dim=config["mlp_dim"],
            use_mha_bias=config.get("use_mha_bias", True), use_mlp_bias=config.get("use_mlp_bias", True),
            dropout_rate=rate, attention_dropout=config.get("attention_dropout", 0.0),
            layer_norm_epsilon=eps, ends_block=i < n_layers, name=f"transformer_block_{i}",
        )(x)  # fmt: skip
    x = keras.layers.LayerNormalization(epsilon=eps, name="encoder_ln")(x)
    grid = (image_shape[0] // patch[0], image_shape[1] // patch[1])
    x = hl.TokenGrid(grid, class_token=class_token, name="token_grid")(x)
    return keras.Model(inputs, x, name=name)


def copy_hub_weights(hub: keras.Model, model: keras.Model) -> None:
    """Copy a keras-hub ``ViTBackbone``'s weights into bench's graph of the same config."""
    encoder = hub.get_layer("vit_encoder")
    pairs = [(hub.get_layer("vit_patching_and_embedding"), model.get_layer("vit_patching_and_embedding"))]
    pairs += [(src, model.get_layer(f"transformer_block_{i}")) for i, src in enumerate(encoder.encoder_layers, 1)]
    pairs.append((encoder.layer_norm, model.get_layer("encoder_ln")))
    for src, dst in pairs:
        dst.set_weights(src.get_weights())
    copied = model.count_params()
    if copied != hub.count_params():  # a layer keras-hub adds in a later version would be lost
        raise ConfigError(f"The keras-hub preset has {hub.count_params():,} weights, bench's "
                          f"{model.name!r} {copied:,}: this keras-hub version's ViT differs.")


def preset_config(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / PRESET_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{folder} is not a keras-hub preset folder ({PRESET_CONFIG} unreadable: "
                          f"{err}); save one with `save_to_preset`, or delete it.") from err


def load_preset(name: str, folder: Path, image_shape: tuple[int, int, int]) -> keras.Model:
    """bench's ViT with the weights of the keras-hub preset in ``folder``."""
    saved = preset_config(folder)
    if saved.get("class_name") != "ViTBackbone":
        raise ConfigError(f"{folder} holds a keras-hub {saved.get('class_name')!r}, not a ViTBackbone: "
                          f"it cannot be the weights of {name!r}.")
    config = saved["config"]
    side = tuple(config["image_shape"][:2])
    if side != tuple(image_shape[:2]):
        raise ConfigError(
            f"The weights of {name!r} (keras-hub preset {folder.name}) are for {side[0]}x{side[1]} px "
            f"images: its position embeddings fix the patch grid, and keras-hub does not resize "
            f"them. Use size {side[0]} with these weights, or weights 'none' at another size."
        )
    keras_hub_layers(name)
    import keras_hub

    try:
        hub = keras_hub.models.ViTBackbone.from_preset(str(folder))
    except Exception as err:  # keras / h5py errors for a partial or foreign preset
        raise ConfigError(f"Could not load the keras-hub preset {folder} into {name!r}: "
                          f"{(str(err).splitlines() or [type(err).__name__])[0]}. Copy the folder again.") from err
    model = assemble(name, image_shape, config)
    copy_hub_weights(hub, model)
    return model


def vit_build(name: str, arch: ViTArch) -> BuildFn:
    def build(input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
        if weights is not None and Path(weights).is_dir():
            return load_preset(name, Path(weights), input_shape)
        model = assemble(name, input_shape, arch.config(input_shape))
        if weights is not None:  # a `save_weights` file of a bench ViT
            load_weights_file(model, weights)
        return model

    return build


# --- presets: local folder, or keras-hub's download ------------------------------------------


def carry_hint(spec: Backbone, folder: Path) -> str:
    p = spec.imagenet_preset
    return (
        f"On a machine with internet run `bench weights pull {spec.name}` (or in Python: "
        f"keras_hub.models.ViTBackbone.from_preset('{p}').save_to_preset('{p}')), then copy the "
        f"folder {p}/ to {folder}/{p}/ (or into the folder ${{BENCH_WEIGHTS}} names); or use "
        "weights 'none'."
    )


def download_preset(spec: Backbone, dest_dir: Path) -> Path:
    """Have keras-hub fetch ``spec``'s preset (Kaggle) and save it as ``dest_dir/<preset>/``.

    The caller checks ``offline()`` first: this opens connections. A failure of any kind is a
    NetworkError naming the preset and the copy-a-folder route.
    """
    assert spec.imagenet_preset is not None
    keras_hub_layers(spec.name)
    import keras_hub

    target = dest_dir / spec.imagenet_preset
    tmp = dest_dir / f".{spec.imagenet_preset}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        hub = keras_hub.models.ViTBackbone.from_preset(spec.imagenet_preset)
        dest_dir.mkdir(parents=True, exist_ok=True)
        hub.save_to_preset(str(tmp))
        if target.exists():  # a damaged copy (no config.json): replaced
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BenchError:
        raise
    except Exception as err:  # requests / kagglehub / OS errors
        reason = (str(err).splitlines() or [type(err).__name__])[0][:300]
        raise NetworkError(
            f"Could not download the keras-hub preset {spec.imagenet_preset!r} (the ImageNet weights "
            f"of {spec.name!r}): {reason}. {carry_hint(spec, dest_dir)}"
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


# --- the registered backbones ----------------------------------------------------------------


def register_vit(
    name: str, arch: ViTArch, *, title: str, preset: str | None = None, default_size: int = 224
) -> None:
    """Register a ViT; ``preset`` names its keras-hub ImageNet preset (None: random init only).

    Inputs are scaled to [-1, 1] ('tf'): keras-hub's ViTImageConverter normalises x/255 with
    mean 0.5 and std 0.5, as the original ViT (and HF's ``google/vit-*``) checkpoints expect.
    """
    register_backbone(
        name, title=title, preprocess="tf", min_size=arch.patch_size, default_size=default_size,
        imagenet_preset=preset, size_multiple=arch.patch_size,
    )(vit_build(name, arch))  # fmt: skip


_BASE = {"num_layers": 12, "num_heads": 12, "hidden_dim": 768, "mlp_dim": 3072}
_LARGE = {"num_layers": 24, "num_heads": 16, "hidden_dim": 1024, "mlp_dim": 4096}

# keras-hub's ImageNet-1k presets (pre-trained on ImageNet-21k, fine-tuned on 1k): B/16 and L/16
# at 224 px; B/32 has one at 384 px only.
register_vit("vit_b16", ViTArch(16, **_BASE), title="ViT-B/16 (keras-hub)",
             preset="vit_base_patch16_224_imagenet")
register_vit("vit_l16", ViTArch(16, **_LARGE), title="ViT-L/16 (keras-hub)",
             preset="vit_large_patch16_224_imagenet")
register_vit("vit_b32", ViTArch(32, **_BASE), title="ViT-B/32 (keras-hub)",
             preset="vit_base_patch32_384_imagenet", default_size=384)
