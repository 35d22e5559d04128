"""The keras-hub ViT layers as bench builds its transformer backbones from them (imports keras-hub).

keras-hub's ``ViTBackbone`` holds all its encoder blocks in ONE layer (``ViTEncoder``), so bench
would see one block and ``unfrozen`` could only be all or nothing. bench's ViT is instead its own
functional model that calls the patch embedding, each transformer layer and the final
LayerNorm in sequence (``bench.models.hub``). The two keras-hub layers it calls are subclassed
here only to (a) declare, per instance and saved in the config, whether they end a block (the
``ends_block`` rule of ``bench.models.blocks``) and (b) round-trip through a ``.keras`` file:
keras-hub's own ``get_config`` of these inner layers carries keys their ``__init__`` rejects
(``num_patches``, ``key_dim``), which is harmless inside ``ViTBackbone`` (saved by its own
config) but breaks loading a model that holds the layers directly.

Imported lazily (``bench.models.hub.keras_hub_layers``): bench imports fine without keras-hub.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops
from keras_hub.src.models.vit.vit_layers import ViTEncoderBlock, ViTPatchingAndEmbedding


@keras.saving.register_keras_serializable(package="bench")
class PatchEmbedding(ViTPatchingAndEmbedding):
    """keras-hub's patching + class token + position embedding; always the end of block 0."""

    ends_block = True

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> PatchEmbedding:
        config = dict(config)
        for derived in ("num_patches", "num_positions"):  # computed in __init__, not arguments
            config.pop(derived, None)
        return cls(**config)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "use_patch_bias": self.use_patch_bias, "data_format": self.data_format}


@keras.saving.register_keras_serializable(package="bench")
class TransformerLayer(ViTEncoderBlock):
    """One keras-hub ViT encoder block (pre-norm attention + MLP, both residual).

    ``ends_block`` is False only for the last layer, so that the final LayerNorm and the token
    grid after it belong to the last transformer layer's block (they would otherwise be a block
    of their own, and ``unfrozen 1`` would train a LayerNorm only).
    """

    def __init__(self, *args: Any, ends_block: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.ends_block = bool(ends_block)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TransformerLayer:
        config = dict(config)
        config.pop("key_dim", None)  # derived: hidden_dim // num_heads
        return cls(**config)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "ends_block": self.ends_block}


@keras.saving.register_keras_serializable(package="bench")
class TokenGrid(keras.layers.Layer):
    """(B, [1 +] h*w, C) tokens -> (B, h, w, C) map: the class token dropped, patches in place.

    bench's head, Grad-CAM and frozen-feature cache read a 4-D feature map; the patch tokens of
    a ViT are one per image patch in row-major order (keras-hub flattens the conv output), so
    reshaping them gives the patch grid back.
    """

    def __init__(self, grid: tuple[int, int], class_token: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.grid = (int(grid[0]), int(grid[1]))
        self.class_token = bool(class_token)

    def call(self, tokens: Any) -> Any:
        if self.class_token:
            tokens = tokens[:, 1:, :]
        return ops.reshape(tokens, (-1, *self.grid, tokens.shape[-1]))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], *self.grid, input_shape[-1])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "grid": list(self.grid), "class_token": self.class_token}
