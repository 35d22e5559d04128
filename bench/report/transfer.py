"""The report's tables of how a model's held-out score carries over: to its variants (TTA, fold
ensembles; ``bench final --tta/--ensemble``) and to external data (``bench evaluate``)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.report.cells import LABELS, Table, ci, count, pm, slug
from bench.report.collect import KEY_METRICS, Collection
from bench.report.facts import entry_rows, identity
from bench.report.points import as_metric_rows
from bench.report.tables import held_out_rows

# Single model first, then what each addition costs or buys.
_ORDER = {"refit+tta": 0, "fold-ensemble": 1, "fold-ensemble+tta": 2}


def _units(n_images: Any, n_units: Any, unit: Any) -> str:
    """'60 images, 40 patients' (or just the images when the bootstrap resampled images)."""
    text = f"{count(n_images)} images"
    if isinstance(unit, str) and unit != "images" and not pd.isna(n_units):
        text += f", {count(n_units)} {unit}"
    return text


def _entry_header(data: pd.DataFrame) -> str:
    """"backbone" while the rows are backbones (as always); "entry" when ``--by`` rows share one."""
    return "backbone" if "key" not in data or (data.key.astype(str) == data.backbone.astype(str)).all() else "entry"


def variants_table(coll: Collection, dataset: str, board: pd.DataFrame) -> Table | None:
    """Per leaderboard model: the refit and each variant on the held-out test, with the paired difference."""
    v = coll.variants
    if v.empty or board.empty:
        return None
    metric = coll.objective(dataset)["metric"]
    shown = list(dict.fromkeys((metric, *KEY_METRICS)))
    rows = []
    for r in board.itertuples(index=False):
        refit = held_out_rows(coll, dataset, r)
        mine = entry_rows(v, dataset, r)
        if refit.empty or mine.empty:
            continue
        by_variant = sorted(mine.groupby("variant", sort=False), key=lambda kv: _ORDER.get(kv[0], len(_ORDER)))
        for name, sub in [("refit", refit.assign(variant="refit")), *by_variant]:
            row: dict[str, Any] = {"dataset": dataset, **identity(r), "study": r.study, "trial": r.trial,
                                   "variant": name, "tta": str(sub.tta.iloc[0]) if "tta" in sub else "none"}
            for m in shown:
                x = sub[sub.metric == m]
                row[m], row[f"{m}_low"], row[f"{m}_high"] = (
                    (float(x.value.iloc[0]), float(x.low.iloc[0]), float(x.high.iloc[0])) if len(x)
                    else (math.nan, math.nan, math.nan))
            x = sub[sub.metric == metric]
            for c in ("vs_refit", "vs_refit_low", "vs_refit_high"):
                row[c] = float(x[c].iloc[0]) if c in x and len(x) else math.nan
            row["n_images"], row["n_units"], row["unit"] = sub.n_images.iloc[0], sub.n_units.iloc[0], sub.unit.iloc[0]
            rows.append(row)
    if not rows:
        return None
    data = pd.DataFrame(rows)
    display = pd.DataFrame({
        _entry_header(data): data.key if "key" in data else data.backbone, "variant": data.variant,
        **{f"{LABELS.get(m, m)}{' (objective)' if m == metric else ''}":
           [ci(a, b, c) for a, b, c in zip(data[m], data[f"{m}_low"], data[f"{m}_high"])] for m in shown},
        f"{LABELS.get(metric, metric)} vs refit [paired 95% CI]":
            ["-" if pd.isna(d) else f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]"
             for d, lo, hi in zip(data.vs_refit, data.vs_refit_low, data.vs_refit_high)],
    })
    tta = sorted({t for t in data.tta if t not in ("none", "nan")})
    first = data.iloc[0]
    caption = (f"Held-out test ({_units(first.n_images, first.n_units, first.unit)}): the single refit and what "
               f"`bench final` scored beside it. +tta: probabilities averaged over the TTA set "
               f"{', '.join(tta) or '-'} (flip = the image and its horizontal mirror; flip-hv adds the vertical and "
               f"both mirrors); fold-ensemble: the mean of the best trial's cross-validation fold models, each trained "
               f"as CV trained it. [95% CI] bootstrap as for the refit; the last column is the variant minus the "
               f"refit on the same resamples (a paired bootstrap): an interval holding 0 means no clear gain.")
    return Table(slug("variants", dataset), f"{dataset}: TTA and fold ensembles vs the refit", caption, data, display)


def external_tables(coll: Collection, dataset: str, board: pd.DataFrame) -> list[Table]:
    """Per leaderboard model with an external evaluation: CV -> held-out -> each external set, per metric."""
    ext = coll.externals
    if ext.empty or board.empty:
        return []
    metric = coll.objective(dataset)["metric"]
    shown = list(dict.fromkeys((metric, *KEY_METRICS)))
    tables = []
    for r in board.itertuples(index=False):
        mine = entry_rows(ext, dataset, r)
        if mine.empty:
            continue
        test = held_out_rows(coll, dataset, r)
        # The operating points' rates and the calibration, as CV chose them and as they carried over.
        points = as_metric_rows(entry_rows(coll.operating_points, dataset, r), entry_rows(coll.calibration, dataset, r))
        cv_points = points[points.split == "cv"] if len(points) else points
        if len(points):
            test = pd.concat([test, points[points.split == "test"]], ignore_index=True)
        extra = [m for m in dict.fromkeys(mine.metric) if m not in shown and (" at " in m or ", " in m)]
        # The operating points first (the deploying user's question), then each calibration metric unscaled -> scaled.
        extra.sort(key=lambda m: (" at " not in m, m.replace("unscaled", "a").replace("temperature-scaled", "b")))
        sets = list(dict.fromkeys(mine.external))
        rows = []
        for m in [*shown, *extra]:
            cv = cv_points[cv_points.metric == m] if len(cv_points) else cv_points
            row: dict[str, Any] = {"dataset": dataset, **identity(r), "metric": m,
                                   # a rate at a CV-chosen threshold is one pooled out-of-fold number, no std
                                   "cv_mean": float(cv.value.iloc[0]) if len(cv) else
                                   getattr(r, f"cv_{m}_mean", math.nan),
                                   "cv_std": math.nan if len(cv) else getattr(r, f"cv_{m}_std", math.nan)}
            for prefix, frame in [("test", test), *[(f"ext_{s}", mine[mine.external == s]) for s in sets]]:
                x = frame[frame.metric == m]
                row[prefix], row[f"{prefix}_low"], row[f"{prefix}_high"] = (
                    (float(x.value.iloc[0]), float(x.low.iloc[0]), float(x.high.iloc[0])) if len(x)
                    else (math.nan, math.nan, math.nan))
            rows.append(row)
        data = pd.DataFrame(rows)
        display = pd.DataFrame({
            "metric": [LABELS.get(m, m) + (" (objective)" if m == metric else "") for m in data.metric],
            "CV mean ± std": [pm(a, b) for a, b in zip(data.cv_mean, data.cv_std)],
            "held-out [95% CI]": [ci(a, b, c) for a, b, c in zip(data.test, data.test_low, data.test_high)],
            **{f"external {s} [95% CI]": [ci(a, b, c) for a, b, c in
                                          zip(data[f"ext_{s}"], data[f"ext_{s}_low"], data[f"ext_{s}_high"])]
               for s in sets},
        })
        parts = [f"CV: {count(getattr(r, 'cv_images', math.nan))} out-of-fold images ({getattr(r, 'folds', '?')} folds)"]
        if len(test):
            t = test.iloc[0]
            parts.append(f"held-out: {_units(t.n_images, t.n_units, t.unit)}")
        warnings = []
        for s in sets:
            e = mine[mine.external == s].iloc[0]
            parts.append(f"external {s} (`{e.external_dataset}`): {_units(e.n_images, e.n_units, e.unit)}")
            shared = int(e.shared_images or 0), int(e.shared_patients or 0)
            if any(shared) and not bool(e.overlap_dropped):
                warnings.append(f"external {s} shares {shared[0]} image(s) and {shared[1]} patient(s) with the "
                                f"run's data, so it is not independent and its numbers are optimistic")
            elif any(shared):
                warnings.append(f"external {s}: {shared[0]} identical image(s) and the images of {shared[1]} "
                                f"patient(s) the run also has were left out (--drop-overlap)")
        caption = ("The same model from cross-validation (mean ± std over the folds) to the held-out test and to "
                   "data that took no part in the search (`bench evaluate`); [95% CI] by bootstrap over patients "
                   "where the set has them. "
                   + ("'at sens=X (class)': the threshold chosen on the out-of-fold CV predictions (its CV column "
                      "is the pooled out-of-fold rate), applied unchanged to the held-out and external sets; "
                      "'temperature-scaled': with the temperature fitted on the same CV predictions. " if extra else "")
                   + "Sizes: " + "; ".join(parts) + "."
                   + "".join(f" Note: {w}." for w in warnings))
        tables.append(Table(slug("external", dataset, getattr(r, "entry", r.backbone)), f"{dataset}: {r.key}: CV -> "
                            f"held-out -> external", caption, data, display))
    return tables
