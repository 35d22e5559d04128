"""Bench's held-out result beside the published one: the leaderboard's literature table.

For a dataset whose registry entry names a baseline table (``baselines = { table = ... }``,
recorded in the run manifest), the leaderboard section gains one table: each leaderboard
model's held-out test AUC and accuracy with their bootstrap CIs (over patients where the dataset
has patient ids, the caption says which), then the published rows of ``bench/data/baselines/<table>.csv``
exactly as the paper prints them, with the citation, the metric definitions both sides share, and
one line on how the published recipes differ from bench's.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.data import baselines as published
from bench.report.cells import Table, best_mask, ci, count, slug
from bench.report.collect import Collection
from bench.report.facts import resampled, split_facts
from bench.report.tables import held_out_rows

METRICS = (("auc", "test AUC"), ("accuracy", "test ACC"))
OFFICIAL_RULE = "official test split"


def definitions(binary: bool) -> str:
    """The metrics as bench computes them, which are MedMNIST's evaluator's (``getAUC``, ``getACC``)."""
    if binary:
        return ("AUC: ROC AUC of the positive class's score; ACC: the positive class's score thresholded at 0.5 "
                "(the argmax of two softmax outputs, the same decision)")
    return ("AUC: one-vs-rest ROC AUC of each class, unweighted mean over the classes (macro); ACC: argmax of the "
            "class scores")


def _bench_rows(coll: Collection, dataset: str, board: pd.DataFrame) -> list[dict[str, Any]]:
    tm = coll.test_metrics
    if tm.empty:
        return []
    default_size = (coll.manifest(dataset).get("cache") or {}).get("size")
    rows = []
    for r in board.itertuples(index=False):
        sub = held_out_rows(coll, dataset, r)
        if sub.empty:
            continue
        row: dict[str, Any] = {
            "dataset": dataset, "kind": "bench", "method": f"bench: {r.backbone} ({r.study} #{r.trial})",
            "image_size": (coll.configs.get((dataset, r.study, int(r.trial))) or {}).get("size", default_size),
            "n_images": int(sub.n_images.iloc[0]) if "n_images" in sub else math.nan,
            "n_units": int(sub.n_units.iloc[0]) if "n_units" in sub else math.nan,
            "unit": str(sub.unit.iloc[0]) if "unit" in sub else None,
            "source": "this report: refit on train + val, scored once on the held-out test split",
            "citation": "",
        }
        for m, _ in METRICS:
            x = sub[sub.metric == m]
            row[m] = float(x.value.iloc[0]) if len(x) else math.nan
            row[f"{m}_low"] = float(x.low.iloc[0]) if len(x) and "low" in x else math.nan
            row[f"{m}_high"] = float(x.high.iloc[0]) if len(x) and "high" in x else math.nan
        rows.append(row)
    return rows


def _published_rows(dataset: str, found: tuple[published.Baseline, ...]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for b in found:
        row = rows.setdefault(b.method, {
            "dataset": dataset, "kind": "published", "method": b.method, "image_size": b.image_size,
            "n_images": math.nan, "n_units": math.nan, "unit": None, "source": f"as reported: {b.source}",
            "citation": b.citation,
            **{k: math.nan for m, _ in METRICS for k in (m, f"{m}_low", f"{m}_high")},
        })
        row[b.metric] = b.value  # published without a CI: low/high stay empty
    return list(rows.values())


def recipe_note(found: tuple[published.Baseline, ...]) -> str | None:
    """One line: how the published rows were trained (where the paper says), against bench's recipe."""
    by_recipe: dict[str, list[str]] = {}
    for b in found:
        if b.recipe and b.method not in by_recipe.setdefault(b.recipe, []):
            by_recipe[b.recipe].append(b.method)
    if not by_recipe:
        return None
    theirs = "; ".join(f"{_and(methods)} were trained {recipe}" for recipe, methods in by_recipe.items())
    return (f"Training recipes differ: the published {theirs} (as the paper describes); bench's rows are the "
            f"configuration its search chose (backbone, pretrained weights or not, augmentation, epochs), refit on "
            f"the official train + val images.")


def _and(words: list[str]) -> str:
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} and {words[-1]}"


def baselines_section(coll: Collection, dataset: str, board: pd.DataFrame) -> tuple[Table, list[str], list[str]] | None:
    """``(table, paragraphs, notes)`` for a dataset with published baselines, else None."""
    ref = (coll.manifest(dataset).get("dataset") or {}).get("baselines")
    if not ref:
        return None
    found = published.for_dataset(ref["table"], ref["dataset"])
    if not found:
        return None
    classes = coll.classes(dataset)
    ours = _bench_rows(coll, dataset, board)
    data = pd.DataFrame(ours + _published_rows(dataset, found))
    for column in ("image_size", "n_images", "n_units"):  # whole numbers, empty where unknown (also in the CSV)
        data[column] = pd.to_numeric(data[column], errors="coerce").astype("Int64")
    citations = list(dict.fromkeys(b.citation for b in found))
    sources = ", ".join(dict.fromkeys(b.source for b in found))
    n_test = split_facts(coll, dataset)["test_images"]
    display = pd.DataFrame({
        "method": data.method,
        "image size": ["-" if pd.isna(x) else f"{int(x)} px" for x in data.image_size],
        **{label: [ci(v, lo, hi) for v, lo, hi in zip(data[m], data[f"{m}_low"], data[f"{m}_high"])]
           for m, label in METRICS},
        "test images": [count(x) for x in data.n_images],
        "source": data.source,
    })
    bold = best_mask(data, display, {label: (m, "max") for m, label in METRICS})
    over = resampled(data.n_units, data.unit, data.n_images)
    caption = (f"The official test split ({count(n_test)} images): bench's leaderboard models, each refit and scored "
               f"once (95% CI by {over}), beside the published results of {sources}, copied as reported (the paper "
               f"gives no CI). Same metric definitions on both sides, MedMNIST's evaluator's: "
               f"{definitions(len(classes) == 2)}. Best per column in bold. Published: {' '.join(citations)}")
    table = Table(slug("literature", dataset), f"{dataset}: beside the literature", caption, data, display, bold,
                  terminal=True)
    paragraphs = [text for text in (recipe_note(found),) if text]
    notes = []
    if not ours:
        notes.append(f"No held-out result for {dataset} yet, so only the published rows are shown: `bench final` "
                     f"refits each backbone's best trial and scores it on the official test split.")
    rule = split_facts(coll, dataset)["rule"]
    if rule != OFFICIAL_RULE:
        notes.append(f"bench's held-out set here is not the official test split (split rule: {rule}), so its numbers "
                     f"are not comparable with the published ones.")
    return table, paragraphs, notes
