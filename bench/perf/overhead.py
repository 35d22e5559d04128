"""fold_overhead: what a fold after the first still pays before it trains at full speed.

The search builds and compiles a model once per trial and resets it per fold, so after the first
fold nothing should be traced again: each later fold's first epoch should cost about what its
later epochs cost. The row compares the two (issue target: within 1.3x) and gives the fixed
seconds per fold (first epoch minus a later epoch). It runs ``cross_validate``, the path every
search trial takes, so it measures whatever that path does today.

``scripts/bench_fold_overhead.py`` answers the question before this one (a model rebuilt per fold
vs one compiled model reused); smoke_search's naive side rebuilds per fold too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from bench.perf._registry import PerfOptions, PerfRow, register_perf

TARGET = 1.3


@register_perf("fold_overhead")
def fold_overhead(options: PerfOptions) -> list[PerfRow]:
    from bench.results import RunDir
    from bench.training.experiment import cross_validate, prepare_data
    from bench.training.train import TrainConfig

    # Quick: the same path with a backbone that traces in seconds, not the figure.
    backbone, size, folds, epochs = ("simple_cnn", 32, 2, 2) if options.quick else ("mobilenet_v2", 64, 3, 3)
    data = prepare_data(options.dataset, folds=folds, seed=options.seed, size=size)
    # No early stopping: every fold must run its later epochs to compare against.
    config = TrainConfig(backbone=backbone, size=size, epochs=epochs, augment="light", early_stopping=0,
                         seed=options.seed)
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        scores = cross_validate(data, config, RunDir.create(Path(tmp), options.dataset))
    later = [s.info for s in scores[1:] if s.info["epochs_run"] >= 2]
    if not later:
        raise RuntimeError(f"no fold after the first ran 2+ epochs: {[s.status for s in scores]}")
    first = float(np.mean([i["seconds_first_epoch"] for i in later]))
    rest = float(np.mean([(i["seconds_fit"] - i["seconds_first_epoch"]) / (i["epochs_run"] - 1) for i in later]))
    fold1 = scores[0].info
    return [PerfRow(
        measurement="fold_overhead",
        what=f"{backbone} {size} px, augment light, {folds} folds x {epochs} epochs on {options.dataset}: "
             f"first epoch of folds 2..{folds} vs their later epochs (ratio = first / later)",
        baseline=f"first epoch, folds 2..{folds}",
        bench="later epochs",
        baseline_value=first,
        bench_value=rest,
        target=f"<= {TARGET}x",
        met=first / rest <= TARGET if rest > 0 else None,
        note=f"fixed {first - rest:.2f} s per fold after the first; fold 1: build {fold1['seconds_build']:.1f} s, "
             f"first epoch {fold1['seconds_first_epoch']:.1f} s",
    )]
