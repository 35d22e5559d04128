"""Command-line value types: every number is checked where it enters, the same way in every command.

Each function is an argparse ``type=``. A bad value makes argparse print
``bench CMD: error: argument --OPTION: <our message>`` and exit with status 2, so the message
only has to say what was expected and repeat the value as typed. ``nan`` and ``inf`` parse as
floats in Python; they are refused here, since no option means anything with them.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from typing import Any

__all__ = ["at_least", "below_one", "duration", "factors", "fraction", "operating_point", "positive_float", "positive_int", "whole"]


def _number(value: str, convert: Callable[[str], float], what: str) -> float:
    try:
        number = convert(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}") from None
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}")
    return number


def at_least(low: int) -> Callable[[str], int]:
    """A whole number >= ``low``."""
    what = {0: "a whole number >= 0", 1: "a positive whole number"}.get(low, f"a whole number >= {low}")

    def check(value: str) -> int:
        number = int(_number(value, int, what))
        if number < low:
            raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}")
        return number

    check.__name__ = f"whole number >= {low}"  # argparse names the type in some messages
    return check


positive_int = at_least(1)
whole = at_least(0)


def positive_float(value: str) -> float:
    """A finite number > 0 (seconds, learning rates, gigabytes)."""
    what = "a finite number > 0"
    number = _number(value, float, what)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}")
    return number


def fraction(value: str) -> float:
    """Strictly between 0 and 1: a share of the images that leaves some on both sides."""
    what = "a number between 0 and 1 (exclusive), e.g. 0.2"
    number = _number(value, float, what)
    if not 0 < number < 1:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}")
    return number


def below_one(value: str) -> float:
    """0 <= x < 1: a rate that may be off (dropout, label smoothing)."""
    what = "a number >= 0 and < 1"
    number = _number(value, float, what)
    if not 0 <= number < 1:
        raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}")
    return number


def operating_point(value: str) -> Any:
    """``sens=0.95`` or ``spec=0.90``: a target rate that a threshold chosen on CV must reach."""
    from bench.metrics.operating import parse_point

    try:
        return parse_point(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def factors(value: str) -> tuple[str, ...]:
    """Parameter names separated by commas (``--by backbone,weights``); each checked against the runs later."""
    from bench.evaluation.grouping import parse_by

    try:
        return parse_by(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


_DURATION_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def duration(value: str) -> float:
    """A wall-clock budget: ``90s``, ``10m``, ``1.5h``, ``2h30m`` (units h, m, s, largest first) -> seconds.

    A bare number is refused: "10" could mean seconds or minutes, and a budget off by 60x is an
    expensive mistake to find out about hours later."""
    what = "a duration such as 90s, 10m, 1.5h or 2h30m"
    text = value.strip().lower().replace(" ", "")
    found = _DURATION.fullmatch(text)
    if not text or found is None or not any(found.groups()):
        raise argparse.ArgumentTypeError(f"must be {what}, got {value!r}")
    seconds = sum(float(v) * unit for v, unit in zip(found.groups(), _DURATION_UNITS.values()) if v)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"must be {what} longer than 0, got {value!r}")
    return seconds
