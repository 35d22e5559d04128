"""Backbones, the classifier head, ImageNet weights and block-wise unfreezing.

Importing this package registers the built-in backbones.
"""

# The built-in backbones register themselves on import; the registry itself imports none of them.
from bench.models import backbones as _backbones  # noqa: F401
from bench.models import hub as _hub  # noqa: F401  (keras-hub itself only when one is built)
from bench.models import lite0 as _lite0  # noqa: F401
from bench.models.blocks import (
    block_ends,
    block_outputs,
    blocks,
    cut_points,
    iter_layers,
    set_unfrozen,
)
from bench.models.dropout import RateDropout, parameter_count, set_dropout_rate
from bench.models.head import (
    FLATTEN_MAX_SIDE,
    POOLINGS,
    Classifier,
    HeadSpec,
    build_classifier,
    build_head,
    build_head_model,
    check_fits,
    check_size,
    describe_backbone,
    set_bn_momentum,
)
from bench.models.preprocess import MODES as PREPROCESS_MODES
from bench.models.preprocess import Preprocess
from bench.models.registry import (
    Backbone,
    backbone_names,
    get_backbone,
    register_backbone,
)
from bench.models.store import resolve_weights
from bench.models.weights import imagenet_path, load_weights_file, weights_dirs

__all__ = [
    "FLATTEN_MAX_SIDE",
    "POOLINGS",
    "PREPROCESS_MODES",
    "Backbone",
    "Classifier",
    "HeadSpec",
    "Preprocess",
    "RateDropout",
    "backbone_names",
    "block_ends",
    "block_outputs",
    "blocks",
    "build_classifier",
    "build_head",
    "build_head_model",
    "check_fits",
    "check_size",
    "cut_points",
    "describe_backbone",
    "get_backbone",
    "imagenet_path",
    "iter_layers",
    "load_weights_file",
    "parameter_count",
    "register_backbone",
    "resolve_weights",
    "set_bn_momentum",
    "set_dropout_rate",
    "set_unfrozen",
    "weights_dirs",
]
