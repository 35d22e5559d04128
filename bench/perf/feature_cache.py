"""``bench perf`` row: a frozen trial on cached features against the backbone run every epoch.

The same cross-validated trial (EfficientNet-Lite0, fully frozen, no augmentation, 128 px) three
times in one process: with an empty feature cache (building it is part of the time), with the
cache off (``BENCH_FEATURE_CACHE_GB=0``: the ordinary path, the backbone every epoch) and with the
warm cache. Early stopping is off so that every run trains the same number of epochs. The
feature cache lives in a temporary folder: the user's cache is neither read nor filled.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.environment import temporary_env
from bench.perf._registry import PerfOptions, PerfRow, register_perf

NAME = "feature_cache"
WARM_TARGET, COLD_TARGET = 25.0, 8.0  # issue 24's targets (the first round's: 20x, 5x)


def _weights(backbone: str) -> tuple[str | None, str]:
    """ImageNet weights when this machine has them, else random init, and the note saying which."""
    from bench.models import get_backbone, imagenet_path

    local = imagenet_path(get_backbone(backbone))
    if local is not None:
        return str(local), "ImageNet weights"
    return None, ("random init: no ImageNet file here (`bench weights convert efficientnet_lite0` makes it); "
                  "the ratio is the same work, the scores are not meaningful")


@register_perf(NAME)
def feature_cache(options: PerfOptions) -> list[PerfRow]:
    from bench.results import FEATURES_CACHED, FEATURES_COMPUTED, RunDir
    from bench.training import features
    from bench.training.experiment import cross_validate, prepare_data
    from bench.training.train import TrainConfig

    # Quick: the same code path on a small backbone, small images and one epoch, for tests.
    backbone, size, folds, epochs = ("simple_cnn", 32, 2, 1) if options.quick else ("efficientnet_lite0", 128, 3, 10)
    weights, weights_note = (None, "random init (quick)") if options.quick else _weights(backbone)
    data = prepare_data(options.dataset, folds=folds, size=size, seed=options.seed)
    config = TrainConfig(backbone=backbone, weights=weights, size=size, unfrozen=0, augment="none", epochs=epochs,
                         early_stopping=0, seed=options.seed)
    seconds: dict[str, float] = {}
    scores: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-perf-") as tmp:
        # In run order: the cold run pays the process's first-use costs, which favours the baseline.
        for run, budget in (("cold", None), ("computed", "0"), ("warm", None)):
            env = {"BENCH_CACHE": str(Path(tmp) / "cache")}
            if budget is not None:
                env[features.BUDGET_ENV] = budget
            with temporary_env(env):
                rundir = RunDir.create(Path(tmp) / "runs", "perf", tag=run)
                t0 = time.perf_counter()
                result = cross_validate(data, config, rundir)
                seconds[run] = time.perf_counter() - t0
            taken = set(rundir.table("folds").features)
            expected = {FEATURES_COMPUTED if run == "computed" else FEATURES_CACHED}
            if taken != expected:
                raise RuntimeError(f"perf {NAME}: the {run} run took the {taken} path, not {expected}")
            scores[run] = float(np.mean([s.metrics.get("balanced_accuracy", np.nan) for s in result]))
        nbytes = sum(p.stat().st_size for p in (Path(tmp) / "cache" / "features").glob("*.npy"))
    what = (f"frozen {backbone} trial, {size} px, {len(data.index)} images of {data.spec.name}, "
            f"{folds} folds x {epochs} epochs")
    note = (f"{weights_note}; balanced accuracy computed {scores['computed']:.3f}, cached {scores['warm']:.3f}; "
            f"cache {nbytes / 2**20:.1f} MiB")
    rows = []
    for run, target, how in (("warm", WARM_TARGET, "cached features, warm cache"),
                             ("cold", COLD_TARGET, "cached features, building the cache")):
        row = PerfRow(NAME, what, "backbone every epoch", how, seconds["computed"], seconds[run],
                      target=f">= {target:g}x", note=note)
        rows.append(replace(row, met=bool(row.ratio >= target)))
    return rows
