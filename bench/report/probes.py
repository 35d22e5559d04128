"""The report's "probes" table: ``bench probe``'s linear probes and kNN per backbone x size.

Like MedMNIST+'s table of training schemes x resolutions: each row a backbone, a size and a
probe on frozen, pooled features, with the CV mean ± std over the same folds a search uses, the
held-out test with its bootstrap CI, and the seconds it took. Reads ``Collection.probes`` (the
probes.csv of every run of kind "probe").
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from bench.report.cells import LABELS, Table, ci, pm, slug
from bench.report.collect import Collection

SECOND_METRIC = "auc"  # shown beside the objective: a threshold-free view of the same probe


def display_frame(rows: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One line per backbone x size x probe (also what `bench probe` prints)."""
    shown = list(dict.fromkeys((metric, SECOND_METRIC)))
    keys = ["backbone", "size", "weights", "probe"]
    lines = []
    for key, sub in rows.groupby(keys, sort=False):
        by_metric = sub.set_index("metric")
        line: dict[str, Any] = dict(zip(keys, key))
        line["size"] = f"{int(line['size'])} px"
        for m in shown:
            name = LABELS.get(m, m)
            if m in by_metric.index:
                r = by_metric.loc[m]
                line[f"CV {name} (mean ± std)"] = pm(r.cv_mean, r.cv_std)
                line[f"held-out {name} [95% CI]"] = ci(r.test, r.test_low, r.test_high)
            else:
                line[f"CV {name} (mean ± std)"] = line[f"held-out {name} [95% CI]"] = "-"
        first = sub.iloc[0]
        line["seconds (features + probe)"] = f"{first.seconds_features:.1f} + {first.seconds_probe:.1f}"
        lines.append(line)
    return pd.DataFrame(lines)


def probes_table(coll: Collection, dataset: str) -> Table | None:
    probes = coll.probes
    if probes.empty:
        return None
    mine = probes[probes.dataset == dataset]
    if mine.empty:
        return None
    metric = coll.objective(dataset)["metric"]
    mine = mine.sort_values(["backbone", "probe", "size"], kind="stable")
    display = display_frame(mine, metric)
    first = mine.iloc[0]
    runs = ", ".join(f"`{r}`" for r in dict.fromkeys(mine.run))
    unit = f", bootstrap over {int(first.n_units)} {first.unit}" if isinstance(first.unit, str) and first.unit else ""
    caption = (f"`bench probe` ({runs}): each backbone's frozen output, global-average-pooled, scored by a linear "
               f"probe (standardised features, logistic regression with balanced class weights, C chosen on the "
               f"inner split of each training fold by log loss) and by kNN (k = 11, cosine). CV: mean ± std over "
               f"{int(first.folds)} folds of {int(first.n_cv)} images, the folds a search of these data settings "
               f"uses; held-out: {int(first.n_test)} test images{unit}. Seconds: building the backbone and building "
               f"or loading its cached features (shared by both probes of a row's backbone and size), then the "
               f"probe's fits over every fold and the held-out fit.")
    skipped = [line for r in coll.runs_of(dataset) if r.kind == "probe"
               for line in (r.manifest.get("probe") or {}).get("skipped", [])]
    if skipped:
        caption += " Not probed: " + "; ".join(dict.fromkeys(skipped)) + "."
    data = mine.drop(columns=[c for c in ("_order",) if c in mine])
    return Table(slug("probes", dataset), f"{dataset}: probes on frozen features", caption, data, display,
                 terminal=True)


def probe_only(coll: Collection, dataset: str) -> bool:
    """Whether every run of the dataset is a probe run (its missing leaderboard is then no problem)."""
    return all(r.kind == "probe" for r in coll.runs_of(dataset))
