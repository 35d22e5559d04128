"""``parse_space``: TOML text -> a validated ``SearchSpace`` (cross-parameter checks, fingerprint)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport (a dependency there)
    import tomli as tomllib  # type: ignore[no-redef]

from bench.errors import ConfigError, close_matches
from bench.search.space._backbones import _check_imagenet, _check_sizes
from bench.search.space._lines import _Where
from bench.search.space._objective import _parse_objective
from bench.search.space._param import Param, _parse_param
from bench.search.space._space import SearchSpace
from bench.search.space._weights import _drop_absent_weights

TOP_LEVEL_KEYS = ("name", "description", "objective", "params")


def _fingerprint(params: tuple[Param, ...], metric: str, direction: str) -> str:
    # Only what changes the search: names, descriptions, comments and layout do not.
    canonical = {
        "params": [p.canonical() for p in params],
        "metric": metric,
        "direction": direction,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def parse_space(text: str, origin: str, path: Path | None = None) -> SearchSpace:
    """Parse and validate a search space; ``origin`` names it in error messages."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{origin}: not valid TOML ({err}).") from None
    where = _Where(origin, text)
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            raise ConfigError(
                f"{where(key)}: unknown key '{key}'.{close_matches(key, TOP_LEVEL_KEYS)} "
                f"Allowed at the top level: {', '.join(TOP_LEVEL_KEYS)} "
                "(parameters go in [params.NAME] tables)."
            )
    default_name = path.stem if path is not None else "space"
    name = doc.get("name", default_name)
    description = doc.get("description", "")
    for key, v in (("name", name), ("description", description)):
        if not isinstance(v, str):
            raise ConfigError(f"{where(key)}: '{key}' must be a string, got {v!r}.")
    metric, direction = _parse_objective(where, doc.get("objective"))

    raw_params = doc.get("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError(
            f"{origin}: no parameters; add [params.NAME] tables, e.g. [params.lr] with "
            'type = "float", low = 1e-5, high = 1e-2, log = true.'
        )
    parsed: dict[str, Param] = {}
    order = list(raw_params)
    for i, pname in enumerate(order):
        line = where.line("params", pname)
        later = {n: where.line("params", n) for n in order[i + 1 :]}
        parsed[pname] = _parse_param(
            where("params", pname), pname, raw_params[pname], parsed, later, line
        )
    _check_combinations(where, parsed)
    notes = _drop_absent_weights(parsed)
    params = tuple(parsed.values())
    return SearchSpace(
        name=name,
        description=description.strip(),
        path=path,
        params=params,
        metric=metric,
        direction=direction,
        fingerprint=_fingerprint(params, metric, direction),
        origin=origin,
        notes=tuple(notes),
    )


def _check_combinations(where: _Where, params: dict[str, Param]) -> None:
    """Checks across parameters: sizes and ImageNet weights against the backbones."""
    backbone = params.get("backbone")
    backbones = backbone.options() if backbone else None
    if not backbones:
        return
    size = params.get("size")
    if size is not None:
        sizes = size.options() or [size.low]
        _check_sizes(where("params", "size"), backbones, sizes)
    weights = params.get("weights")
    if weights is not None and set(weights.options() or ()) == {"imagenet"}:
        # `when = { backbone = ... }` on the weights: only those backbones get ImageNet weights.
        only = dict(weights.when).get("backbone")
        _check_imagenet(where("params", "weights"), [b for b in backbones if only is None or b in only])
