"""What each TrainConfig field accepts in a space: its parameter types and a check of its values.

The registries the checks name (backbones, optimizers, augmentation policies) are imported when a
value is checked, not at import, so loading a space stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from bench.errors import close_matches

# TOML has no null: "none" stands for random initialisation and becomes None in a TrainConfig.
NO_WEIGHTS = "none"


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
    from bench.training.train import OPTIMIZERS

    return list(OPTIMIZERS)


def _policies() -> list[str]:
    from bench.training.augment import POLICIES

    return list(POLICIES)


def _schedules() -> list[str]:
    from bench.training.schedules import SCHEDULES

    return list(SCHEDULES)


def _poolings() -> list[str]:
    from bench.models import POOLINGS

    return list(POOLINGS)


def _int_in(lo: int, hi: int) -> Any:
    return lambda v: None if _is_int(v) and lo <= v <= hi else f"needs a whole number in [{lo}, {hi}], got {v!r}."


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
    "schedule": FieldRule(_CAT, None, _one_of(_schedules, "schedule"), "a registered LR schedule"),
    "warmup_epochs": FieldRule((*_CAT, "int"), "int", _int_at_least(0),
                               "a number of epochs >= 0 (fewer than epochs; not with schedule 'plateau')"),
    "head_epochs": FieldRule((*_CAT, "int"), "int", _int_at_least(0),
                             "a number of head-only epochs >= 0 (fewer than epochs; 0 = one phase)"),
    "backbone_lr_scale": FieldRule((*_CAT, "float"), "float", _float_in(0.0, None),
                                   "a number >= 0 (the backbone's rate relative to the head's)"),
    "head_layers": FieldRule((*_CAT, "int"), "int", _int_in(0, 2), "0, 1 or 2 hidden dense layers"),
    "head_units": FieldRule((*_CAT, "int"), "int", _int_at_least(1), "a whole number of units >= 1"),
    "pooling": FieldRule(_CAT, None, _one_of(_poolings, "pooling"), "avg, max or flatten"),
}
# ``seed`` is a TrainConfig field too, but it belongs to the run (--seed), not to the search.
NOT_SEARCHED = ("seed",)


def _train_fields() -> list[str]:
    from bench.training.train import TrainConfig

    return [f.name for f in fields(TrainConfig)]
