"""The ``[objective]`` table of a space: the metric a search optimises and its direction."""

from __future__ import annotations

from typing import Any

from bench.errors import ConfigError, close_matches
from bench.search.space._lines import _Where

DIRECTIONS = ("maximize", "minimize")
OBJECTIVE_KEYS = ("metric", "direction")
DEFAULT_METRIC = "balanced_accuracy"


def _parse_objective(where: _Where, raw: Any) -> tuple[str, str]:
    from bench.metrics import METRICS

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{where('objective')}: 'objective' must be a table with 'metric' and 'direction'."
        )
    for key in raw:
        if key not in OBJECTIVE_KEYS:
            raise ConfigError(
                f"{where('objective', key)}: unknown key '{key}' in [objective]."
                f"{close_matches(key, OBJECTIVE_KEYS)} Allowed keys: {', '.join(OBJECTIVE_KEYS)}."
            )
    metric = raw.get("metric", DEFAULT_METRIC)
    if not isinstance(metric, str) or metric not in METRICS:
        hint = close_matches(metric, METRICS) if isinstance(metric, str) else ""
        raise ConfigError(
            f"{where('objective', 'metric')}: unknown metric {metric!r}.{hint} "
            f"Allowed: {', '.join(METRICS)}."
        )
    natural = "maximize" if METRICS[metric].higher_is_better else "minimize"
    direction = raw.get("direction", natural)
    if direction not in DIRECTIONS:
        raise ConfigError(
            f"{where('objective', 'direction')}: direction must be 'maximize' or 'minimize', "
            f"got {direction!r}."
        )
    if direction != natural:
        better = "higher" if natural == "maximize" else "lower"
        raise ConfigError(
            f"{where('objective', 'direction')}: {metric} is better when {better}, so the direction "
            f"must be '{natural}' (or left out), got '{direction}'."
        )
    return metric, direction
