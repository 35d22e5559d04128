"""Does the default pruner pay? The same search with and without it, side by side.

Runs `bench run --space smoke --trials 12 --folds 3` (same seed, same data) once per pruner and
prints, for each: trials pruned, wall time and the best cross-validation objective, then the
ratios against `--pruner none`. Targets (issue "Numbers you can publish"): >= 25% of trials
pruned, <= 0.7x the wall time, best objective within 0.02. Ratios, not absolute times: this
machine is shared and noisy, so the script prints what it measured and asserts nothing.

    python scripts/bench_pruning.py                       # the real X-rays in tests/data/pneumonia
    python scripts/bench_pruning.py --dataset pneumonia-demo --trials 12 --pruners median none
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO / "tests" / "data" / "pneumonia"  # the 976 real X-rays shipped with the tests


def run_search(dataset: str, pruner: str, trials: int, folds: int, seed: int, space: str, out: Path) -> float:
    cmd = [sys.executable, "-m", "bench", "run", "--dataset", dataset, "--space", space, "--trials", str(trials),
           "--folds", str(folds), "--seed", str(seed), "--pruner", pruner, "--no-final", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"bench run --pruner {pruner} failed ({done.returncode}):\n{done.stdout[-3000:]}")
    return wall


def summarize(out: Path) -> dict[str, float]:
    """Trials pruned, the best CV objective, and where the training time went: a pruned trial still
    pays its model's build and first (tracing) epoch, which pruning cannot save."""
    import pandas as pd

    trials = pd.read_csv(out / "trials.csv")
    folds = pd.read_csv(out / "folds.csv")
    complete = trials[trials.state == "COMPLETE"]
    fixed = folds.seconds_build.sum() + folds.seconds_first_epoch.sum()
    return {"trials": len(trials), "pruned": int((trials.state == "PRUNED").sum()),
            "best": float(complete.value.max()) if len(complete) else float("nan"),
            "best_trial": int(complete.loc[complete.value.idxmax(), "number"]) if len(complete) else -1,
            "best_backbone": str(complete.loc[complete.value.idxmax(), "backbone"]) if len(complete) else "-",
            "epochs": int(folds.epochs_run.sum()),
            "fit_s": round(float(folds.seconds_fit.sum() + folds.seconds_build.sum()), 1),
            "build_and_first_epoch_s": round(float(fixed), 1)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(SHARED))
    p.add_argument("--space", default="smoke")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pruners", nargs="+", default=["median", "none"], help="the last one is the reference")
    p.add_argument("--csv", type=Path, default=REPO / "scripts" / "results" / "bench_pruning.csv")
    p.add_argument("--keep", type=Path, help="keep the run directories here (default: a temporary folder)")
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as scratch:
        tmp = str(args.keep or scratch)
        # One image cache for every arm: the first arm must not pay decoding the others reuse.
        os.environ.setdefault("BENCH_CACHE", str(Path(tmp) / "cache"))
        for pruner in args.pruners:
            out = Path(tmp) / pruner
            wall = run_search(args.dataset, pruner, args.trials, args.folds, args.seed, args.space, out)
            rows.append({"pruner": pruner, "wall_s": round(wall, 1), **summarize(out)})
            print(f"{pruner}: {rows[-1]}", flush=True)
    ref = rows[-1]
    for row in rows:
        row["pruned_share"] = round(row["pruned"] / max(row["trials"], 1), 3)
        row["wall_ratio"] = round(row["wall_s"] / ref["wall_s"], 3)
        row["best_delta"] = round(row["best"] - ref["best"], 4)
    from tabulate import tabulate

    print(f"\n{args.trials}-trial `{args.space}` search, {args.folds} folds, seed {args.seed}, on {args.dataset}; "
          f"ratios against --pruner {ref['pruner']}")
    print(tabulate(rows, headers="keys", tablefmt="github"))
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    tmp_csv = args.csv.with_suffix(".csv.tmp")
    with open(tmp_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp_csv, args.csv)
    print(f"written to {args.csv}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
