"""``bench perf``: a real measurement end to end, a clear error for an unknown name, and a failing
measurement that still leaves the other rows in the table and the CSV."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from bench.cli import main
from bench.perf import MEASUREMENTS, PerfRow, register_perf


def test_quick_fold_overhead_writes_finite_ratios(tmp_path):
    out = tmp_path / "perf.csv"
    assert main(["perf", "--quick", "--only", "fold_overhead", "--out", str(out)]) == 0
    frame = pd.read_csv(out)
    assert list(frame.measurement) == ["fold_overhead"]
    row = frame.iloc[0]
    # Real epochs were timed: both sides positive, the ratio theirs, the target judged.
    assert row.baseline_value > 0 and row.bench_value > 0
    assert math.isfinite(row.ratio) and row.ratio == pytest.approx(row.baseline_value / row.bench_value)
    assert bool(row.met) == (row.ratio <= 1.3)
    assert not list(tmp_path.glob("*.tmp"))  # written atomically: no temporary left behind


def test_unknown_measurement_is_a_clear_error(tmp_path, capsys):
    out = tmp_path / "perf.csv"
    assert main(["perf", "--only", "fold_overhed", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "'fold_overhed'" in err and "Did you mean 'fold_overhead'" in err
    for name in ("smoke_search", "peak_rss", "fold_overhead"):
        assert name in err  # the known names are listed
    assert not out.exists()


@pytest.fixture
def throwaway_measurements():
    """A measurement that raises, registered before one that works (so it runs first)."""

    @register_perf("test_boom")
    def boom(options):
        raise RuntimeError("the disk fell off")

    @register_perf("test_ok")
    def ok(options):
        return [PerfRow("test_ok", "a constant", "slow", "fast", 3.0, 1.5, target=">= 2x", met=True)]

    yield
    for name in ("test_boom", "test_ok"):
        MEASUREMENTS.pop(name, None)


def test_failing_measurement_exits_nonzero_and_keeps_other_rows(tmp_path, capsys, throwaway_measurements):
    out = tmp_path / "perf.csv"
    assert main(["perf", "--only", "test_ok,test_boom", "--out", str(out)]) == 1
    frame = pd.read_csv(out).set_index("measurement")
    assert list(frame.index) == ["test_boom", "test_ok"]  # registry order, the failure did not stop the run
    assert "RuntimeError: the disk fell off" in frame.loc["test_boom", "note"]
    assert frame.loc["test_ok", "ratio"] == pytest.approx(2.0)
    printed = capsys.readouterr().out
    assert "the disk fell off" in printed and "a measurement failed" in printed
