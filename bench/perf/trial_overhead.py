"""trial_overhead: the share of a search's training seconds that goes to building and tracing models.

Every trial used to build and trace its model from nothing (the pruned 12-trial smoke search:
215 of 345 training seconds), even when the same worker had just traced the same architecture.
A worker now keeps its recent trials' compiled trainers (``bench.training.pool``,
``BENCH_WORKER_MODELS``). The row runs the same search twice as a user runs it (a child process,
empty folders, the same seed, so the same trials): with the pool off (``BENCH_WORKER_MODELS=0``)
and at its default, and reads folds.csv: build + restore + first-epoch trace seconds (trace
estimated as a fold's first epoch minus the median of its later epochs), against the training
seconds (build + restore + fit) of all folds. The ratio is the fixed seconds without the pool
over those with it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from bench.perf._child import run_bench
from bench.perf._registry import PerfOptions, PerfRow, register_perf

# Quick: three 2-epoch simple_cnn trials of one architecture on 2 folds, so the pool has
# something to restore (same code paths, not the figure).
QUICK_SPACE = """\
name = "perf-trial-overhead"
[objective]
metric = "balanced_accuracy"
[params.backbone]
type = "fixed"
value = "simple_cnn"
[params.size]
type = "fixed"
value = 32
[params.epochs]
type = "fixed"
value = 2
[params.lr]
type = "float"
low = 1e-4
high = 3e-3
log = true
"""


def fixed_cost(folds: pd.DataFrame) -> tuple[float, float, int, int]:
    """(build + restore + trace seconds, training seconds, trials restored, trials built) of a run's
    folds.csv. Each distinct graph is built once whatever the pool; more builds are evictions."""
    column = lambda name: folds[name].fillna(0).sum() if name in folds else 0.0  # noqa: E731
    fixed = column("seconds_build") + column("seconds_restore") + column("seconds_trace")
    training = column("seconds_build") + column("seconds_restore") + column("seconds_fit")
    count = lambda origin: int((folds["model"] == origin).sum()) if "model" in folds else 0  # noqa: E731
    return float(fixed), float(training), count("restored"), count("built")


SHARE_TARGET = 0.20  # build + trace as a share of the search's training seconds, with the pool (issue 24)


@register_perf("trial_overhead")
def trial_overhead(options: PerfOptions) -> list[PerfRow]:
    from bench.results import RunDir
    from bench.training.pool import DEFAULT_MODELS, POOL_ENV

    trials, folds = (3, 2) if options.quick else (12, 3)
    measured = {}
    with tempfile.TemporaryDirectory(prefix="bench-perf-trials-") as tmp:
        work = Path(tmp)
        space = "smoke"
        if options.quick:
            space = str(work / "quick.toml")
            Path(space).write_text(QUICK_SPACE)
        for models in ("0", str(DEFAULT_MODELS)):
            run_path = work / f"run-{models}"
            args = ["run", "--dataset", options.dataset, "--space", space, "--trials", str(trials), "--folds",
                    str(folds), "--seed", str(options.seed), "--no-final", "--out", str(run_path)]
            home = work / f"home-{models}"
            home.mkdir()
            run_bench(args, home, env={POOL_ENV: models})
            measured[models] = fixed_cost(RunDir.open(run_path).table("folds"))
    (off, off_total, _, _), (on, on_total, restored, built) = measured["0"], measured[str(DEFAULT_MODELS)]
    share = lambda part, whole: f"{part / whole:.0%}" if whole > 0 else "n/a"  # noqa: E731
    with_pool = on / on_total if on_total > 0 else float("nan")
    return [PerfRow(
        measurement="trial_overhead",
        what=f"bench run --space {'smoke' if not options.quick else 'quick'} --trials {trials} --folds {folds} "
             f"--no-final on {options.dataset}: build + first-epoch trace seconds per search, without and with "
             f"the trainer pool (ratio = without / with)",
        baseline=f"{POOL_ENV}=0: every trial builds and traces",
        bench=f"{POOL_ENV}={DEFAULT_MODELS}: a worker restores its recent trials' trainers",
        baseline_value=off,
        bench_value=on,
        target=f"<= {SHARE_TARGET:.0%} of training s with the pool",
        met=bool(with_pool <= SHARE_TARGET),
        note=f"fixed cost {share(off, off_total)} of {off_total:.0f} training seconds without the pool, "
             f"{share(on, on_total)} of {on_total:.0f} with it ({restored} trial(s) restored a trainer, {built} "
             f"built one: a graph seen for the first time, or evicted by the pool's bound)",
    )]
