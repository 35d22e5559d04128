"""``SearchSpace``: a parsed space and its views for the engines (Optuna, GridSampler, KerasTuner)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import ConfigError, close_matches
from bench.search.space._backbones import _check_imagenet, _check_sizes
from bench.search.space._blocks import block_count
from bench.search.space._fields import FIELD_RULES, NO_WEIGHTS, _train_fields
from bench.search.space._param import Param, _check_value, _same

if TYPE_CHECKING:
    import keras_tuner
    import optuna


def blocks_name(name: str, backbone: str) -> str:
    """The per-backbone name a blocks parameter is suggested under: ``unfrozen[resnet50]``."""
    return f"{name}[{backbone}]"


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    path: Path | None
    params: tuple[Param, ...]
    metric: str
    direction: str
    fingerprint: str
    origin: str = ""  # how error messages name the space (the file, as given)
    notes: tuple[str, ...] = ()  # what loading changed, e.g. backbones left out for missing weights

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(name)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.params)

    # -- pinned values

    def check_fixed(self, fixed: dict[str, Any] | None) -> dict[str, Any]:
        """Validate values pinned from the command line; returns them in the space's spelling.

        Pinned values replace the space's parameter of that name (they are never suggested).
        Raises ConfigError for an unknown field, a bad value, or a size too small for a backbone
        the space can choose.
        """
        if not fixed:
            return {}
        known = _train_fields()
        pinned: dict[str, Any] = {}
        for key, v in fixed.items():
            if key not in known:
                raise ConfigError(
                    f"Pinned value for unknown TrainConfig field '{key}'.{close_matches(key, known)} "
                    f"Fields: {', '.join(known)}."
                )
            if key == "weights" and v is None:
                v = NO_WEIGHTS
            if key in FIELD_RULES:
                v = _check_value(f"{self._origin()}: pinned value", key, FIELD_RULES[key], v, "")
            pinned[key] = v
        # The combinations the file was checked for may not hold with pinned values.
        if {"backbone", "size", "weights"} & set(pinned):
            where = f"{self._origin()}: with pinned {', '.join(f'{k}={v!r}' for k, v in pinned.items())}"
            backbones = self._possible("backbone", pinned)
            sizes = self._possible("size", pinned)
            if backbones and sizes:
                _check_sizes(where, backbones, sizes)
            if backbones and set(self._possible("weights", pinned) or ()) == {"imagenet"}:
                _check_imagenet(where, self._weighted(backbones, pinned))
        return pinned

    def _weighted(self, backbones: list[Any], pinned: dict[str, Any]) -> list[Any]:
        """The backbones a ``weights`` parameter applies to: all of them when pinned, else those its
        ``when`` names (the smoke space gives ImageNet weights to EfficientNet-Lite0 alone)."""
        if "weights" in pinned or "weights" not in self:
            return backbones
        only = dict(self.param("weights").when).get("backbone")
        return backbones if only is None else [b for b in backbones if b in only]

    def _possible(self, name: str, pinned: dict[str, Any]) -> list[Any] | None:
        if name in pinned:
            return [pinned[name]]
        if name in self:
            p = self.param(name)
            return p.options() or ([p.low] if p.kind == "int" else None)
        return None

    def _origin(self) -> str:
        return self.origin or (str(self.path) if self.path is not None else f"search space '{self.name}'")

    # -- engines

    def _backbone_of(self, values: dict[str, Any]) -> str:
        if "backbone" in values:
            return values["backbone"]
        from bench.training.train import TrainConfig

        return TrainConfig.backbone

    def _blocks_range(self, p: Param, backbone: str) -> tuple[int, int]:
        n = block_count(backbone)
        high = n if p.high is None else min(int(p.high), n)
        low = min(int(p.low or 0), high)
        return low, high

    def suggest(self, trial: optuna.Trial, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
        """This trial's TrainConfig values: the suggested parameters plus the pinned ones.

        Parameters are suggested in file order; a parameter whose ``when`` does not hold is not
        suggested and left out (TrainConfig's default applies); ``fixed`` values are used as given.
        """
        values = self.check_fixed(fixed)
        for p in self.params:
            if p.name in values or not p.active(values):
                continue
            if p.kind == "fixed":
                values[p.name] = p.value
            elif p.kind == "categorical":
                values[p.name] = trial.suggest_categorical(p.name, list(p.choices or ()))
            elif p.kind == "int":
                values[p.name] = trial.suggest_int(
                    p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log
                )
            elif p.kind == "float":
                values[p.name] = trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)
            elif p.kind == "blocks":
                backbone = self._backbone_of(values)
                low, high = self._blocks_range(p, backbone)
                values[p.name] = trial.suggest_int(blocks_name(p.name, backbone), low, high)
        return _to_config(values)

    def to_keras_tuner(
        self, hp: keras_tuner.HyperParameters, fixed: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The same space on a KerasTuner ``HyperParameters``; returns the same dict as ``suggest``.

        ``when`` becomes nested ``hp.conditional_scope``s (a condition on a pinned value is
        decided here instead), and a blocks parameter is an ``hp.Int`` named per backbone inside
        a scope on that backbone.
        """
        from contextlib import ExitStack

        pinned = self.check_fixed(fixed)
        values = dict(pinned)
        skipped: set[str] = set()  # never registered: a condition on a pinned value fails
        for p in self.params:
            if p.name in pinned:
                continue
            if any(n in skipped for n, _ in p.when) or not all(
                any(_same(pinned[n], a) for a in vs) for n, vs in p.when if n in pinned
            ):
                skipped.add(p.name)
                continue
            with ExitStack() as scopes:
                for parent, allowed in p.when:
                    if parent not in pinned:
                        scopes.enter_context(hp.conditional_scope(parent, list(allowed)))
                if p.kind == "fixed":
                    v = hp.Fixed(p.name, p.value)
                elif p.kind == "categorical":
                    choices = list(p.choices or ())
                    if len({type(c) for c in choices}) > 1:
                        raise ConfigError(
                            f"{self._origin()}, line {p.line} ([params.{p.name}]): KerasTuner needs "
                            f"choices of one type, got {choices!r}."
                        )
                    v = hp.Choice(p.name, choices)
                elif p.kind == "int":
                    v = hp.Int(
                        p.name, int(p.low), int(p.high), step=int(p.step or 1),
                        sampling="log" if p.log else "linear",
                    )
                elif p.kind == "float":
                    v = hp.Float(
                        p.name, p.low, p.high, step=p.step, sampling="log" if p.log else "linear"
                    )
                else:  # blocks
                    v = self._keras_tuner_blocks(hp, p, values, pinned)
            if v is not None:  # None: registered, but its condition does not hold
                values[p.name] = v
        return _to_config(values)

    def _keras_tuner_blocks(
        self, hp: keras_tuner.HyperParameters, p: Param, values: dict[str, Any], pinned: dict[str, Any]
    ) -> int | None:
        backbone = self._backbone_of(values)
        if "backbone" in pinned or "backbone" not in self or "backbone" not in values:
            low, high = self._blocks_range(p, backbone)
            return hp.Int(blocks_name(p.name, backbone), low, high)
        # Register the depth of *every* backbone the space can choose, each in a scope on that
        # backbone, so the oracle knows the whole space from the first trial. Registering only
        # the current one would leave each backbone's first trials at the default depth.
        chosen = None
        for option in self.param("backbone").options() or [backbone]:
            low, high = self._blocks_range(p, option)
            with hp.conditional_scope("backbone", [option]):
                v = hp.Int(blocks_name(p.name, option), low, high)
            if option == backbone:
                chosen = v
        return chosen

    def grid(self, fixed: dict[str, Any] | None = None) -> dict[str, list[Any]] | None:
        """The space for ``optuna.samplers.GridSampler``, or None if it is not enumerable.

        Enumerable: categorical, fixed, int and float-with-step parameters. Fixed and pinned
        ones are left out (they are never suggested). A blocks parameter makes the space
        non-enumerable (its name and range depend on the backbone). Conditional parameters are
        included: GridSampler knows no conditions, so grid points that differ only in a parameter
        whose condition fails repeat the same configuration.
        """
        pinned = set(fixed or ())
        space: dict[str, list[Any]] = {}
        for p in self.params:
            if p.name in pinned or p.kind == "fixed":
                continue
            options = p.options()
            if options is None:
                return None
            space[p.name] = options
        return space

    def grid_size(self, fixed: dict[str, Any] | None = None) -> int | None:
        grid = self.grid(fixed)
        return None if grid is None else math.prod(len(v) for v in grid.values())

    def describe(self) -> list[dict[str, Any]]:
        """One row per parameter: name, type, range, condition and line, for printing."""
        return [
            {
                "name": p.name,
                "type": p.kind,
                "range": p.range_text(),
                "when": p.when_text(),
                "line": p.line,
            }
            for p in self.params
        ]


def _to_config(values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    if out.get("weights") == NO_WEIGHTS:
        out["weights"] = None
    return out
