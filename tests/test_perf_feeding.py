"""``bench perf`` feeding: the quick measurement times every feeding path through real ``fit`` calls
and reports images/s against the 3,000 img/s target."""

from __future__ import annotations

import math

from bench.perf import PerfOptions
from bench.perf._run import cells, load_measurements


def test_quick_feeding_rows_are_positive_rates_against_the_target():
    rows = load_measurements()["feeding"](PerfOptions(quick=True))
    labels = [r.what.split(";")[0] for r in rows]
    assert labels[:2] == ["today: fit from numpy, augment none", "today: fit from numpy, augment light in the model"]
    assert {"tf.data, no augmentation", "tf.data, light augmentation in the pipeline",
            "PyDataset, 2 worker threads"} <= set(labels)
    for row in rows:
        assert row.measurement == "feeding" and row.unit == "img/s" and row.target == ">= 3000 img/s"
        assert math.isfinite(row.bench_value) and row.bench_value > 0, row
        assert math.isfinite(row.baseline_value) and row.baseline_value > 0, row
        assert row.met == (row.bench_value >= 3000)
        assert cells(row)["values"].endswith("img/s")
    today = {r.bench_value for r in rows[:2]}
    others = [r for r in rows if r.baseline.startswith("today's path")]
    assert len(others) == 3
    for row in others:  # the other paths are compared with today's figure for the same augmentation
        assert row.baseline_value in today
        assert f"{row.bench_value / row.baseline_value:.2f}x today's path" in row.note
