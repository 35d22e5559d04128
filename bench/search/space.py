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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from dataclasses import dataclass, fields, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport (a dependency there)
    import tomli as tomllib  # type: ignore[no-redef]

from bench.atomic import write_text_atomic
from bench.errors import ConfigError, close_matches
from bench.paths import PACKAGE_DIR, cache_dir

if TYPE_CHECKING:
    import keras_tuner
    import optuna

KINDS = ("categorical", "int", "float", "blocks", "fixed")
DIRECTIONS = ("maximize", "minimize")
TOP_LEVEL_KEYS = ("name", "description", "objective", "params")
OBJECTIVE_KEYS = ("metric", "direction")
DEFAULT_METRIC = "balanced_accuracy"
# Keys a parameter table may hold, by type ("type" and "when" are allowed everywhere).
KIND_KEYS: dict[str, tuple[str, ...]] = {
    # if_weights_present (backbone only): choices kept only where their ImageNet file is local.
    "categorical": ("choices", "if_weights_present"),
    "int": ("low", "high", "step", "log"),
    "float": ("low", "high", "step", "log"),
    "blocks": ("low", "high"),
    "fixed": ("value",),
}
# TOML has no null: "none" stands for random initialisation and becomes None in a TrainConfig.
NO_WEIGHTS = "none"
BUILTIN_DIR = PACKAGE_DIR / "search_spaces"

Scalar = str | int | float | bool


# --- what each TrainConfig field accepts ------------------------------------------------------


@dataclass(frozen=True)
class FieldRule:
    """Which parameter types a TrainConfig field may have, and which values it accepts.

    ``check(value)`` returns None for a good value, else the end of an error message.
    """

    kinds: tuple[str, ...]
    number: str | None  # "int" or "float" when the field is numeric (ranges are coerced to it)
    check: Any  # Callable[[Any], str | None]
    allowed: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _one_of(names: Any, what: str) -> Any:
    def check(v: Any) -> str | None:
        options = list(names())
        if isinstance(v, str) and v in options:
            return None
        hint = close_matches(v, options) if isinstance(v, str) else ""
        return f"unknown {what} {v!r}.{hint} Allowed: {', '.join(options)}."

    return check


def _int_at_least(lo: int) -> Any:
    return lambda v: None if _is_int(v) and v >= lo else f"needs a whole number >= {lo}, got {v!r}."


def _float_in(lo: float, hi: float | None, hi_open: bool = True, lo_open: bool = False) -> Any:
    def check(v: Any) -> str | None:
        ok = _is_num(v) and math.isfinite(v) and (v > lo if lo_open else v >= lo)
        if hi is not None:
            ok = ok and (v < hi if hi_open else v <= hi)
        if ok:
            return None
        left = "(" if lo_open else "["
        right = "inf)" if hi is None else (f"{hi})" if hi_open else f"{hi}]")
        return f"needs a number in {left}{lo}, {right}, got {v!r}."

    return check


def _backbone_names() -> list[str]:
    from bench.models import backbone_names

    return backbone_names()


def _optimizers() -> list[str]:
    from bench.train import OPTIMIZERS

    return list(OPTIMIZERS)


def _policies() -> list[str]:
    from bench.augment import POLICIES

    return list(POLICIES)


def _weights_check(v: Any) -> str | None:
    if isinstance(v, str) and v.strip():
        return None
    return f"needs 'imagenet', '{NO_WEIGHTS}' or the path of a weights file, got {v!r}."


def _unfrozen_check(v: Any) -> str | None:
    if v == "all" or (_is_int(v) and v >= 0):
        return None
    return f"needs 'all' or a number of blocks >= 0, got {v!r}."


def _bool_check(v: Any) -> str | None:
    return None if isinstance(v, bool) else f"needs true or false, got {v!r}."


def _bn_check(v: Any) -> str | None:
    if v in ("auto", "keep"):
        return None
    if _float_in(0.0, 1.0)(v) is None:
        return None
    return f"needs 'auto', 'keep' or a number in [0, 1), got {v!r}."


