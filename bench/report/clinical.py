"""A leaderboard model's calibration and operating points: tables, reliability diagram, ROC marks.

Everything comes from records ``bench final`` wrote (calibration.csv, operating_points.csv, the
temperature in final.json) and from the out-of-fold and held-out predictions; nothing is fitted
here. The temperature is applied to the predictions only to draw the reliability diagram after
scaling, with the T that was fitted on the out-of-fold CV predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import metrics as M
from bench.metrics.calibration import apply_temperature, reliability
from bench.report import figures as F
from bench.report.cells import Table, ci, count, f3, slug
from bench.report.collect import Collection, proba_matrix
from bench.report.facts import entry_rows, identity
from bench.report.figures import Figure, RocMark
from bench.results import entry_keys

SPLITS = {"cv": "CV (out-of-fold)", "test": "held-out test"}
SCALINGS = {"none": "as trained", "temperature": "temperature-scaled"}


def _of(frame: pd.DataFrame, dataset: str, row: Any) -> pd.DataFrame:
    """``row``'s records (its study, backbone, trial and entry) in a held-out table."""
    return entry_rows(frame, dataset, row)


def temperature(coll: Collection, dataset: str, row: Any) -> float | None:
    finals = coll.finals
    if finals.empty or "temperature" not in finals:
        return None
    hit = _of(finals, dataset, row).temperature.dropna()
    return float(hit.iloc[0]) if len(hit) else None


def calibration_table(coll: Collection, dataset: str, row: Any) -> Table | None:
    rows = _of(coll.calibration, dataset, row)
    if rows.empty:
        return None
    records = []
    for (split, scaling), part in rows.groupby(["split", "scaling"], sort=False):
        by = part.set_index("metric")
        records.append({**identity(row), "split": split, "scaling": scaling, "temperature": float(part.temperature.iloc[0]),
                        **{f"{m}{s}": float(by.loc[m, c]) for m in by.index
                           for s, c in (("", "value"), ("_low", "low"), ("_high", "high"))},
                        "n_images": int(part.n_images.iloc[0]), "unit": part.unit.iloc[0],
                        "n_units": int(part.n_units.iloc[0]), "n_boot": int(part.n_boot.min())})
    data = pd.DataFrame(records)
    metrics = [m for m in ("ece", "brier", "log_loss") if m in data]
    labels = {"ece": f"ECE ({M.ECE_BINS} equal-mass bins)", "brier": "Brier", "log_loss": "log loss"}
    display = pd.DataFrame({
        "split": [SPLITS.get(s, s) for s in data.split],
        "probabilities": [SCALINGS.get(s, s) + ("" if s == "none" else f" (T = {t:.3f})")
                          for s, t in zip(data.scaling, data.temperature)],
        **{labels[m]: [ci(a, b, c) for a, b, c in zip(data[m], data[f"{m}_low"], data[f"{m}_high"])] for m in metrics},
        "images": [count(n) for n in data.n_images],
    })
    phrases = ", ".join(dict.fromkeys(f"{SPLITS.get(s, s)}: {M.bootstrap_phrase(n, u, i)}"
                                      for s, n, u, i in zip(data.split, data.n_units, data.unit, data.n_images)))
    fitted = ("The temperature T was fitted on the out-of-fold CV predictions only (so the CV row after scaling "
              "is in-sample) and applied unchanged to the held-out test set." if "cv" in set(data.split) else
              # A shared study's trial that ran on another machine: its out-of-fold predictions are in that
              # machine's run directory, not this one.
              f"No temperature was fitted: trial {getattr(row, 'trial', '?')}'s out-of-fold CV predictions are not "
              f"in this run directory (on a study shared by several machines, the trial ran elsewhere: its "
              f"predictions.csv is in that machine's run directory), so the held-out set is shown unscaled.")
    caption = (f"Expected calibration error on the top-class confidence ({M.ECE_BINS} equal-mass bins), Brier score "
               f"(binary: squared error of the positive class's probability; multiclass: summed over classes) and "
               f"log loss; lower is better. {fitted} "
               f"[95% CI] {phrases} ({count(data.n_boot.min())} resamples).")
    return Table(slug("calibration", dataset, row.key), f"{row.key}: calibration", caption, data, display)


