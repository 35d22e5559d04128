"""A wall-time budget: the staged plan (`bench run --time-limit`) against plain TPE (`--timeout`).

For every dataset, budget and seed, two arms search `scripts/budget_space.toml` with the same
folds and the default `--allocation balanced`:

    planned   bench run --time-limit T          probes -> cached heads -> fine-tuning -> final, all in T
    tpe       bench run --sampler tpe --timeout T   trials start until T; `bench final` runs after it,
                                                so this arm gets more wall time in total: both the
                                                search-only and the total wall time are recorded

and writes, under scripts/results/ (or --prefix):

    bench_budget.csv          one row per dataset x budget x seed x arm: wall seconds (search, total),
                              trials complete/pruned/failed/not started (the plan's gate) in all and
                              per stage (the probes too), the best CV objective and when it was
                              reached, plain TPE's final CV best and when the planned arm first
                              reached it, the held-out balanced accuracy of the final model (the
                              best trial's refit) with its CI, the best trial's backbone and config
    bench_budget_curves.csv   the anytime curve: best CV objective so far vs seconds since launch
    bench_budget.png          one figure: a panel per dataset x budget, a colour per arm, each seed thin

and prints the issue's goal per seed: the planned arm's held-out balanced accuracy at least plain
TPE's, and plain TPE's final CV best reached in at most half the budget. It asserts nothing: this
machine is shared and noisy, so it prints what it measured.

`xrays` is the 976 real X-rays in tests/data/pneumonia with Kermany's own test set (the manifest's
`kermany_split` column, through a registry entry: a folder has no official-test flag); `demo` is the
embedded `pneumonia-demo` (a seeded 20% test set). Each run is kept under <prefix>_runs/ and
reused when the script is run again, so an interrupted benchmark continues where it stopped (an
unfinished run is started again: a time budget cannot be resumed fairly).

    python scripts/bench_budget.py                        # both datasets, 20 and 40 min, seeds 0 1, 3 folds
    python scripts/bench_budget.py --side-by-side         # the same, each seed's two arms at once, a CPU each
    python scripts/bench_budget.py --datasets demo --budgets 2m --seeds 0 --folds 2 \\
        --prefix /tmp/budgetbench/bench_budget            # a check that it runs
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
# The anytime-curve helpers and the CSV writer of the pruning benchmark (it puts the repository on the path).
from bench_pruning import REPO, anytime, best_at, load_trials, save_figure, time_to_reach, write_csv

SPACE = REPO / "scripts" / "budget_space.toml"
XRAYS = REPO / "tests" / "data" / "pneumonia"
ARMS = ("planned", "tpe")
OBJECTIVE = "balanced_accuracy"
MANY_TRIALS = 100_000  # plain TPE stops on its --timeout, never on a trial count
DONE = "bench_budget_run.json"  # written into a run directory once its `bench run` has finished

# Kermany's own split on the real X-rays: the registry entry the tests use (tests/test_splits.py).
XRAYS_ENTRY = """
[xrays]
title = "The 976 real X-rays of tests/data/pneumonia, Kermany's own test set (kermany_split)"
task = "binary"
classes = ["NORMAL", "PNEUMONIA"]
positive = "PNEUMONIA"
image_size = 64
source = {{ kind = "local", path = "{root}" }}
layout = {{ kind = "manifest", file = "manifest.csv" }}
groups = {{ kind = "column", column = "patient" }}
test = {{ kind = "column", column = "kermany_split", value = "test" }}
"""


def dataset_args(dataset: str, registry: Path) -> list[str]:
    if dataset == "xrays":
        return ["--dataset", "xrays", "--registry", str(registry)]
    return ["--dataset", "pneumonia-demo"]


def arm_command(arm: str, budget: str, seed: int, folds: int, data: list[str], out: Path) -> list[str]:
    from bench.cli.argtypes import duration

    common = [sys.executable, "-m", "bench", "run", *data, "--space", str(SPACE), "--folds", str(folds),
              "--seed", str(seed), "--out", str(out)]
    if arm == "planned":  # the time is its budget; --trials would only cap it
        return [*common, "--time-limit", budget]
    return [*common, "--sampler", "tpe", "--timeout", str(round(duration(budget))), "--trials", str(MANY_TRIALS)]


def ensure_weights() -> None:
    """Lite0's ImageNet weights ship as a Python package and are converted here, offline, once;
    without them the space silently loses its transfer-learning backbone."""
    from bench.models import get_backbone
    from bench.models.weights import imagenet_path

    if imagenet_path(get_backbone("efficientnet_lite0")) is None:
        subprocess.run([sys.executable, "-m", "bench", "weights", "convert", "efficientnet_lite0"], check=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)})


def run_arm(cmd: list[str], out: Path, core: int | None = None) -> dict[str, Any]:
    """Run one arm unless a finished run is there; returns its launch time (Optuna's clock: naive local
    time) and total wall seconds, kept in the run directory so a second pass reuses them. ``core``:
    the arm runs on that CPU alone (its process tree inherits the affinity; TensorFlow sizes its
    thread pools by the CPUs it may use)."""
    done = out / DONE
    if done.exists():
        print(f"reusing {out}", flush=True)
        return json.loads(done.read_text())
    if out.exists():  # an interrupted run: its budget was cut, so it starts again
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"running: {' '.join(cmd[1:])}", flush=True)
    launch = dt.datetime.now()
    env = {**os.environ, "PYTHONPATH": str(REPO), **({"BENCH_WORKER_THREADS": "1"} if core is not None else {})}
    pin = (lambda: os.sched_setaffinity(0, {core})) if core is not None else None
    ran = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
                         preexec_fn=pin)
    wall = (dt.datetime.now() - launch).total_seconds()
    (out / "bench_run.log").write_text(ran.stdout)
    if ran.returncode != 0:
        sys.exit(f"{' '.join(cmd[1:])} failed ({ran.returncode}); its output is in {out / 'bench_run.log'}:\n"
                 f"{ran.stdout[-3000:]}")
    record = {"launch": launch.isoformat(), "total_s": round(wall, 1), "command": cmd[1:], "core": core}
    from bench.atomic import write_atomic

    write_atomic(done, lambda f: json.dump(record, f, indent=1))
    return record


def outcome(t: Any) -> str:
    """complete, pruned, fail, or not_started: the plan's gate records a trial it would not start
    (predicted not to finish in its stage) as failed with a reason; that is no failure of training."""
    if t.state.name == "FAIL" and str(t.user_attrs.get("fail_reason", "")).startswith("not started"):
        return "not_started"
    return t.state.name.lower()


def stage_counts(trials: list[Any]) -> dict[str, dict[str, int]]:
    """Trials per stage (the plan's `stage` user attribute; plain TPE's are all `search`) and outcome."""
    counts: dict[str, dict[str, int]] = {}
    for t in trials:
        stage = counts.setdefault(str(t.user_attrs.get("stage", "search")), {})
        stage[outcome(t)] = stage.get(outcome(t), 0) + 1
    return counts


def stage_text(counts: dict[str, dict[str, int]]) -> str:
    """e.g. "heads 4 complete, 1 pruned, 1 not started" per stage."""
    return "; ".join(f"{stage} " + ", ".join(f"{k} {n.get(k, 0)}".replace("_", " ") for k in
                                             ("complete", "pruned", "fail", "not_started") if n.get(k) or k == "complete")
                     for stage, n in counts.items())


def probed(out: Path) -> str:
    """The plan's probe stage is no trial: it leaves probes.csv, one row per backbone x size x probe x metric."""
    from bench.results import RunDir

    probes = RunDir.open(out).table("probes") if (out / "probes.csv").exists() else None
    return f"probe {probes.backbone.nunique()} backbone(s); " if probes is not None and len(probes) else ""


