"""Run the registered measurements, print one table and write it to a CSV.

Every module of this package registers its measurements when imported, so ``load_measurements``
imports them all: a new measurement joins ``bench perf`` by existing. A measurement that raises
becomes a row carrying its error; the others still run, and the exit code says one failed.
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

import bench.perf as package
from bench.atomic import write_atomic
from bench.errors import ConfigError, close_matches
from bench.perf._registry import MEASUREMENTS, PerfOptions, PerfRow

COLUMNS = ("measurement", "what", "baseline", "bench", "values", "ratio", "target", "met")


def load_measurements() -> dict[str, Any]:
    """Import every public module of ``bench.perf`` (each registers itself); return the registry."""
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")
    return MEASUREMENTS


def select(only: str | None) -> list[str]:
    """The measurement names to run, in registry order; ``only`` is ``NAME[,NAME]``."""
    names = list(load_measurements())
    if not only:
        return names
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in MEASUREMENTS]
    if unknown or not wanted:
        hint = close_matches(unknown[0], names) if unknown else ""
        raise ConfigError(f"--only: unknown measurement {', '.join(repr(u) for u in unknown) or repr(only)}."
                          f"{hint} Known: {', '.join(names)}.")
    return [n for n in names if n in wanted]


def error_row(name: str, err: BaseException) -> PerfRow:
    return PerfRow(measurement=name, what="failed", baseline="", bench="", baseline_value=math.nan,
                   bench_value=math.nan, met=False, note=f"{type(err).__name__}: {err}"[:500])


def run_measurements(names: list[str], options: PerfOptions, on_row: Any = None) -> tuple[list[PerfRow], bool]:
    """Rows of every named measurement; ``failed`` is True when one of them raised."""
    rows: list[PerfRow] = []
    failed = False
    for name in names:
        t0 = time.perf_counter()
        try:
            new = MEASUREMENTS[name](options)
        except Exception as err:  # one broken measurement must not hide the others' figures
            new, failed = [error_row(name, err)], True
        for row in new:
            if on_row:
                on_row(row, time.perf_counter() - t0)
        rows.extend(new)
    return rows, failed


def _number(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"


def cells(row: PerfRow) -> dict[str, str]:
    ratio = row.ratio
    return {
        "measurement": row.measurement, "what": row.what + (f" ({row.note})" if row.note else ""),
        "baseline": row.baseline, "bench": row.bench,
        "values": f"{_number(row.baseline_value)} / {_number(row.bench_value)} {row.unit}",
        "ratio": f"{ratio:.2f}x" if math.isfinite(ratio) else "-", "target": row.target,
        "met": {True: "yes", False: "NO", None: "-"}[row.met],
    }


def write_csv(rows: list[PerfRow], out: Path, options: PerfOptions) -> Path:
    frame = pd.DataFrame([{**r.to_dict(), "quick": options.quick, "dataset": options.dataset} for r in rows])
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(out, lambda f: frame.to_csv(f, index=False))


def run_perf(options: PerfOptions, *, only: str | None, out: Path, console: Any) -> int:
    from rich.table import Table

    names = select(only)
    console.print(f"bench perf: {', '.join(names)}{' (quick settings)' if options.quick else ''}")
    rows, failed = run_measurements(
        names, options, on_row=lambda row, s: console.print(f"  {row.measurement}: done in {s:.0f} s"))
    table = Table(title="bench perf: the same work two ways on this machine")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*cells(row).values())
    console.print(table)
    console.print(f"written: {write_csv(rows, out, options)}")
    if failed:
        console.print("[bold red]error:[/] a measurement failed (its row says why)")
    return 1 if failed else 0