_CAT = ("categorical", "fixed")
FIELD_RULES: dict[str, FieldRule] = {
    "backbone": FieldRule(_CAT, None, _one_of(_backbone_names, "backbone"), "a registered backbone"),
    "weights": FieldRule(_CAT, None, _weights_check, f"'imagenet', '{NO_WEIGHTS}' or a weights file"),
    "size": FieldRule((*_CAT, "int"), "int", _int_at_least(16), "a whole number of pixels >= 16"),
    "unfrozen": FieldRule(
        (*_CAT, "blocks"), None, _unfrozen_check, "type 'blocks', or 'all' / a number of blocks"
    ),
    "lr": FieldRule((*_CAT, "float"), "float", _float_in(0.0, None, lo_open=True), "a number > 0"),
    "batch_size": FieldRule((*_CAT, "int"), "int", _int_at_least(1), "a whole number >= 1"),
    "epochs": FieldRule((*_CAT, "int"), "int", _int_at_least(1), "a whole number >= 1"),
    "optimizer": FieldRule(_CAT, None, _one_of(_optimizers, "optimizer"), "a registered optimizer"),
    "momentum": FieldRule((*_CAT, "float"), "float", _float_in(0.0, 1.0), "a number in [0, 1)"),
    "weight_decay": FieldRule((*_CAT, "float"), "float", _float_in(0.0, None), "a number >= 0"),
    "augment": FieldRule(_CAT, None, _one_of(_policies, "augmentation policy"), "a registered policy"),
    "dropout": FieldRule((*_CAT, "float"), "float", _float_in(0.0, 1.0), "a number in [0, 1)"),
    "label_smoothing": FieldRule((*_CAT, "float"), "float", _float_in(0.0, 1.0), "a number in [0, 1)"),
    "class_weights": FieldRule(_CAT, None, _bool_check, "true or false"),
    "early_stopping": FieldRule((*_CAT, "int"), "int", _int_at_least(0), "a patience >= 0 (0 = off)"),
    "reduce_lr": FieldRule((*_CAT, "int"), "int", _int_at_least(0), "a patience >= 0 (0 = off)"),
    "inner_val": FieldRule((*_CAT, "float"), "float", _float_in(0.0, 0.5, hi_open=False),
                           "a fraction in [0, 0.5] (0 = no inner split: no early stopping, no LR reduction)"),
    "bn_momentum": FieldRule((*_CAT, "float"), "float", _bn_check, "'auto', 'keep' or a number in [0, 1)"),
}
# ``seed`` is a TrainConfig field too, but it belongs to the run (--seed), not to the search.
NOT_SEARCHED = ("seed",)


def _train_fields() -> list[str]:
    from bench.train import TrainConfig

    return [f.name for f in fields(TrainConfig)]


# --- line numbers -----------------------------------------------------------------------------

