"""The report's line on a search's fixed cost: building and tracing models, per study.

Reads folds.csv's ``model`` (built, reused or restored: ``bench.training.pool``),
``seconds_build``, ``seconds_restore``, ``seconds_trace`` and ``seconds_fit`` columns; runs made
before the trainer pool have no ``model`` column and get no line. Tracing is estimated per fold
as its first epoch minus the median of its later epochs (0 for a fold of one epoch).
"""

from __future__ import annotations

import pandas as pd

from bench.report.feature_cache import saved_time_line


def fixed_cost_line(folds: pd.DataFrame) -> str | None:
    """One sentence for a study's search section, or None for runs from before the pool."""
    if folds.empty or "model" not in folds:
        return None
    sums = {c: float(folds[c].fillna(0).sum()) if c in folds else 0.0
            for c in ("seconds_build", "seconds_restore", "seconds_trace", "seconds_fit")}
    built, restored = int((folds["model"] == "built").sum()), int((folds["model"] == "restored").sum())
    fixed = sums["seconds_build"] + sums["seconds_restore"] + sums["seconds_trace"]
    training = sums["seconds_build"] + sums["seconds_restore"] + sums["seconds_fit"]
    share = f" ({fixed / training:.0%})" if training > 0 else ""
    return (f"Fixed cost: {fixed:.0f} s{share} of {training:.0f} training seconds went to building "
            f"{built} model(s) ({sums['seconds_build']:.0f} s), restoring {restored} kept by a worker from an "
            f"earlier trial ({sums['seconds_restore']:.0f} s; BENCH_WORKER_MODELS) and first-epoch tracing "
            f"(est. {sums['seconds_trace']:.0f} s: first epoch minus the median later epoch).")


def cost_lines(folds: pd.DataFrame) -> list[str]:
    """The search section's lines on where a study's training time went."""
    return [line for line in (saved_time_line(folds), fixed_cost_line(folds)) if line]
