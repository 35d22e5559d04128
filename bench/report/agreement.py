"""Does the held-out set (or an external set) agree with cross-validation?

CV chooses the configuration and the held-out set scores it once. When the two disagree, the reader
should know: on a chest X-ray set whose official test split came from another collection, a
from-scratch CNN scored 0.967 in CV and 0.752 [0.720, 0.784] on the test set while a pretrained
network scored 0.961 and 0.884, so CV ranked them the wrong way round. Two checks, per dataset:

- **An entry outside its CV range.** A held-out estimate should land where CV's own folds landed:
  within the CV mean ± 2 standard deviations of the fold scores (each fold is itself a held-out
  estimate on a similar number of images). An entry is flagged when its whole held-out 95% CI lies
  outside that range, so neither the fold spread nor the held-out set's own uncertainty explains it.
- **Rankings that disagree.** Every pair of entries that CV orders one way and the held-out set the
  other is listed, with whether the held-out CIs overlap (a swap within overlapping CIs is within
  the held-out set's noise; one between separated CIs is not), beside both rankings.

What it suggests is stated, not acted on: `bench final` and `bench export` keep choosing by CV,
since choosing by the test set would leak it into the choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from bench.report.cells import Table, ci, isnan, pm, slug

SPREAD = 2.0  # fold standard deviations either side of the CV mean that a held-out estimate may land in

AGREES, BELOW, ABOVE, RANK = "agrees", "below CV range", "above CV range", "rank differs"


@dataclass(frozen=True)
class Swap:
    """CV orders ``first`` above ``second``; the other set orders them the other way."""

    first: str
    second: str
    separated: bool  # the two held-out CIs do not overlap


def _better(a: float, b: float, maximize: bool) -> bool:
    return a > b if maximize else a < b


def compare(board: pd.DataFrame, values: pd.DataFrame, maximize: bool) -> tuple[pd.DataFrame, list[Swap]]:
    """Per entry of ``board`` (``key``, ``objective_value`` = CV mean, ``cv_std``) with a value in
    ``values`` (``key``, ``value``, ``low``, ``high``): ranks, the CV range and the verdict; and the
    pairs whose order the two disagree on."""
    rows = board[["key", "objective_value", "cv_std"]].merge(values, on="key", how="inner")
    rows = rows[rows.value.notna() & rows.objective_value.notna()].reset_index(drop=True)
    if rows.empty:
        return rows, []
    asc = not maximize
    rows["cv_rank"] = rows.objective_value.rank(ascending=asc, method="min").astype(int)
    rows["set_rank"] = rows.value.rank(ascending=asc, method="min").astype(int)
    std = rows.cv_std.fillna(0.0)
    rows["cv_range_low"] = rows.objective_value - SPREAD * std
    rows["cv_range_high"] = rows.objective_value + SPREAD * std
    swaps = []
    for i, a in rows.iterrows():
        for _, b in rows.iloc[i + 1:].iterrows():
            if a.objective_value == b.objective_value or a.value == b.value:
                continue
            cv_a = _better(a.objective_value, b.objective_value, maximize)
            if cv_a != _better(a.value, b.value, maximize):
                first, second = (a, b) if cv_a else (b, a)
                separated = bool(first.high < second.low or second.high < first.low)
                swaps.append(Swap(str(first.key), str(second.key), separated))
    swapped = {k for s in swaps for k in (s.first, s.second)}
    verdicts = []
    for r in rows.itertuples(index=False):
        if r.high < r.cv_range_low:
            verdicts.append(BELOW)
        elif r.low > r.cv_range_high:
            verdicts.append(ABOVE)
        else:
            verdicts.append(RANK if r.key in swapped else AGREES)
    rows["verdict"] = verdicts
    return rows, swaps


def held_out_values(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard's own held-out columns, as ``compare`` reads them."""
    if "test_value" not in board:
        return pd.DataFrame(columns=["key", "value", "low", "high"])
    return pd.DataFrame({"key": board.key, "value": board.test_value, "low": board.test_low, "high": board.test_high})


def flags(board: pd.DataFrame, metric: str, maximize: bool) -> dict[str, str]:
    """The leaderboard's "held-out vs CV" column: each entry's verdict (empty without a held-out value)."""
    rows, _ = compare(_with_std(board, metric), held_out_values(board), maximize)
    return dict(zip(rows.key, rows.verdict)) if len(rows) else {}