def held_out(out: Path, best_trial: int) -> dict[str, Any]:
    """The held-out balanced accuracy (bootstrap 95% CI) of the best trial's refit, as `bench report`
    reads it (test_metrics.csv): `bench final` refits the best trial of every backbone, and the
    final model of a search is the refit of its best trial overall."""
    from bench.results import RunDir

    try:
        table = RunDir.open(out).table("test_metrics")
    except (FileNotFoundError, OSError):
        table = None
    none = {"heldout_bacc": math.nan, "heldout_low": math.nan, "heldout_high": math.nan, "heldout_trial": -1}
    if table is None or table.empty:
        return none
    rows = table[(table.metric == OBJECTIVE) & (table.split == "test")]
    mine = rows[rows.trial == best_trial]
    if mine.empty:  # no refit of the best trial (the run ended before its held-out step)
        return none
    r = mine.iloc[0]
    return {"heldout_bacc": round(float(r.value), 4), "heldout_low": round(float(r.low), 4),
            "heldout_high": round(float(r.high), 4), "heldout_trial": int(r.trial)}


def summarize(out: Path, trials: list[Any], launch: dt.datetime, total_s: float, searched: list[str]) -> dict[str, Any]:
    complete = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None]
    best = max(complete, key=lambda t: t.value) if complete else None
    ended = [t.datetime_complete for t in trials if t.datetime_complete is not None]
    # The search ends with its last trial; what follows in the same process is the held-out refit.
    search_s = round((max(ended) - launch).total_seconds(), 1) if ended else math.nan
    # The trial's whole TrainConfig, cut to what the space searches: defaults would drown it.
    config = {k: v for k, v in ((best.user_attrs.get("config") or best.params) if best else {}).items() if k in searched}
    return {"search_s": search_s, "total_s": total_s,
            "final_s": round(total_s - search_s, 1) if ended else math.nan,
            "complete": len(complete), "pruned": sum(t.state.name == "PRUNED" for t in trials),
            "failed": sum(outcome(t) == "fail" for t in trials),
            "not_started": sum(outcome(t) == "not_started" for t in trials),
            "per_stage": probed(out) + stage_text(stage_counts(trials)),
            # Unrounded: the planned arm's time to reach it compares against this very number.
            "best_cv": float(best.value) if best else math.nan,
            "best_at_s": round((best.datetime_complete - launch).total_seconds(), 1) if best else math.nan,
            "best_trial": best.number if best else -1,
            "best_stage": str(best.user_attrs.get("stage", "search")) if best else "-",
            "best_backbone": config.get("backbone", "-"),
            "best_config": json.dumps(config, sort_keys=True)}


