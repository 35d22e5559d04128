"""The `bench perf` feature-cache measurement, quick: real trials, rows of finite seconds."""

from __future__ import annotations

import math

from bench.perf import MEASUREMENTS, PerfOptions, feature_cache


def test_quick_feature_cache_rows_are_finite_ratios() -> None:
    assert MEASUREMENTS[feature_cache.NAME] is feature_cache.feature_cache
    rows = feature_cache.feature_cache(PerfOptions(quick=True))
    assert [r.bench for r in rows] == ["cached features, warm cache", "cached features, building the cache"]
    for row in rows:
        assert row.measurement == "feature_cache" and row.unit == "s" and row.target.startswith(">=")
        assert row.baseline_value > 0 and row.bench_value > 0 and math.isfinite(row.ratio)
        assert isinstance(row.met, bool) and "balanced accuracy" in row.note
    assert rows[0].baseline_value == rows[1].baseline_value  # one baseline run, two ways against it
