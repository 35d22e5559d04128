"""One parameter of a space (``Param``) and how a ``[params.NAME]`` table is parsed into one."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from bench.errors import ConfigError, close_matches
from bench.search.space._backbones import _check_imagenet
from bench.search.space._fields import (
    FIELD_RULES,
    NOT_SEARCHED,
    FieldRule,
    _is_int,
    _is_num,
    _train_fields,
)

KINDS = ("categorical", "int", "float", "blocks", "fixed")
# Keys a parameter table may hold, by type ("type" and "when" are allowed everywhere).
KIND_KEYS: dict[str, tuple[str, ...]] = {
    # if_weights_present (backbone only): choices kept only where their ImageNet file is local.
    "categorical": ("choices", "if_weights_present"),
    "int": ("low", "high", "step", "log"),
    "float": ("low", "high", "step", "log"),
    "blocks": ("low", "high"),
    "fixed": ("value",),
}

Scalar = str | int | float | bool


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps true apart from 1 (Python's ``True == 1``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return a == b


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f"'{v}'"
    return repr(v)


@dataclass(frozen=True)
class Param:
    """One searched (or fixed) TrainConfig field.

    ``when`` holds ``(parameter, allowed values)`` pairs; the parameter is suggested only when
    every named earlier parameter took one of its values.
    """

    name: str
    kind: str
    choices: tuple[Scalar, ...] | None = None
    low: int | float | None = None
    high: int | float | None = None
    step: int | float | None = None
    log: bool = False
    value: Scalar | None = None
    when: tuple[tuple[str, tuple[Scalar, ...]], ...] = ()
    line: int = 0
    if_weights_present: tuple[str, ...] = ()  # backbone choices that need local ImageNet weights

    def active(self, values: dict[str, Any]) -> bool:
        """Whether every ``when`` condition holds for the values chosen so far."""
        for parent, allowed in self.when:
            if parent not in values or not any(_same(values[parent], a) for a in allowed):
                return False
        return True

    def can_take(self, v: Any) -> bool:
        """Whether a suggestion of this parameter can ever equal ``v`` (for ``when`` checks)."""
        if self.kind == "fixed":
            return _same(self.value, v)
        if self.kind == "categorical":
            return any(_same(c, v) for c in self.choices or ())
        if not _is_num(v):
            return False
        if self.kind == "blocks":
            return _is_int(v) and v >= (self.low or 0) and (self.high is None or v <= self.high)
        if self.kind == "int":
            return _is_int(v) and self.low <= v <= self.high and (v - self.low) % (self.step or 1) == 0
        return False  # a continuous float equals a given value with probability zero

    def options(self) -> list[Scalar] | None:
        """Every value this parameter can take, or None for continuous and per-backbone ranges."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "categorical":
            return list(self.choices or ())
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.kind == "float" and self.step is not None:
            n = int(round((self.high - self.low) / self.step))
            return [round(self.low + i * self.step, 12) for i in range(n + 1)]
        return None

    def range_text(self) -> str:
        if self.kind == "fixed":
            return _fmt(self.value)
        if self.kind == "categorical":
            return "{" + ", ".join(_fmt(c) for c in self.choices or ()) + "}"
        if self.kind == "blocks":
            high = "n_blocks" if self.high is None else f"min({self.high}, n_blocks)"
            return f"{self.low or 0} .. {high} of the backbone"
        text = f"{self.low:g} .. {self.high:g}"
        if self.log:
            text += " (log)"
        if self.step is not None:
            text += f" step {self.step:g}"
        return text

    def when_text(self) -> str:
        return ", ".join(
            f"{p} = {_fmt(vs[0])}" if len(vs) == 1 else f"{p} in {{{', '.join(_fmt(v) for v in vs)}}}"
            for p, vs in self.when
        )

    def canonical(self) -> dict[str, Any]:
        """The parameter's meaning, without its position in the file (for the fingerprint)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "choices": list(self.choices) if self.choices is not None else None,
            "low": self.low,
            "high": self.high,
            "step": self.step,
            "log": self.log,
            "value": self.value,
            "when": [[p, list(vs)] for p, vs in self.when],
        }


def _check_value(where: str, name: str, rule: FieldRule, v: Any, what: str) -> Any:
    """Validate one value of a field; coerce whole numbers to float for float fields."""
    if rule.number == "float" and _is_int(v):
        v = float(v)
    problem = rule.check(v)
    if problem:
        raise ConfigError(f"{where}: {name} {what}: {problem}" if what else f"{where}: {name}: {problem}")
    return v


def _parse_when(
    where: str, name: str, raw: Any, earlier: dict[str, Param], later: dict[str, int]
) -> tuple[tuple[str, tuple[Scalar, ...]], ...]:
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            f"{where}: 'when' must be a table of earlier parameters and values, "
            'e.g. when = { optimizer = "sgd" } or when = { optimizer = ["sgd", "adamw"] }; '
            f"got {raw!r}."
        )
    conditions = []
    for parent, values in raw.items():
        if parent == name:
            raise ConfigError(f"{where}: 'when' cannot refer to the parameter itself.")
        if parent not in earlier:
            if parent in later:
                raise ConfigError(
                    f"{where}: 'when' refers to '{parent}', which is defined later "
                    f"(line {later[parent]}); parameters are suggested in file order, so move "
                    f"[params.{parent}] above [params.{name}]."
                )
            known = ", ".join(earlier) or "(none)"
            raise ConfigError(
                f"{where}: 'when' refers to '{parent}', which is not a parameter of this space."
                f"{close_matches(parent, earlier)} Earlier parameters: {known}."
            )
        target = earlier[parent]
        if target.kind == "float":
            raise ConfigError(
                f"{where}: 'when' cannot depend on '{parent}', a continuous float; conditions need "
                "a categorical, fixed, int or blocks parameter."
            )
        options = values if isinstance(values, list) else [values]
        if not options:
            raise ConfigError(f"{where}: 'when' gives no values for '{parent}'.")
        for v in options:
            if isinstance(v, (list, dict)) or not target.can_take(v):
                raise ConfigError(
                    f"{where}: 'when' needs {parent} = {_fmt(v)}, a value '{parent}' can never take "
                    f"(its values: {target.range_text()})."
                )
        conditions.append((parent, tuple(options)))
    return tuple(conditions)


def _number(where: str, name: str, key: str, v: Any, kind: str) -> int | float:
    if kind == "int" and not _is_int(v):
        raise ConfigError(f"{where}: '{key}' of an int parameter must be a whole number, got {v!r}.")
    if not _is_num(v) or not math.isfinite(v):
        raise ConfigError(f"{where}: '{key}' must be a finite number, got {v!r}.")
    return float(v) if kind == "float" else v


def _parse_param(
    where: str, name: str, raw: Any, earlier: dict[str, Param], later: dict[str, int], line: int
) -> Param:
    allowed_names = [f for f in _train_fields() if f not in NOT_SEARCHED]
    if name not in allowed_names:
        why = " (the seed belongs to the run: use --seed)" if name in NOT_SEARCHED else ""
        raise ConfigError(
            f"{where}: unknown parameter '{name}'{why}.{close_matches(name, allowed_names)} "
            f"Parameters are TrainConfig fields: {', '.join(allowed_names)}."
        )
    rule = FIELD_RULES[name]
    # Shorthand: `epochs = 10` is a fixed value, `augment = ["none", "light"]` a categorical.
    if isinstance(raw, list):
        raw = {"type": "categorical", "choices": raw}
    elif not isinstance(raw, dict):
        raw = {"type": "fixed", "value": raw}

    kind = raw.get("type")
    if kind is None:
        raise ConfigError(f"{where}: missing 'type'; allowed types for {name}: {', '.join(rule.kinds)}.")
    if kind not in KINDS:
        raise ConfigError(
            f"{where}: unknown type {kind!r}.{close_matches(str(kind), KINDS)} Allowed: {', '.join(KINDS)}."
        )
    if kind not in rule.kinds:
        raise ConfigError(
            f"{where}: {name} cannot have type '{kind}'; allowed types for {name}: "
            f"{', '.join(rule.kinds)} ({name} takes {rule.allowed})."
        )
    keys = ("type", *KIND_KEYS[kind], "when")
    for key in raw:
        if key not in keys:
            raise ConfigError(
                f"{where}: unknown key '{key}' for a {kind} parameter.{close_matches(key, keys)} "
                f"Allowed keys: {', '.join(keys)}."
            )
    when = _parse_when(where, name, raw["when"], earlier, later) if "when" in raw else ()

    if kind == "fixed":
        if "value" not in raw:
            raise ConfigError(f"{where}: a fixed parameter needs 'value' ({name} takes {rule.allowed}).")
        value = _check_value(where, name, rule, raw["value"], "value")
        return Param(name, kind, value=value, when=when, line=line)

    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(
                f"{where}: a categorical parameter needs a non-empty list 'choices' "
                f"({name} takes {rule.allowed}); got {choices!r}."
            )
        checked: list[Scalar] = []
        for c in choices:
            if isinstance(c, (list, dict)):
                raise ConfigError(f"{where}: choices must be strings, numbers or booleans, got {c!r}.")
            c = _check_value(where, name, rule, c, "choice")
            if any(_same(c, d) for d in checked):
                raise ConfigError(f"{where}: choice {_fmt(c)} is listed twice.")
            checked.append(c)
        optional = _parse_if_weights_present(where, name, raw.get("if_weights_present"), checked)
        return Param(name, kind, choices=tuple(checked), when=when, line=line, if_weights_present=optional)

    if kind == "blocks":
        low = raw.get("low", 0)
        high = raw.get("high")
        for key, v in (("low", low), ("high", high)):
            if v is not None and not (_is_int(v) and v >= 0):
                raise ConfigError(f"{where}: blocks '{key}' must be a whole number >= 0, got {v!r}.")
        if high is not None and low > high:
            raise ConfigError(
                f"{where}: blocks range is reversed: low = {low} > high = {high}; "
                "use 0 <= low <= high (both are clipped to the backbone's block count)."
            )
        if "backbone" in later and "backbone" not in earlier:
            raise ConfigError(
                f"{where}: a blocks parameter depends on the backbone, so [params.backbone] "
                f"(line {later['backbone']}) must come before it."
            )
        return Param(name, kind, low=low, high=high, when=when, line=line)

    # int / float ranges
    for key in ("low", "high"):
        if key not in raw:
            raise ConfigError(f"{where}: an {kind} parameter needs 'low' and 'high'.")
    low = _number(where, name, "low", raw["low"], kind)
    high = _number(where, name, "high", raw["high"], kind)
    if low >= high:
        raise ConfigError(
            f"{where}: empty or reversed range low = {low!r}, high = {high!r}; needs low < high "
            "(for a single value use type = \"fixed\")."
        )
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: 'log' must be true or false, got {log!r}.")
    if log and low <= 0:
        raise ConfigError(f"{where}: log range needs low > 0, got low = {raw['low']!r}.")
    step = raw.get("step")
    if step is not None:
        step = _number(where, name, "step", step, kind)
        if step <= 0:
            raise ConfigError(f"{where}: 'step' must be > 0, got {step!r}.")
        if log and (kind == "float" or step != 1):
            raise ConfigError(
                f"{where}: 'step' and 'log' cannot be combined (Optuna samples either a log scale "
                "or a grid); drop one of them."
            )
        n = (high - low) / step
        if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
            raise ConfigError(
                f"{where}: high - low = {high - low:g} is not a multiple of step = {step:g}; "
                f"make high {low + math.floor(n) * step:g} or {low + math.ceil(n) * step:g}."
            )
    for key, v in (("low", low), ("high", high)):
        _check_value(where, name, rule, v, f"'{key}'")
    return Param(name, kind, low=low, high=high, step=step, log=log, when=when, line=line)


def _parse_if_weights_present(where: str, name: str, raw: Any, choices: list[Scalar]) -> tuple[str, ...]:
    if raw is None:
        return ()
    if name != "backbone":
        raise ConfigError(f"{where}: 'if_weights_present' belongs to [params.backbone] only.")
    if not isinstance(raw, list) or not all(isinstance(b, str) for b in raw):
        raise ConfigError(f"{where}: 'if_weights_present' must be a list of backbone names, got {raw!r}.")
    for b in raw:
        if b not in choices:
            raise ConfigError(f"{where}: 'if_weights_present' names {b!r}, which is not one of the choices "
                              f"({', '.join(map(str, choices))}).")
    _check_imagenet(where, list(raw))
    return tuple(raw)