def compare(row: dict[str, Any], tpe: dict[str, Any], curve: list[tuple[float, float]]) -> dict[str, Any]:
    """Plain TPE's final CV best, when this arm first reached it, and that time as a share of the budget."""
    reached = time_to_reach(curve, tpe["best_cv"])
    if math.isnan(reached):  # never
        return {"tpe_final_cv": tpe["best_cv"], "reached_tpe_cv_s": "not reached", "reached_share_of_budget": "not reached"}
    return {"tpe_final_cv": tpe["best_cv"], "reached_tpe_cv_s": round(reached, 1),
            "reached_share_of_budget": round(reached / row["budget_s"], 3)}


def verdict(planned: dict[str, Any], tpe: dict[str, Any]) -> str:
    """The issue's goal for one seed: held-out balanced accuracy at least TPE's, and TPE's final CV
    best reached in at most half the budget."""
    held = planned["heldout_bacc"] >= tpe["heldout_bacc"]
    share = planned["reached_share_of_budget"]
    fast = isinstance(share, float) and share <= 0.5
    when = f"at {share:.0%} of the budget" if isinstance(share, float) else "never"
    return (f"{'MET' if held and fast else 'NOT MET'}: held-out bacc {planned['heldout_bacc']:.3f} vs TPE "
            f"{tpe['heldout_bacc']:.3f} ({'ok' if held else 'below'}); reached TPE's final CV best "
            f"{tpe['best_cv']:.3f} {when} ({'ok' if fast else 'needs <= 50%'})")


