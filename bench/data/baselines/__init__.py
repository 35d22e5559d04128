"""Published results, kept as data: one CSV per source table, read by the registry and the report.

Each ``<table>.csv`` in this folder has one row per (dataset, method, metric) with the columns

    dataset      the dataset's name in the table (a registry entry points here with
                 ``baselines = { table = "<table>", dataset = "..." }``)
    method       the row's name as the paper prints it, e.g. "ResNet-18 (28)"
    image_size   the input size in pixels, where the row's name says it (else empty)
    metric       a bench metric name the number is comparable with: auc | accuracy
    value        the number, exactly as printed
    split        the split it was measured on (test)
    as_reported  "yes": copied from the paper, never recomputed or rounded by us
    source       where in the paper (e.g. "MedMNIST v2, Table 3")
    citation     the full reference
    recipe       how the paper trained it, where the paper says so (else empty)

A cell we could not cite exactly is left out rather than filled in: a row exists only for the
numbers the source prints.
"""

from __future__ import annotations

import csv
import functools
import math
from dataclasses import dataclass
from pathlib import Path

from bench.errors import ConfigError

FOLDER = Path(__file__).resolve().parent
COLUMNS = ("dataset", "method", "image_size", "metric", "value", "split", "as_reported", "source", "citation",
           "recipe")
METRICS = ("auc", "accuracy")


@dataclass(frozen=True)
class Baseline:
    """One published number."""

    dataset: str
    method: str
    image_size: int | None
    metric: str
    value: float
    split: str
    source: str
    citation: str
    recipe: str


def tables() -> tuple[str, ...]:
    """Names of the shipped baseline tables (the CSV files' stems), sorted."""
    return tuple(sorted(p.stem for p in FOLDER.glob("*.csv")))


@functools.cache
def load(table: str) -> tuple[Baseline, ...]:
    """Every row of ``<table>.csv``; a ``ConfigError`` naming the file, line and column if one is malformed."""
    path = FOLDER / f"{table}.csv"
    if not path.is_file():
        raise ConfigError(f"No baseline table '{table}' (looked for {path}); known: {', '.join(tables()) or 'none'}.")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ConfigError(f"{path}: missing column(s) {missing}; a baseline table has {', '.join(COLUMNS)}.")
        return tuple(_row(path, line, row) for line, row in enumerate(reader, start=2))


def _row(path: Path, line: int, row: dict[str, str]) -> Baseline:
    where = f"{path}, line {line}"
    if row["metric"] not in METRICS:
        raise ConfigError(f"{where}: metric {row['metric']!r}; allowed: {', '.join(METRICS)}.")
    if row["as_reported"] != "yes":
        raise ConfigError(f"{where}: 'as_reported' must be 'yes': only numbers copied from the source belong here.")
    if not row["citation"].strip() or not row["source"].strip():
        raise ConfigError(f"{where}: every row needs its 'source' and 'citation'.")
    try:
        value = float(row["value"])
    except ValueError:
        raise ConfigError(f"{where}: 'value' must be a number, got {row['value']!r}.") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ConfigError(f"{where}: 'value' {value} is not a fraction between 0 and 1.")
    size = row["image_size"].strip()
    if size and not size.isdigit():
        raise ConfigError(f"{where}: 'image_size' must be a whole number of pixels or empty, got {size!r}.")
    return Baseline(dataset=row["dataset"], method=row["method"], image_size=int(size) if size else None,
                    metric=row["metric"], value=value, split=row["split"], source=row["source"],
                    citation=row["citation"], recipe=row["recipe"])


def datasets(table: str) -> tuple[str, ...]:
    """The datasets ``table`` has rows for, sorted."""
    return tuple(sorted({b.dataset for b in load(table)}))


def for_dataset(table: str, dataset: str) -> tuple[Baseline, ...]:
    """The rows of ``table`` for ``dataset``, in the file's order."""
    return tuple(b for b in load(table) if b.dataset == dataset)
