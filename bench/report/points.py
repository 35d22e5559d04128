"""Operating-point and calibration rows as metric rows, so the external table can set them beside the
held-out ones: ``bench final`` writes them in operating_points.csv / calibration.csv (split cv and test),
``bench evaluate`` in the same schema under external/<slug>/ (split external)."""

from __future__ import annotations

import pandas as pd

# What a metric row keeps of a table row besides its value and interval.
_KEEP = ("entry", "backbone", "key", "trial", "split", "n_images", "n_boot", "unit", "n_units")


def rate_metric(rate: str, point: str, cls: str) -> str:
    """'sensitivity at sens=0.9 (PNEUMONIA)': the name of a rate an operating point reaches."""
    return f"{rate} at {point} ({cls})"


def calibration_metric(metric: str, scaling: str) -> str:
    return f"{metric}, temperature-scaled" if scaling == "temperature" else f"{metric}, unscaled"


def as_metric_rows(operating: pd.DataFrame, calibration: pd.DataFrame) -> pd.DataFrame:
    """Long rows (metric, value, low, high, ...) of both tables; either may be empty."""
    rows = []
    for r in operating.to_dict(orient="records") if len(operating) else []:
        base = {k: r[k] for k in _KEEP if k in r}
        for rate in ("sensitivity", "specificity"):
            rows.append({**base, "metric": rate_metric(rate, r["point"], r["class"]), "value": r[rate],
                         "low": r[f"{rate}_low"], "high": r[f"{rate}_high"], "threshold": r["threshold"]})
    for r in calibration.to_dict(orient="records") if len(calibration) else []:
        rows.append({**{k: r[k] for k in _KEEP if k in r}, "metric": calibration_metric(r["metric"], r["scaling"]),
                     "value": r["value"], "low": r["low"], "high": r["high"], "temperature": r["temperature"]})
    return pd.DataFrame(rows)