def plot(path: Path, curves: dict[tuple[str, str, int, str], list[tuple[float, float]]],
         budgets: dict[str, float], title: str) -> None:
    """A panel per dataset x budget; per arm a colour, each seed a thin step curve, their mean thick;
    a dotted line at the budget (plain TPE's search stops starting trials there, the plan's final is in)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np


    # One panel per dataset x budget that was run (--only may run some pairs, not the product).
    panels = sorted({(d, b) for d, b, _, _ in curves}, key=lambda p: (p[0], budgets[p[1]]))
    width = max(7.0, 4.6 * len(panels))
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 3.8), squeeze=False)
    for j, (dataset, budget) in enumerate(panels):
        ax = axes[0][j]
        for k, arm in enumerate(ARMS):
            mine = [c for (d, b, _, a), c in curves.items() if (d, b, a) == (dataset, budget, arm) and c]
            for c in mine:
                ax.step([t for t, _ in c], [v for _, v in c], where="post", color=f"C{k}", alpha=0.35, lw=1)
            if mine:
                grid = np.linspace(0, max(t for c in mine for t, _ in c), 200)
                ax.plot(grid, [np.mean([best_at(c, s) for c in mine]) for s in grid], color=f"C{k}", lw=2.2,
                        label=f"{arm} (mean of {len(mine)} seeds)")
        ax.axvline(budgets[budget], color="grey", ls=":", lw=1)
        ax.set_xlim(left=0)  # from the launch: data preparation and probes are part of the budget
        ax.set_title(f"{dataset}, budget {budget}", fontsize=9)
        ax.set_xlabel("wall time since launch (s)")
        ax.grid(alpha=0.3)
        if j == 0:
            ax.set_ylabel(f"best CV {OBJECTIVE} so far")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(textwrap.fill(title, int(width * 14)), fontsize=9)
    save_figure(fig, path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", choices=["xrays", "demo"], default=["xrays", "demo"])
    p.add_argument("--budgets", nargs="+", default=["20m", "40m"], help="wall-time budgets: 20m, 90s, 1h")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--only", nargs="+", metavar="DATASET:BUDGET",
                   help="run these dataset x budget pairs instead of every combination, e.g. xrays:20m demo:10m; "
                        "DATASET:BUDGET:SEED[,SEED] gives a pair its own seeds (else --seeds)")
    p.add_argument("--side-by-side", action="store_true",
                   help="run the two arms of a seed at the same time, each pinned to a CPU of its own (needs 2): "
                        "both see the same machine load, and the benchmark takes half the wall time")
    p.add_argument("--prefix", type=Path, default=REPO / "scripts" / "results" / "bench_budget",
                   help="output files are <prefix>.csv, <prefix>_curves.csv, <prefix>.png; runs under <prefix>_runs/")
    args = p.parse_args()

    # `bench run --time-limit`'s own reading of a budget, so both arms read it alike.
    from bench.cli.argtypes import duration

    try:
        parts = [o.split(":") for o in args.only] if args.only else [[d, b] for d in args.datasets for b in args.budgets]
        if any(len(part) not in (2, 3) or part[0] not in ("xrays", "demo") for part in parts):
            p.error(f"--only takes DATASET:BUDGET[:SEEDS] with DATASET xrays or demo, got {' '.join(args.only)}")
        pairs = [(part[0], part[1], [int(x) for x in part[2].split(",")] if len(part) == 3 else args.seeds)
                 for part in parts]
        budgets = {b: duration(b) for _, b, _ in pairs}
    except (argparse.ArgumentTypeError, ValueError) as err:
        p.error(f"--budgets or --only: {err}")
    prefix = args.prefix
    runs = prefix.with_name(prefix.name + "_runs")
    runs.mkdir(parents=True, exist_ok=True)
    registry = runs / "datasets.toml"
    from bench.atomic import write_atomic

    write_atomic(registry, lambda f: f.write(XRAYS_ENTRY.format(root=XRAYS)))
    # One image cache for every run: the first arm must not pay decoding the others reuse.
    os.environ.setdefault("BENCH_CACHE", str(runs / "cache"))
    ensure_weights()
    from bench.search.space import load_space

    searched = [param.name for param in load_space(SPACE).params]

    rows: list[dict[str, Any]] = []
    curve_rows: list[dict[str, Any]] = []
    curves: dict[tuple[str, str, int, str], list[tuple[float, float]]] = {}
    for dataset, budget, seeds in pairs:
        budget_s = budgets[budget]
        for seed in seeds:
            arms: dict[str, dict[str, Any]] = {}
            outs = {arm: runs / f"{dataset}-{budget}-seed{seed}-{arm}" for arm in ARMS}
            cmds = {arm: arm_command(arm, budget, seed, args.folds, dataset_args(dataset, registry), outs[arm])
                    for arm in ARMS}
            if args.side_by_side:
                with ThreadPoolExecutor(len(ARMS)) as pool:
                    futures = {arm: pool.submit(run_arm, cmds[arm], outs[arm], core) for core, arm in enumerate(ARMS)}
                    ran_by_arm = {arm: f.result() for arm, f in futures.items()}
            else:  # plain TPE first: the planned arm is read against it
                ran_by_arm = {arm: run_arm(cmds[arm], outs[arm]) for arm in reversed(ARMS)}
            for arm in reversed(ARMS):
                out, ran = outs[arm], ran_by_arm[arm]
                launch = dt.datetime.fromisoformat(ran["launch"])
                trials = load_trials(out)
                curve = curves[(dataset, budget, seed, arm)] = anytime(trials, launch)
                curve_rows += [{"dataset": dataset, "budget": budget, "seed": seed, "arm": arm, "seconds": t,
                                "best": b} for t, b in curve]
                summary = summarize(out, trials, launch, ran["total_s"], searched)
                arms[arm] = {"dataset": dataset, "budget": budget, "budget_s": budget_s, "seed": seed, "arm": arm,
                             "core": ran.get("core"), **summary, **held_out(out, summary["best_trial"]),
                             "_curve": curve}
            for arm in ARMS:
                arms[arm].update(compare(arms[arm], arms["tpe"], arms[arm]["_curve"]))
                print(f"{dataset} {budget} seed {seed} {arm}: "
                      f"{ {k: v for k, v in arms[arm].items() if k not in ('_curve', 'best_config')} }", flush=True)
            arms["planned"]["verdict"] = verdict(arms["planned"], arms["tpe"])
            arms["tpe"]["verdict"] = "(reference)"
            rows += [{k: v for k, v in arms[arm].items() if k != "_curve"} for arm in ARMS]

    from tabulate import tabulate

    title = (f"`bench run --time-limit` (planned) against plain TPE with --timeout, {args.folds} folds, "
             f"seeds {args.seeds}, space {SPACE.name}"
             + (", the two arms side by side on one CPU each" if args.side_by_side else ""))
    shown = ["dataset", "budget", "seed", "arm", "search_s", "total_s", "per_stage", "best_cv", "best_at_s",
             "reached_tpe_cv_s", "heldout_bacc", "heldout_low", "heldout_high", "best_backbone"]
    print(f"\n{title}")
    print("plain TPE's held-out refit runs after its --timeout: its total_s exceeds the budget, the planned "
          "arm's includes its final (search_s: to the last trial's end; total_s: the whole `bench run`).")
    print(tabulate([{k: r[k] for k in shown} for r in rows], headers="keys", tablefmt="github", floatfmt=".4g"))
    print("\nThe goal per seed (held-out bacc >= plain TPE's, and TPE's final CV best within half the budget):")
    for r in rows:
        if r["arm"] == "planned":
            print(f"  {r['dataset']} {r['budget']} seed {r['seed']}: {r['verdict']}")
    write_csv(prefix.with_name(prefix.name + ".csv"), rows)
    write_csv(prefix.with_name(prefix.name + "_curves.csv"), curve_rows)
    plot(prefix.with_name(prefix.name + ".png"), curves, budgets, title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
