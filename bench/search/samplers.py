"""Samplers by name: a small registry, each entry says what optional package it needs (pruners:
``bench.search.pruners``)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna

from bench.errors import ConfigError, close_matches


@dataclass(frozen=True)
class SamplerEntry:
    make: Callable[[int, Any], optuna.samplers.BaseSampler]  # (seed, space) -> sampler
    needs: tuple[tuple[str, str], ...] = ()  # (importable module, pip requirement)
    help: str = ""


def _grid(seed: int, space: Any) -> optuna.samplers.BaseSampler:
    grid = space.grid()
    if grid is None:
        raise ConfigError(
            f"--sampler grid needs a space of categorical, fixed and stepped int parameters only; "
            f"{space.path or space.name} has continuous ones. Use tpe or random, or give them choices."
        )
    return optuna.samplers.GridSampler(grid, seed=seed)


SAMPLERS: dict[str, SamplerEntry] = {
    "tpe": SamplerEntry(lambda seed, space: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True,
                                                                      constant_liar=True),
                        help="Tree-structured Parzen estimator (default); constant_liar spreads parallel workers"),
    "random": SamplerEntry(lambda seed, space: optuna.samplers.RandomSampler(seed=seed), help="uniform random"),
    "cmaes": SamplerEntry(lambda seed, space: optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False),
                          needs=(("cmaes", "cmaes"),), help="CMA-ES for the numeric parameters"),
    "gp": SamplerEntry(lambda seed, space: optuna.samplers.GPSampler(seed=seed),
                       needs=(("torch", "torch"), ("scipy", "scipy")), help="Gaussian-process Bayesian optimisation"),
    "grid": SamplerEntry(_grid, help="every combination of a discrete space"),
}


def make_sampler(name: str, seed: int, space: Any) -> optuna.samplers.BaseSampler:
    if name not in SAMPLERS:
        raise ConfigError(f"Unknown sampler '{name}'.{close_matches(name, SAMPLERS)} Allowed: {', '.join(SAMPLERS)}.")
    entry = SAMPLERS[name]
    missing = [req for module, req in entry.needs if importlib.util.find_spec(module) is None]
    if missing:
        extra = "samplers" if name == "cmaes" else "torch"
        raise ConfigError(
            f"--sampler {name} needs the package(s) {', '.join(missing)}, which are not installed. "
            f"Install them with `pip install {' '.join(missing)}` (or `pip install -e '.[{extra}]'`), "
            f"or choose another sampler: {', '.join(n for n in SAMPLERS if not SAMPLERS[n].needs)}."
        )
    return entry.make(seed, space)
