"""Does the default pruner pay? Anytime curves over seeds, against no pruning at equal wall time.

Runs `bench run --space smoke --trials 12 --folds 3` once per pruner and per seed (same data, one
image cache for all) and writes, next to each other under scripts/results/:

    bench_pruning.csv              one row per (pruner, seed): trials, pruned, wall time, best CV
                                   objective, and the reference's (`--pruner none`) best at the
                                   same wall time as this arm's end (equal budget, not equal trials)
    bench_pruning_curves.csv       the anytime curve: best CV objective so far vs wall time
    bench_pruning_groups.csv       trials and the share pruned per pruning group (entry + training
                                   shape, what the pruner compares within)
    bench_pruning_best_configs.csv per seed and backbone: the best trial's configuration under each
                                   pruner, and whether pruning changed it
    bench_pruning.png              the anytime curves, each seed thin, the mean over seeds thick

A pruner is judged by these curves, never by "same best" when the best was a start-up trial.
Ratios and curves, not absolute times: this machine is shared and noisy, so the script prints what
it measured and asserts nothing.

    python scripts/bench_pruning.py                       # 3 seeds, the real X-rays in tests/data/pneumonia
    python scripts/bench_pruning.py --dataset pneumonia-demo --seeds 0 --trials 3 --folds 2 \\
        --prefix /tmp/pruning/bench_pruning               # a check that it runs
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO / "tests" / "data" / "pneumonia"  # the 976 real X-rays shipped with the tests


def run_search(dataset: str, pruner: str, trials: int, folds: int, seed: int, space: str, out: Path) -> tuple[dt.datetime, float]:
    """Run one arm; returns its launch time (Optuna's clock: naive local time) and wall seconds."""
    cmd = [sys.executable, "-m", "bench", "run", "--dataset", dataset, "--space", space, "--trials", str(trials),
           "--folds", str(folds), "--seed", str(seed), "--pruner", pruner, "--no-final", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launch = dt.datetime.now()
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = (dt.datetime.now() - launch).total_seconds()
    if done.returncode != 0:
        sys.exit(f"bench run --pruner {pruner} --seed {seed} failed ({done.returncode}):\n{done.stdout[-3000:]}")
    return launch, wall


def load_trials(out: Path) -> list[Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = f"sqlite:///{out / 'study.db'}"
    (name,) = optuna.get_all_study_names(url)
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


from bench.search.pruners import GROUP_ATTR  # noqa: E402  (after the repository is on the path)


def group_label(group: dict[str, Any] | None) -> str:
    if not group:
        return "(no group recorded)"
    return (f"{group['entry']} | {group['epochs']} ep, head {group['head_epochs']}, {group['schedule']}, "
            f"warm-up {group['warmup_epochs']}")


def anytime(trials: list[Any], launch: dt.datetime) -> list[tuple[float, float]]:
    """(seconds since launch, best CV objective so far) at every trial's end, in order of ending."""
    ended = sorted((t for t in trials if t.datetime_complete is not None), key=lambda t: t.datetime_complete)
    best, curve = float("nan"), []
    for t in ended:
        if t.state.name == "COMPLETE" and t.value is not None and not (t.value <= best):
            best = float(t.value)
        curve.append((round((t.datetime_complete - launch).total_seconds(), 2), best))
    return curve


def best_at(curve: list[tuple[float, float]], seconds: float) -> float:
    """The best objective a curve had reached by ``seconds`` (NaN before its first complete trial)."""
    reached = [best for t, best in curve if t <= seconds]
    return reached[-1] if reached else float("nan")


def time_to_reach(curve: list[tuple[float, float]], target: float) -> float:
    """Seconds until a curve first reached ``target`` (NaN if it never did): the issue's goal reads the
    pruned arm's time to the unpruned arm's final best, as a share of the unpruned arm's wall time."""
    return next((t for t, best in curve if best >= target), float("nan"))


def summarize(out: Path, trials: list[Any]) -> dict[str, Any]:
    """Trials pruned, the best CV objective, and where the training time went: a pruned trial still
    pays its model's build and first (tracing) epoch, which pruning cannot save."""
    import pandas as pd

    folds = pd.read_csv(out / "folds.csv")
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value) if complete else None
    return {"trials": len(trials), "pruned": sum(t.state.name == "PRUNED" for t in trials),
            "best": float(best.value) if best else float("nan"),
            "best_trial": best.number if best else -1,
            "best_backbone": (best.user_attrs.get("config") or {}).get("backbone", "-") if best else "-",
            "epochs": int(folds.epochs_run.sum()),
            "fit_s": round(float(folds.seconds_fit.sum() + folds.seconds_build.sum()), 1),
            "build_and_first_epoch_s": round(float(folds.seconds_build.sum() + folds.seconds_first_epoch.sum()), 1)}


def group_shares(pruner: str, seed: int, trials: list[Any]) -> list[dict[str, Any]]:
    counts: dict[str, list[int]] = {}
    for t in trials:
        if t.state.name in ("COMPLETE", "PRUNED"):
            n = counts.setdefault(group_label(t.user_attrs.get(GROUP_ATTR)), [0, 0])
            n[0] += 1
            n[1] += t.state.name == "PRUNED"
    return [{"pruner": pruner, "seed": seed, "group": g, "trials": n, "pruned": p, "pruned_share": round(p / n, 3)}
            for g, (n, p) in sorted(counts.items())]


def best_configs(seed: int, arms: dict[str, list[Any]], reference: str) -> list[dict[str, Any]]:
    """Per backbone, each arm's best complete trial; ``changed`` when an arm's differs from the
    reference's (the trial's own seed aside), ``missing`` when either has none of that backbone."""
    def config(t: Any) -> dict[str, Any]:
        return {k: v for k, v in (t.user_attrs.get("config") or {}).items() if k != "seed"}

    best: dict[str, dict[str, Any]] = {}
    for pruner, trials in arms.items():
        for t in trials:
            if t.state.name != "COMPLETE":
                continue
            backbone = config(t).get("backbone", "-")
            mine = best.setdefault(backbone, {}).get(pruner)
            if mine is None or t.value > mine.value:
                best[backbone][pruner] = t
    rows = []
    for backbone, by_arm in sorted(best.items()):
        ref = by_arm.get(reference)
        for pruner in arms:
            if pruner == reference:
                continue
            mine = by_arm.get(pruner)
            flag = "missing" if mine is None or ref is None else str(config(mine) != config(ref)).lower()
            rows.append({"seed": seed, "backbone": backbone, "pruner": pruner, "changed": flag,
                         "value": mine.value if mine else None, "reference_value": ref.value if ref else None,
                         "config": json.dumps(config(mine), sort_keys=True) if mine else "",
                         "reference_config": json.dumps(config(ref), sort_keys=True) if ref else ""})
    return rows


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    from bench.atomic import write_atomic

    if not rows:
        return

    def write(f: Any) -> None:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    write_atomic(path, write)
    print(f"written to {path}")


def plot(path: Path, curves: dict[tuple[str, int], list[tuple[float, float]]], title: str) -> None:
    """Each seed's step curve thin; the mean over seeds (on a common time grid, from the time
    every seed had a complete trial) thick."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np


    fig, ax = plt.subplots(figsize=(7, 4.2))
    pruners = sorted({p for p, _ in curves}, key=lambda p: p == "none")
    for i, pruner in enumerate(pruners):
        color = f"C{i}"
        mine = [c for (p, _), c in curves.items() if p == pruner and c]
        for c in mine:
            ax.step([t for t, _ in c], [b for _, b in c], where="post", color=color, alpha=0.3, lw=1)
        end = max(t for c in mine for t, _ in c) if mine else 0
        grid = np.linspace(0, end, 200)
        mean = np.array([np.mean([best_at(c, s) for c in mine]) for s in grid]) if mine else grid * np.nan
        ax.plot(grid, mean, color=color, lw=2.5, label=f"--pruner {pruner} (mean of {len(mine)} seeds)")
    ax.set_xlabel("wall time since launch (s)")
    ax.set_ylabel("best CV objective so far")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


def save_figure(fig: Any, path: Path) -> None:
    """Lay out, write atomically as PNG, close."""
    import matplotlib.pyplot as plt

    from bench.atomic import atomic_path

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    print(f"written to {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default=str(SHARED))
    p.add_argument("--space", default="smoke")
    p.add_argument("--trials", type=int, default=12)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pruners", nargs="+", default=["median", "none"], help="the last one is the reference")
    p.add_argument("--prefix", type=Path, default=REPO / "scripts" / "results" / "bench_pruning",
                   help="output files are <prefix>.csv, <prefix>_curves.csv, ..., <prefix>.png")
    p.add_argument("--keep", type=Path, help="keep the run directories here (default: a temporary folder)")
    args = p.parse_args()
    reference = args.pruners[-1]
    rows, curve_rows, groups, configs = [], [], [], []
    curves: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-pruning-") as scratch:
        tmp = Path(args.keep or scratch)
        # One image cache for every arm: the first arm must not pay decoding the others reuse.
        os.environ.setdefault("BENCH_CACHE", str(tmp / "cache"))
        for seed in args.seeds:
            arms: dict[str, list[Any]] = {}
            for pruner in args.pruners:
                out = tmp / f"{pruner}-seed{seed}"
                launch, wall = run_search(args.dataset, pruner, args.trials, args.folds, seed, args.space, out)
                arms[pruner] = trials = load_trials(out)
                curves[(pruner, seed)] = curve = anytime(trials, launch)
                curve_rows += [{"pruner": pruner, "seed": seed, "seconds": t, "best": b} for t, b in curve]
                groups += group_shares(pruner, seed, trials)
                rows.append({"pruner": pruner, "seed": seed, "wall_s": round(wall, 1), **summarize(out, trials)})
                print(f"{pruner} seed {seed}: {rows[-1]}", flush=True)
            configs += best_configs(seed, arms, reference)
    for row in rows:
        ref = next(r for r in rows if r["pruner"] == reference and r["seed"] == row["seed"])
        row["pruned_share"] = round(row["pruned"] / max(row["trials"], 1), 3)
        row["wall_ratio"] = round(row["wall_s"] / ref["wall_s"], 3)
        row["best_delta"] = round(row["best"] - ref["best"], 4)
        # Equal budget: what the reference had found by the time this arm ended.
        row["reference_best_at_same_wall"] = best_at(curves[(reference, row["seed"])], row["wall_s"])
        # Time to the reference's final best, as a share of the reference's whole run (goal: <= 0.7).
        reached = time_to_reach(curves[(row["pruner"], row["seed"])], ref["best"])
        row["time_to_reference_best_share"] = round(reached / ref["wall_s"], 3) if reached == reached else float("nan")
    from tabulate import tabulate

    title = (f"{args.trials}-trial `{args.space}` search, {args.folds} folds, seeds {args.seeds}, "
             f"on {Path(args.dataset).name}; against --pruner {reference}")
    print(f"\n{title}")
    print(tabulate(rows, headers="keys", tablefmt="github"))
    print("\nShare pruned per group:")
    print(tabulate(groups, headers="keys", tablefmt="github"))
    print("\nBest configuration per backbone, changed by pruning?")
    print(tabulate([{k: v for k, v in r.items() if "config" not in k} for r in configs], headers="keys",
                   tablefmt="github"))
    prefix = args.prefix
    prefix.parent.mkdir(parents=True, exist_ok=True)
    write_csv(prefix.with_name(prefix.name + ".csv"), rows)
    write_csv(prefix.with_name(prefix.name + "_curves.csv"), curve_rows)
    write_csv(prefix.with_name(prefix.name + "_groups.csv"), groups)
    write_csv(prefix.with_name(prefix.name + "_best_configs.csv"), configs)
    plot(prefix.with_name(prefix.name + ".png"), curves, title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