def _oof(coll: Collection, dataset: str, row: Any, classes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    pr = coll.predictions
    if pr.empty:
        return None
    pr = pr[(pr.dataset == dataset) & (pr.study == row.study) & (pr.trial == row.trial)]
    return proba_matrix(pr, classes) if len(pr) else None


def _test(coll: Collection, dataset: str, row: Any, classes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    tp = _of(coll.test_predictions, dataset, row)
    return proba_matrix(tp, classes) if len(tp) else None


def reliability_figure(coll: Collection, dataset: str, row: Any, folder: Path, name: str) -> Figure | None:
    """Accuracy against confidence per equal-mass bin: CV (out-of-fold) and held-out test, before and
    after temperature scaling."""
    classes = coll.classes(dataset)
    panels = [(SPLITS["cv"], _oof(coll, dataset, row, classes)), (SPLITS["test"], _test(coll, dataset, row, classes))]
    panels = [(title, yp) for title, yp in panels if yp is not None]
    if not panels:
        return None
    t = temperature(coll, dataset, row)
    fig = F.new_figure(4.6 * len(panels), 4.4)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (title, (y, proba)) in zip(axes, panels):
        proba = proba / proba.sum(axis=1, keepdims=True)
        versions = [("as trained", proba, F.PALETTE[0])]
        if t is not None:
            versions.append((f"T = {t:.2f}", apply_temperature(proba, t), F.PALETTE[1]))
        for label, p, color in versions:
            bins = reliability(y, p)
            ece = M.expected_calibration_error(y, p)
            ax.plot(bins.confidence, bins.accuracy, marker="o", color=color, label=f"{label} (ECE {ece:.3f})")
        ax.plot([0, 1], [0, 1], color="#999999", linestyle=":", linewidth=1)
        ax.set_xlim(1 / len(classes) - 0.01, 1.01)  # the top-class confidence is at least 1/k
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("mean confidence (top class)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title}, {count(len(y))} images")
        ax.legend(loc="upper left", fontsize=8)
        ax.grid(alpha=0.3)
    return F.save(fig, folder, name, f"{row.key}: reliability diagram",
                  f"Accuracy against mean top-class confidence in {M.ECE_BINS} equal-mass bins (a calibrated model "
                  f"lies on the diagonal). T was fitted on the out-of-fold CV predictions only; on the CV panel the "
                  f"scaled line is therefore in-sample.")


def operating_table(coll: Collection, dataset: str, row: Any) -> Table | None:
    rows = _of(coll.operating_points, dataset, row)
    if rows.empty:
        return None
    records = []
    for (point, cls), part in rows.groupby(["point", "class"], sort=False):
        record: dict[str, Any] = {**identity(row), "point": point, "class": cls, "threshold": float(part.threshold.iloc[0])}
        for split, r in part.set_index("split").iterrows():
            for rate in ("sensitivity", "specificity"):
                for suffix in ("", "_low", "_high"):
                    record[f"{split}_{rate}{suffix}"] = float(r[rate + suffix])
            record[f"{split}_images"], record[f"{split}_unit"] = int(r.n_images), f"{int(r.n_units)} {r.unit}"
        records.append(record)
    data = pd.DataFrame(records)
    display = pd.DataFrame({"point": data.point, "class": data["class"], "threshold": [f"{x:.4f}" for x in data.threshold]})
    for split in ("cv", "test"):
        for rate in ("sensitivity", "specificity"):
            if f"{split}_{rate}" in data:
                display[f"{SPLITS[split]} {rate}"] = [ci(a, b, c) for a, b, c in zip(
                    data[f"{split}_{rate}"], data[f"{split}_{rate}_low"], data[f"{split}_{rate}_high"])]
    sizes = "; ".join(f"{SPLITS[s]} {count(data[f'{s}_images'].iloc[0])} images ({data[f'{s}_unit'].iloc[0]})"
                      for s in ("cv", "test") if f"{s}_images" in data)
    caption = ("Each threshold (positive when the class's probability is >= it; multiclass: one-vs-rest) was chosen "
               "on the out-of-fold CV predictions to reach its target and applied unchanged to the held-out test "
               f"set. [95% CI] by bootstrap over the units in brackets; {sizes}.")
    return Table(slug("operating_points", dataset, row.key), f"{row.key}: operating points", caption,
                 data, display)


def missing_sections(coll: Collection, dataset: str, row: Any) -> list[str]:
    """What `bench final` (and `bench evaluate`) recorded for ``row``'s refit that the report's tables do
    not find: its completeness check, under any ``--by`` (``bench report --strict`` fails on each)."""
    final = entry_rows(coll.finals, dataset, row)
    if final.empty:
        return []
    f = final.iloc[0]
    where = f"{row.key} (entry {f.entry}, trial {row.study} #{row.trial})"
    again = "; run `bench final` on its run directory again"
    out = []
    if f.get("calibrated") and _of(coll.calibration, dataset, row).empty:
        out.append(f"No calibration for {where}: final.json records its refit but calibration.csv has no rows "
                   f"of it{again}.")
    if f.get("operating_points") and _of(coll.operating_points, dataset, row).empty:
        out.append(f"No operating points for {where}: final.json records {int(f.operating_points)} but "
                   f"operating_points.csv has no rows of it{again}.")
    if f.get("variants") and _of(coll.variants, dataset, row).empty:
        out.append(f"No TTA or fold-ensemble results for {where}: final.json records {int(f.variants)} variant(s) "
                   f"but test_variants.csv has no rows of it{again}.")
    ext = coll.externals
    if not ext.empty:
        theirs = ext[(ext.dataset == dataset) & (ext.study == row.study) & (entry_keys(ext) == str(f.entry))]
        if len(theirs) and _of(ext, dataset, row).empty:
            out.append(f"No external validation for {where}: external/ holds rows of entry {f.entry} that do not "
                       f"match its trial; run `bench evaluate` on its run directory again.")
    return out


def roc_marks(coll: Collection, dataset: str, row: Any, split: str) -> list[RocMark]:
    """The operating points as reached on ``split`` ("cv" or "test"), to mark on that split's ROC curve."""
    rows = _of(coll.operating_points, dataset, row)
    if rows.empty:
        return []
    classes = coll.classes(dataset)
    rows = rows[(rows.split == split) & rows["class"].isin(classes)]
    return [RocMark(classes.index(r["class"]), float(r.specificity), float(r.sensitivity),
                    f"{r.point} (t = {r.threshold:.3f}): sens {f3(r.sensitivity)}, spec {f3(r.specificity)}")
            for _, r in rows.iterrows()]
