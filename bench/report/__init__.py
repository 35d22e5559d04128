"""Reporting: statistics and figures that compare models across folds and datasets.

``bench report`` is ``write_report`` + ``print_report``:

* ``collect`` reads run directories (through ``bench.results.RunDir`` only) into tidy frames,
  merging copies of one study made on several machines;
* ``tables`` computes every table (leaderboards, cross-dataset, trials, confusion, ...);
* ``figures`` draws confusion heatmaps, ROC and training curves and the search plots;
* ``stats`` holds the significance tests (corrected resampled t-test, Friedman, CD diagram);
* ``render`` assembles the sections and writes Markdown, self-contained HTML and CSV.

Submodules are imported on first use, so ``import bench.report.stats`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["find_run_dirs", "print_report", "write_report"]


def __getattr__(name: str) -> Any:
    if name in ("write_report", "print_report"):
        from bench.report import render

        return getattr(render, name)
    if name == "find_run_dirs":
        from bench.report.collect import find_run_dirs

        return find_run_dirs
    raise AttributeError(f"module 'bench.report' has no attribute {name!r}")
