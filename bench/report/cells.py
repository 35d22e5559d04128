"""A report table (Table) and the formatting of its cells: numbers, spreads, intervals, counts."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from bench import metrics as M

LABELS = {
    "accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro-F1", "auc": "AUC",
    "sensitivity": "sensitivity", "specificity": "specificity", "mcc": "MCC", "log_loss": "log loss",
}
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "INTERRUPTED")


@dataclass
class Table:
    name: str  # tables/<name>.csv
    title: str
    caption: str
    data: pd.DataFrame
    display: pd.DataFrame
    bold: pd.DataFrame | None = None
    terminal: bool = False  # also printed in the terminal

    def __post_init__(self) -> None:
        if self.bold is None:
            self.bold = pd.DataFrame(False, index=self.display.index, columns=self.display.columns)


# ---- formatting --------------------------------------------------------------------------------------------


def slug(*parts: Any) -> str:
    text = "_".join(str(p) for p in parts if p is not None and str(p) != "")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def isnan(x: Any) -> bool:
    try:
        return x is None or (isinstance(x, float | np.floating) and math.isnan(x)) or pd.isna(x)
    except (TypeError, ValueError):
        return False


def f3(x: Any) -> str:
    return "-" if isnan(x) else f"{float(x):.3f}"


def pruned_where(fold: Any, epoch: Any) -> str:
    """'fold 1, epoch 2' (cut on its learning curve), 'fold 2 end' (on its fold score) or '-'."""
    if isnan(fold):
        return "-"
    if isnan(epoch) or int(float(epoch)) < 0:
        return f"fold {int(float(fold)) + 1} end"
    return f"fold {int(float(fold)) + 1}, epoch {int(float(epoch)) + 1}"


def pm(mean: Any, std: Any) -> str:
    if isnan(mean):
        return "-"
    return f"{float(mean):.3f}" if isnan(std) else f"{float(mean):.3f} ± {float(std):.3f}"


def ci(value: Any, low: Any, high: Any) -> str:
    if isnan(value):
        return "-"
    if isnan(low) or isnan(high):
        return f"{float(value):.3f}"
    return f"{float(value):.3f} [{float(low):.3f}, {float(high):.3f}]"


def count(x: Any) -> str:
    return "-" if isnan(x) else f"{int(x):,}"


def millions(x: Any) -> str:
    """A parameter count: 23.59 M, 390.4 k, 812."""
    if isnan(x):
        return "-"
    x = float(x)
    return f"{x / 1e6:.2f} M" if x >= 1e6 else (f"{x / 1e3:.1f} k" if x >= 1e3 else f"{int(x)}")


def seconds(x: Any) -> str:
    if isnan(x):
        return "-"
    x = float(x)
    if x < 120:
        return f"{x:.1f} s"
    if x < 7200:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.1f} h"


def short(x: Any, digits: int = 3) -> str:
    if isnan(x):
        return "-"
    if isinstance(x, bool | np.bool_):
        return str(bool(x)).lower()
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        return f"{float(x):.{digits}g}"
    return str(x)


def best_mask(data: pd.DataFrame, display: pd.DataFrame, rules: dict[str, tuple[str, str]]) -> pd.DataFrame:
    """``rules``: display column -> (data column, "max"|"min"); ties are all marked."""
    bold = pd.DataFrame(False, index=display.index, columns=display.columns)
    if len(data) < 2:
        return bold
    for col, (source, how) in rules.items():
        if col not in display or source not in data:
            continue
        values = pd.to_numeric(data[source], errors="coerce").to_numpy(dtype=float)
        if np.isfinite(values).sum() < 2:  # a lone value is not "the best" of anything
            continue
        target = np.nanmax(values) if how == "max" else np.nanmin(values)
        bold[col] = np.isclose(values, target, rtol=0, atol=1e-12) & np.isfinite(values)
    return bold


def higher_is_better(metric: str) -> bool:
    m = M.METRICS.get(metric)
    return m.higher_is_better if m is not None else True