_KEY_PART = r'(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')'
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER_RE = re.compile(rf"^\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEY_RE = re.compile(rf"^({_DOTTED})\s*=(.*)$")
_INLINE_KEY_RE = re.compile(rf"[{{,]\s*({_KEY_PART})\s*=")


def _split_key(dotted: str) -> tuple[str, ...]:
    parts = re.findall(_KEY_PART, dotted)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map every key path the TOML text defines to the (1-based) line that first defines it.

    tomllib reports no positions, so this is a light scanner over the raw text: table headers,
    ``key = value`` lines (dotted keys too) and the keys of an inline table on the same line.
    Multi-line strings are skipped so that text inside them cannot look like a key.
    """
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    in_string: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if in_string:
            if line.count(in_string) % 2 == 1:
                in_string = None
            continue
        if not line or line.startswith("#"):
            continue
        header = _HEADER_RE.match(line)
        if header:
            table = _split_key(header.group(1))
            for i in range(1, len(table) + 1):
                lines.setdefault(table[:i], number)
            continue
        key = _KEY_RE.match(line)
        if not key:
            continue
        path = table + _split_key(key.group(1))
        for i in range(1, len(path) + 1):
            lines.setdefault(path[:i], number)
        value = key.group(2)
        for quote in ('"""', "'''"):
            if value.count(quote) % 2 == 1:
                in_string = quote
        if value.lstrip().startswith("{"):
            for inner in _INLINE_KEY_RE.findall(value):
                lines.setdefault(path + _split_key(inner), number)
    return lines


class _Where:
    """Builds ``file, line N ([params.x])`` prefixes for error messages."""

    def __init__(self, origin: str, text: str) -> None:
        self.origin = origin
        self.lines = key_lines(text)

    def line(self, *path: str) -> int:
        for i in range(len(path), 0, -1):
            if path[:i] in self.lines:
                return self.lines[path[:i]]
        return 1

    def __call__(self, *path: str) -> str:
        label = ""
        if path[:1] == ("params",) and len(path) > 1:
            label = f" ([params.{path[1]}])"
        elif path[:1] == ("objective",):
            label = " ([objective])"
        return f"{self.origin}, line {self.line(*path)}{label}"


# --- parameters -------------------------------------------------------------------------------


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


# --- block counts -----------------------------------------------------------------------------

_BLOCK_COUNTS: dict[str, int] = {}
BLOCK_CACHE_FILE = "block_counts.json"


@cache
def _block_stamp(backbone: str) -> str:
    """What a cached count depends on: Keras, the block rules and the backbone's source file."""
    import importlib
    import inspect

    import keras

    from bench.models import get_backbone

    h = hashlib.sha256(keras.__version__.encode())
    sources = [importlib.import_module("bench.models.blocks").__file__]
    with contextlib.suppress(TypeError, OSError):
        sources.append(inspect.getfile(get_backbone(backbone).build))
    for src in sources:
        try:
            h.update(Path(src).read_bytes())
        except OSError:
            h.update(str(src).encode())
    return h.hexdigest()[:16]


def block_count(backbone: str, size: int | None = None) -> int:
    """How many blocks ``backbone`` has (the largest unfrozen depth), built once and cached.

    The block structure does not depend on the input size (checked on ResNet50, InceptionV3,
    EfficientNetB0 and ConvNeXtTiny at their minimum size, 96 and 224 px), so the count is cached
    per backbone, in memory and in BENCH_CACHE/block_counts.json; by default the backbone is
    built at its minimum size with random weights, which takes about a second.
    """
    if backbone in _BLOCK_COUNTS:
        return _BLOCK_COUNTS[backbone]
    from bench.models import blocks, check_size, get_backbone

    spec = get_backbone(backbone)
    stamp = _block_stamp(backbone)
    path = cache_dir() / BLOCK_CACHE_FILE
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        entry = stored.get(backbone, {})
        if entry.get("stamp") == stamp and _is_int(entry.get("blocks")):
            _BLOCK_COUNTS[backbone] = entry["blocks"]
            return entry["blocks"]
    except (OSError, ValueError, AttributeError):
        stored = {}

    side = spec.min_size if size is None else check_size(spec, size)
    base = spec.build((side, side, 3), None)
    n = len(blocks(base))
    del base
    _BLOCK_COUNTS[backbone] = n
    _store_count(path, backbone, {"blocks": n, "stamp": stamp})
    return n


def _store_count(path: Path, backbone: str, entry: dict[str, Any]) -> None:
    # Several workers may share BENCH_CACHE: read-modify-write to a temporary file, then an
    # atomic rename. Losing a concurrent update only costs a rebuild later.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(stored, dict):
                stored = {}
        except (OSError, ValueError):
            stored = {}
        stored[backbone] = entry
        write_text_atomic(path, json.dumps(stored, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only cache only means counting again next time


# --- the space --------------------------------------------------------------------------------


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
                _check_imagenet(where, backbones)
        return pinned

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
        from bench.train import TrainConfig

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


def _check_sizes(where: str, backbones: list[str], sizes: list[int]) -> None:
    from bench.models import get_backbone

    smallest = min(sizes)
    for name in backbones:
        spec = get_backbone(name)
        if smallest < spec.min_size:
            raise ConfigError(
                f"{where}: size {smallest} is too small for backbone '{name}', which needs at least "
                f"{spec.min_size} px; use a size of {spec.min_size} or more, or drop '{name}'."
            )


def _check_imagenet(where: str, backbones: list[str]) -> None:
    from bench.models import get_backbone

    missing = [b for b in backbones if not get_backbone(b).has_imagenet]
    if missing:
        raise ConfigError(
            f"{where}: weights 'imagenet', but {', '.join(repr(b) for b in missing)} "
            f"{'has' if len(missing) == 1 else 'have'} no ImageNet weights; drop "
            f"{'it' if len(missing) == 1 else 'them'} or use weights '{NO_WEIGHTS}'."
        )


def _fingerprint(params: tuple[Param, ...], metric: str, direction: str) -> str:
    # Only what changes the search: names, descriptions, comments and layout do not.
    canonical = {
        "params": [p.canonical() for p in params],
        "metric": metric,
        "direction": direction,
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


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


def _drop_absent_weights(params: dict[str, Param]) -> list[str]:
    """Leave out the backbone choices whose ImageNet weights this machine does not have.

    The space's fingerprint follows the choices kept, so a study made without them refuses to
    resume once they appear (its space would differ), rather than silently changing.
    """
    backbone = params.get("backbone")
    if backbone is None or not backbone.if_weights_present:
        return []
    from bench.models import get_backbone
    from bench.models.weights import imagenet_path

    absent = [b for b in backbone.if_weights_present if imagenet_path(get_backbone(b)) is None]
    if not absent:
        return []
    kept = tuple(c for c in backbone.choices or () if c not in absent)
    if not kept:
        raise ConfigError(f"[params.backbone] (line {backbone.line}): every choice needs ImageNet weights that "
                          f"this machine does not have ({', '.join(absent)}): see `bench weights list`.")
    params["backbone"] = replace(backbone, choices=kept)
    hints = "; ".join(_weights_hint(b) for b in absent)
    return [f"Backbone(s) {', '.join(absent)} left out of this search: no ImageNet weights on this machine ({hints})."]


def _weights_hint(backbone: str) -> str:
    from bench.models import get_backbone

    convert = get_backbone(backbone).imagenet_convert
    return f"`bench weights convert {convert}`" if convert else f"`bench weights pull {backbone}`"


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


def load_space(path: Path | str) -> SearchSpace:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"Search space {path} does not exist. Built-in spaces: {', '.join(builtin_names())}."
        ) from None
    return parse_space(text, str(path), path)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def builtin_space(name: str) -> Path:
    """The file of a shipped space (``default``, ``smoke``)."""
    path = BUILTIN_DIR / f"{name}.toml"
    if not path.is_file():
        names = builtin_names()
        raise ConfigError(
            f"No built-in search space '{name}'.{close_matches(name, names)} "
            f"Built-in spaces: {', '.join(names)}; or give the path of a .toml file."
        )
    return path


def resolve_space(spec: str | Path) -> Path:
    """A ``--space`` argument: an existing file, else the name of a built-in space."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if isinstance(spec, str) and "/" not in spec and not spec.endswith(".toml"):
        return builtin_space(spec)
    raise ConfigError(
        f"Search space {str(spec)!r} is neither a file nor a built-in space "
        f"({', '.join(builtin_names())})."
    )
