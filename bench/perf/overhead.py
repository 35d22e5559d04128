"""fold_overhead: what a fold after the first still pays before it trains at full speed.

The search builds and compiles a model once per trial and resets it per fold, so after the first
fold nothing should be traced again: each later fold's first epoch should cost about what its
later epochs cost. The row compares the two (issue target: within 1.3x) and gives the fixed
seconds per fold (first epoch minus a later epoch), the median of 3 runs of 5 epochs (one run of
3 epochs read noise: a recorded 0.51x, "fixed -1.37 s per fold"). It runs ``cross_validate``, the path every
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
REPEATS = 3  # the median of this many runs: one 3-epoch run read noise (a recorded 0.51x)


def _one_run(options: PerfOptions, data: object, config: object) -> tuple[float, float, dict]:
    """(first epoch of the folds after the first, their later epochs, fold 1's info) of one run."""
    from bench.results import RunDir
    from bench.training.experiment import cross_validate

    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        scores = cross_validate(data, config, RunDir.create(Path(tmp), options.dataset))
    later = [s.info for s in scores[1:] if s.info["epochs_run"] >= 2]
    if not later:
        raise RuntimeError(f"no fold after the first ran 2+ epochs: {[s.status for s in scores]}")
    first = float(np.mean([i["seconds_first_epoch"] for i in later]))
    rest = float(np.mean([(i["seconds_fit"] - i["seconds_first_epoch"]) / (i["epochs_run"] - 1) for i in later]))
    return first, rest, scores[0].info


@register_perf("fold_overhead")
def fold_overhead(options: PerfOptions) -> list[PerfRow]:
    from bench.training.experiment import prepare_data
    from bench.training.train import TrainConfig

    # Quick: the same path with a backbone that traces in seconds, not the figure.
    backbone, size, folds, epochs, repeats = (("simple_cnn", 32, 2, 2, 1) if options.quick
                                              else ("mobilenet_v2", 64, 3, 5, REPEATS))
    data = prepare_data(options.dataset, folds=folds, seed=options.seed, size=size)
    # No early stopping: every fold must run its later epochs to compare against.
    config = TrainConfig(backbone=backbone, size=size, epochs=epochs, augment="light", early_stopping=0,
                         seed=options.seed)
    runs = [_one_run(options, data, config) for _ in range(repeats)]
    runs.sort(key=lambda run: run[0] / run[1] if run[1] > 0 else np.inf)
    ratios = [f / r for f, r, _ in runs if r > 0]
    first, rest, fold1 = runs[len(runs) // 2]  # the run with the median ratio
    fixed = float(np.median([f - r for f, r, _ in runs]))
    return [PerfRow(
        measurement="fold_overhead",
        what=f"{backbone} {size} px, augment light, {folds} folds x {epochs} epochs on {options.dataset}: "
             f"first epoch of folds 2..{folds} vs their later epochs (ratio = first / later; the median of "
             f"{repeats} run{'s' if repeats > 1 else ''})",
        baseline=f"first epoch, folds 2..{folds}",
        bench="later epochs",
        baseline_value=first,
        bench_value=rest,
        target=f"<= {TARGET}x",
        met=first / rest <= TARGET if rest > 0 else None,
        note=f"fixed cost {fixed:.2f} s per fold after the first (median; ratios "
             f"{', '.join(f'{r:.2f}x' for r in ratios)}); fold 1 of the median run: build "
             f"{fold1['seconds_build']:.1f} s, first epoch {fold1['seconds_first_epoch']:.1f} s",
    )]
