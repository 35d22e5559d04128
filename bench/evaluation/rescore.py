"""``bench rescore``: the best trials of a cheap search, scored again by full k-fold CV.

A search under ``--validation holdout`` or ``official`` ranks its trials on one split; a
leaderboard should rest on k-fold numbers. This re-trains the ``top`` best completed trials
(best by the search's own objective) with their recorded configurations on ``folds`` folds of the
same CV pool (same dataset settings and seed, so the same held-out test set, which is checked),
and writes them as a run directory of their own inside the search's, ``rescore-k<K>/``: a
``search``-kind run whose trials keep their numbers and whose ``trials.csv`` value is the k-fold
mean, so ``bench report --run <search>/rescore-k<K>`` ranks on the k-fold numbers and names the
protocol ("K-fold CV"). The search's own files are never touched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from bench.atomic import write_text_atomic
from bench.errors import ConfigError, DataError
from bench.results import RunDir
from bench.training.experiment import (
    DataBySize,
    DataSettings,
    cross_validate,
    prepare_data,
    summarize,
)

# In the rescore run directory: per trial, the search's value (on its protocol) beside the k-fold mean.
COMPARISON = "rescore.csv"


# What the rescore run keeps of the search's manifest (the data facts are its own).
KEPT = ("objective", "study", "environment", "bench_version")


def rescore_dir(run: Path, folds: int) -> Path:
    return run / f"rescore-k{folds}"


def best_trials(run: RunDir, top: int) -> pd.DataFrame:
    """The ``top`` completed trials with the best search value (objective direction from the manifest)."""
    trials = run.table("trials")
    objective = run.manifest().get("objective")
    if trials.empty or objective is None:
        raise DataError(f"{run.path} is not a search run with finished trials (no trials.csv or objective).")
    done = trials[(trials.state == "COMPLETE") & trials.value.notna()].drop_duplicates("number", keep="last")
    if done.empty:
        raise DataError(f"{run.path}: no completed trial to re-score.")
    return done.sort_values("value", ascending=objective["direction"] != "maximize").head(top)


def rescore(run_path: Path, top: int, folds: int, *,
            on_trial: Callable[[dict[str, Any]], None] | None = None) -> RunDir:
    """Re-score the ``top`` best trials of ``run_path`` by ``folds``-fold CV; returns the new run."""
    if top < 1 or folds < 2:
        raise ConfigError(f"bench rescore needs --top >= 1 and --folds >= 2, got --top {top} --folds {folds}.")
    from bench.training.train import TrainConfig  # imports keras

    search = RunDir.open(run_path)
    manifest = search.manifest()
    chosen = best_trials(search, top)
    configs = search.configs()
    if "data" not in manifest:
        raise DataError(f"{search.file('manifest')} has no data settings (a run made before they were recorded): "
                        f"re-run the search to re-score it.")
    recorded = {k: v for k, v in manifest["data"].items() if k in DataSettings.__dataclass_fields__}
    settings = {**recorded, "validation": "kfold", "folds": folds}
    out = RunDir.create(search.path, "", out=rescore_dir(search.path, folds))
    t0 = time.perf_counter()
    metric = manifest["objective"]["metric"]
    maximize = manifest["objective"]["direction"] == "maximize"
    search_protocol = manifest["split"].get("protocol", "kfold")
    compared: list[dict[str, Any]] = []
    with out.failed_on_error():  # a crash leaves the run "failed" with its reason, not "running"
        for i, row in enumerate(chosen.itertuples()):
            number = int(row.number)
            config = TrainConfig(**configs[number])
            if i == 0:  # one set of splits for every image size, as in the search (DataBySize)
                by_size = DataBySize(prepare_data(**settings, size=config.size))
                _check_same_test_set(search, by_size.reference)
            data = by_size(config.size)
            if i == 0:
                out.write_manifest({
                    **{k: v for k, v in manifest.items() if k in KEPT},
                    **data.summary(), "kind": "search", "rescore_of": str(search.path),
                    "rescore": {"top": top, "folds": folds, "search_protocol": search_protocol},
                    "status": "running",
                })
                data.write_splits(out)
            out.write_config(number, config.to_dict())
            started = time.perf_counter()
            scores = cross_validate(data, config, out, trial=number)
            table = summarize(scores).set_index("metric")
            ok = len(scores) == folds and all(s.status == "ok" for s in scores)
            value = float(table.loc[metric, "mean"]) if ok and metric in table.index else None
            out.append_trial({
                "number": number, "state": "COMPLETE" if ok else "FAIL", "value": value, "backbone": config.backbone,
                "params": config.to_dict(), "seconds": round(time.perf_counter() - started, 1),
                "engine": "rescore",
            })
            compared.append({"trial": number, "backbone": config.backbone, "search_protocol": search_protocol,
                             "search_value": float(row.value), "kfold_folds": folds, "kfold_mean": value,
                             "kfold_std": float(table.loc[metric, "std"]) if value is not None else None})
            if on_trial:
                on_trial(compared[-1])
    frame = pd.DataFrame(compared).sort_values("kfold_mean", ascending=not maximize, na_position="last")
    write_text_atomic(out.path / COMPARISON, frame.to_csv(index=False))
    out.update_manifest(status="complete", seconds=round(time.perf_counter() - t0, 1))
    return out


def _check_same_test_set(search: RunDir, data: Any) -> None:
    """The k-fold pool must be the search's pool: same held-out test set, same images."""
    recorded = search.table("splits")
    if recorded.empty:
        return
    was = set(recorded.path[recorded.split == "test"])
    now = {p for p, t in zip(data.index.paths, data.splits.test) if t}
    if was != now:
        raise DataError(f"The dataset of {search.path} changed since the search (its held-out test set differs): "
                        f"k-fold scores would not be comparable. Re-run the search.")