def _with_std(board: pd.DataFrame, metric: str) -> pd.DataFrame:
    std = board[f"cv_{metric}_std"] if f"cv_{metric}_std" in board else pd.Series(math.nan, index=board.index)
    return board.assign(cv_std=pd.to_numeric(std, errors="coerce"))


def _pair_text(swaps: list[Swap], name: str) -> str:
    parts = [f"CV ranks {s.first} above {s.second}, the {name} the other way round "
             f"({'the ' + name + ' CIs do not overlap' if s.separated else 'within overlapping ' + name + ' CIs'})"
             for s in swaps]
    return "; ".join(parts)


def agreement_table(dataset: str, board: pd.DataFrame, metric: str, maximize: bool, *,
                    values: pd.DataFrame | None = None, name: str = "held-out set",
                    n_images: object = None) -> tuple[Table | None, str | None]:
    """The two rankings side by side, and a sentence saying what a disagreement suggests (None when
    they agree). ``values`` default to the leaderboard's held-out columns; an external set passes
    its own with its ``name``."""
    rows, swaps = compare(_with_std(board, metric), held_out_values(board) if values is None else values, maximize)
    if len(rows) == 0:
        return None, None
    shown = rows.sort_values(["cv_rank", "key"])
    display = pd.DataFrame({
        "entry": shown.key,
        "CV rank": shown.cv_rank.astype(str),
        "CV mean ± std": [pm(a, b) for a, b in zip(shown.objective_value, shown.cv_std)],
        f"{name} rank": shown.set_rank.astype(str),
        f"{name} [95% CI]": [ci(a, b, c) for a, b, c in zip(shown.value, shown.low, shown.high)],
        f"{name} vs CV": shown.verdict,
    }).reset_index(drop=True)
    data = shown.assign(dataset=dataset, metric=metric, set=name)[
        ["dataset", "set", "metric", "key", "cv_rank", "objective_value", "cv_std", "cv_range_low", "cv_range_high",
         "set_rank", "value", "low", "high", "verdict"]].rename(columns={"objective_value": "cv_mean"})
    if n_images is None and values is None and "test_images" in board and board.test_images.notna().any():
        n_images = board.test_images.dropna().iloc[0]
    images = "" if n_images is None or isnan(n_images) else f" ({int(n_images):,} images)"
    caption = (f"{dataset}: the CV ranking (mean of the folds' {metric}) beside the ranking on the {name}{images}. "
               f"'{BELOW}' / '{ABOVE}': the entry's whole {name} 95% CI lies outside its CV mean ± {SPREAD:g} fold "
               f"standard deviations; '{RANK}': CV and the {name} order it differently against another entry.")
    table = Table(f"agreement_{slug(dataset)}_{slug(name)}", f"{dataset}: CV against the {name}", caption, data, display)
    outside = [f"{r.key} ({r.verdict})" for r in rows.itertuples(index=False) if r.verdict in (BELOW, ABOVE)]
    if not swaps and not outside:
        return table, None
    said = []
    if outside:
        said.append(f"on the {name}, {', '.join(outside)}: further from CV than the folds' spread and the "
                    f"{name}'s own interval allow")
    if swaps:
        said.append(_pair_text(swaps, name))
    if outside or any(s.separated for s in swaps):
        text = (f"CV and the {name} disagree on {dataset}: {'; '.join(said)}. This suggests the {name} is "
                f"distributed differently from the CV pool (another site, scanner or collection period), so the "
                f"configuration CV chose may not transfer. bench still chooses by CV: choosing by the {name} "
                f"would leak it into the choice.")
    else:
        text = (f"CV and the {name} order some entries of {dataset} differently: {'; '.join(said)}. Their {name} "
                f"intervals overlap, so the swap is within the {name}'s own noise{images}; a larger or external "
                f"set would tell. bench still chooses by CV.")
    return table, text


def agreement_section(builder: Any, dataset: str, board: pd.DataFrame) -> None:
    """Under the leaderboard: CV against the held-out set, and what a disagreement suggests."""
    objective = builder.coll.objective(dataset)
    metric, maximize = objective["metric"], objective.get("direction", "maximize") == "maximize"
    table, text = agreement_table(dataset, board, metric, maximize)
    if table is None:
        return
    builder.table(table)
    if text:
        builder.note(text)  # a finding about the data, not a part of the report that is missing
