"""Search: search spaces as Optuna suggestions, the objective, pruning, storage and workers."""

from bench.search.space import (
    Param,
    SearchSpace,
    block_count,
    builtin_names,
    builtin_space,
    load_space,
    parse_space,
    resolve_space,
)

__all__ = [
    "Param",
    "SearchSpace",
    "block_count",
    "builtin_names",
    "builtin_space",
    "load_space",
    "parse_space",
    "resolve_space",
]
