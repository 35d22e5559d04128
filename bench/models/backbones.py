"""The built-in backbones: Keras applications without their top, and a small plain CNN.

Each entry records the preprocessing its ImageNet weights were trained with and the smallest
input Keras accepts for it. Weight file names and URLs are the ones the Keras application
source downloads (tests check them against that source), so a file fetched by Keras, by
`bench weights pull` or by hand is the same file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from bench.models.registry import BuildFn, register_backbone
from bench.models.weights import load_weights_file

_GCS = "https://storage.googleapis.com/tensorflow/keras-applications/"


def _application(constructor: Callable[..., keras.Model], **options: Any) -> BuildFn:
    """A build function for a ``keras.applications`` constructor."""

    def build(input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
        # Always build with weights=None and load the file ourselves: the constructor would
        # otherwise go to the network for 'imagenet', and a bad file becomes a ConfigError.
        model = constructor(
            include_top=False, weights=None, input_shape=input_shape, pooling=None, **options
        )
        if weights is not None:
            load_weights_file(model, weights)
        return model

    return build


def _register_application(
    name: str,
    constructor: Callable[..., keras.Model],
    *,
    title: str,
    preprocess: str,
    min_size: int,
    file: str,
    url_dir: str,
    **options: Any,
) -> None:
    register_backbone(
        name,
        title=title,
        preprocess=preprocess,
        min_size=min_size,
        imagenet_file=file,
        imagenet_url=url_dir + file,
    )(_application(constructor, **options))


_register_application(
    "resnet50", keras.applications.ResNet50,
    title="ResNet50", preprocess="caffe", min_size=32,
    file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", url_dir=_GCS + "resnet/",
)
_register_application(
    "resnet50v2", keras.applications.ResNet50V2,
    title="ResNet50V2", preprocess="tf", min_size=32,
    file="resnet50v2_weights_tf_dim_ordering_tf_kernels_notop.h5", url_dir=_GCS + "resnet/",
)
_register_application(
    "vgg16", keras.applications.VGG16,
    title="VGG16", preprocess="caffe", min_size=32,
    file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", url_dir=_GCS + "vgg16/",
)
_register_application(
    "densenet121", keras.applications.DenseNet121,
    title="DenseNet121", preprocess="torch", min_size=32,
    file="densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", url_dir=_GCS + "densenet/",
)
_register_application(
    "inception_v3", keras.applications.InceptionV3,
    title="InceptionV3", preprocess="tf", min_size=75,
    file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
    url_dir=_GCS + "inception_v3/",
)

# EfficientNetB0 has its own preprocessing (Rescaling + Normalization) but, only when Keras
# itself loads 'imagenet', adds a Rescaling by 1/sqrt(ImageNet std) after the Normalization
# (tensorflow/tensorflow#49930: the original model divided by the variance). Built with
# weights=None that layer is missing, so after loading the ImageNet file we fold the same factor
# into the Normalization variance: (x - m) / sqrt(v * s) == ((x - m) / sqrt(v)) / sqrt(s).
_EFFICIENTNET_B0_FILE = "efficientnetb0_notop.h5"
_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


@register_backbone(
    "efficientnet_b0",
    title="EfficientNetB0",
    preprocess="raw",
    min_size=32,
    imagenet_file=_EFFICIENTNET_B0_FILE,
    imagenet_url="https://storage.googleapis.com/keras-applications/" + _EFFICIENTNET_B0_FILE,
)
def efficientnet_b0(input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
    model = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=input_shape, pooling=None
    )
    if weights is not None:
        load_weights_file(model, weights)
        # Only the ImageNet file was trained with the extra scaling; a file saved from a bench
        # model already carries the folded variance.
        if Path(weights).name == _EFFICIENTNET_B0_FILE:
            _fold_imagenet_std(model)
    return model


def _fold_imagenet_std(model: keras.Model) -> None:
    norm = next(x for x in model.layers if isinstance(x, keras.layers.Normalization))
    scale = keras.ops.convert_to_tensor(_IMAGENET_STDDEV_RGB, dtype=norm.adapt_variance.dtype)
    norm.adapt_variance.assign(norm.adapt_variance * scale)
    norm.finalize_state()  # the layer keeps reshaped copies of mean/variance; refresh them


_register_application(
    "efficientnetv2_b0", keras.applications.EfficientNetV2B0,
    title="EfficientNetV2B0", preprocess="raw", min_size=32,
    file="efficientnetv2-b0_notop.h5", url_dir=_GCS + "efficientnet_v2/",
    include_preprocessing=True,
)
# Keras picks MobileNetV2's ImageNet file by input size (96..224); without a top every one of
# them fits any size, and the 224 px one is the reference model.
_register_application(
    "mobilenet_v2", keras.applications.MobileNetV2,
    title="MobileNetV2", preprocess="tf", min_size=32,
    file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
    url_dir=_GCS + "mobilenet_v2/",
)
_register_application(
    "mobilenet_v3_small", keras.applications.MobileNetV3Small,
    title="MobileNetV3Small", preprocess="raw", min_size=32,
    file="weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5", url_dir=_GCS + "mobilenet_v3/",
    include_preprocessing=True,
)
_register_application(
    "convnext_tiny", keras.applications.ConvNeXtTiny,
    title="ConvNeXtTiny", preprocess="raw", min_size=32,
    file="convnext_tiny_notop.h5", url_dir=_GCS + "convnext/",
    include_preprocessing=True,
)


@register_backbone(
    "simple_cnn",
    title="Simple CNN (4 conv blocks, from scratch)",
    preprocess="tf",
    min_size=16,
    default_size=128,
)
def simple_cnn(input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
    """A plain conv-BN-ReLU-maxpool baseline: what "is transfer learning worth it?" is against.

    Four poolings of 2 need at least 16 px. Layer names follow VGG's ``blockN_pool`` so that
    blocks and cut points read the same as for the applications.
    """
    inputs = keras.Input(input_shape, name="input_layer")
    x = inputs
    for i, width in enumerate((32, 64, 128, 256), start=1):
        x = keras.layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    model = keras.Model(inputs, x, name="simple_cnn")
    if weights is not None:
        load_weights_file(model, weights)
    return model
