"""The probe stage of a ``--time-limit`` search: ``bench probe`` on the space's ImageNet backbones,
in a process of its own (the supervisor never imports the framework), into the run's probes.csv.

The scores and costs come back through the study's user attributes, so a resumed search skips
the stage and the workers' cost model reads each backbone's forward pass from them.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.results import RunDir

PROBE_BOOT = 200  # the probes' held-out CIs: the search only ranks on their CV scores


def _probe_main(data_kwargs: dict[str, Any], size: int, backbones: Sequence[str], run_dir: str, seed: int) -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench.environment import native_stderr_to_log
    from bench.evaluation.probe import probe_all
    from bench.training.experiment import DataBySize, prepare_data

    try:
        with native_stderr_to_log():
            data = prepare_data(**data_kwargs, size=size)
            probe_all(DataBySize(data), [(b, size) for b in backbones], RunDir.open(Path(run_dir)),
                      weights="imagenet", n_boot=PROBE_BOOT, seed=seed,
                      say=lambda text: print(f"  probe: {text}", flush=True))
    except BenchError as err:
        print(f"error: {err}", file=sys.stdout)
        sys.exit(2)


def run_probe_stage(ctx: Any, data_kwargs: dict[str, Any], size: int, backbones: Sequence[str], run: RunDir,
                    seed: int) -> int:
    process = ctx.Process(target=_probe_main, args=(data_kwargs, size, list(backbones), str(run.path), seed),
                          name="bench-probe")
    process.start()
    process.join()
    return int(process.exitcode or 0)


def probe_records(run: RunDir, metric: str, maximize: bool, size: int) -> tuple[dict[str, float], dict[str, Any]]:
    """From probes.csv at ``size``: per backbone, the best probe's CV score of ``metric``, and the cost
    record of its forward pass (``seconds_features`` over ``images`` images at ``size``)."""
    table = run.table("probes")
    if not len(table):
        return {}, {}
    rows = table[(table["metric"] == metric) & (table["size"] == size)]
    scores: dict[str, float] = {}
    costs: dict[str, Any] = {}
    for backbone, group in rows.groupby("backbone", sort=False):
        values = [float(v) for v in group["cv_mean"] if math.isfinite(float(v))]
        if values:
            scores[str(backbone)] = max(values) if maximize else min(values)
        first = group.iloc[0]
        images = int(first["n_cv"]) + int(first["n_test"])
        costs[str(backbone)] = {"seconds_features": float(first["seconds_features"]), "images": images,
                                "size": int(size)}
    return scores, costs
