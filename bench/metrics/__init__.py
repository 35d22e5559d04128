"""Scores and their uncertainty: the classification metrics (``scores``), bootstrap confidence
intervals (``bootstrap``), temperature calibration (``calibration``) and operating points
(``operating``). A leaf every layer may use: it knows no models, no runs and no search.

The names most callers need are re-exported here (``from bench import metrics as M``).
"""

from bench.metrics.bootstrap import (
    CI,
    bootstrap_all,
    bootstrap_ci,
    bootstrap_paired_difference,
    bootstrap_phrase,
)
from bench.metrics.scores import (
    ECE_BINS,
    METRICS,
    Metric,
    compute_metrics,
    confusion,
    expected_calibration_error,
    fast_path,
    get_metric,
    metric,
    normalize_rows,
    per_class_table,
    validate_inputs,
)

__all__ = [
    "CI",
    "ECE_BINS",
    "METRICS",
    "Metric",
    "bootstrap_all",
    "bootstrap_ci",
    "bootstrap_paired_difference",
    "bootstrap_phrase",
    "compute_metrics",
    "confusion",
    "expected_calibration_error",
    "fast_path",
    "get_metric",
    "metric",
    "normalize_rows",
    "per_class_table",
    "validate_inputs",
]
