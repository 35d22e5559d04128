"""Declarative search spaces: a TOML file -> a validated ``SearchSpace`` -> trial configurations.

A space names the ``TrainConfig`` fields a search varies and how (see search_spaces/README.md for
the format). Everything that can be checked without training is checked at load time and raises
``ConfigError`` naming the file, the line of the offending parameter and what is allowed: a typo
in a 200-trial search must cost a second, not the night.

The same space drives three engines: Optuna samplers (``suggest``), Optuna's ``GridSampler``
(``grid``) and KerasTuner (``to_keras_tuner``), so search strategies are compared on exactly the
same space.

``blocks`` parameters (the unfrozen depth) have a per-backbone range, 0..n_blocks. They are
suggested under a per-backbone name (``unfrozen[resnet50]``) so that TPE models the depth of
each backbone separately; depth 3 of VGG16 and of DenseNet121 are different things.

The modules are private; import from this package. Each has one job:
``_fields`` (what each TrainConfig field accepts), ``_lines`` (line numbers for error messages),
``_param`` (one parameter and its parsing), ``_backbones`` (backbones against sizes and weights),
``_blocks`` (block counts and their cache), ``_space`` (``SearchSpace`` and the engines' views),
``_objective`` (the ``[objective]`` table), ``_weights`` (``if_weights_present``), ``_parse``
(text -> ``SearchSpace``) and ``_load`` (files and built-in spaces).
"""

from bench.search.space._blocks import BLOCK_CACHE_FILE, block_count
from bench.search.space._fields import FIELD_RULES, NO_WEIGHTS, NOT_SEARCHED, FieldRule
from bench.search.space._lines import key_lines
from bench.search.space._load import (
    BUILTIN_DIR,
    builtin_names,
    builtin_space,
    load_space,
    resolve_space,
)
from bench.search.space._objective import DEFAULT_METRIC, DIRECTIONS, OBJECTIVE_KEYS
from bench.search.space._param import KIND_KEYS, KINDS, Param, Scalar
from bench.search.space._parse import TOP_LEVEL_KEYS, parse_space
from bench.search.space._space import SearchSpace, blocks_name

__all__ = [
    "BLOCK_CACHE_FILE",
    "BUILTIN_DIR",
    "DEFAULT_METRIC",
    "DIRECTIONS",
    "FIELD_RULES",
    "KINDS",
    "KIND_KEYS",
    "NOT_SEARCHED",
    "NO_WEIGHTS",
    "OBJECTIVE_KEYS",
    "TOP_LEVEL_KEYS",
    "FieldRule",
    "Param",
    "Scalar",
    "SearchSpace",
    "block_count",
    "blocks_name",
    "builtin_names",
    "builtin_space",
    "key_lines",
    "load_space",
    "parse_space",
    "resolve_space",
]
