"""Commands that train and search: ``bench cv``, ``bench run``, ``bench status``."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from bench import __version__, paths
from bench.cli._base import (
    Command,
    add_by,
    add_data_arguments,
    add_held_out_options,
    add_mlflow,
    check_run_place,
    data_settings,
    mlflow_uri,
    quiet_frameworks,
    stderr_console,
    stdout_console,
    unfrozen_arg,
    weights_arg,
)
from bench.cli.argtypes import below_one, duration, positive_float, positive_int, whole
from bench.errors import ConfigError


class CVCommand(Command):
    name = "cv"
    help = "Train and score one configuration by stratified, patient-aware k-fold cross-validation."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_data_arguments(parser, dataset_required=False)
        r = parser.add_argument_group("re-run a search trial exactly")
        r.add_argument("--from-trial", type=whole, metavar="N", help="trial number of the search in --run")
        r.add_argument("--run", type=Path, help="the search's run directory (with --from-trial)")
        g = parser.add_argument_group("model and training")
        g.add_argument("--backbone", default="mobilenet_v2", help="backbone name (`bench backbones`)")
        g.add_argument("--weights", type=weights_arg, default=None, help="imagenet, none (default) or a weights file")
        g.add_argument("--unfrozen", type=unfrozen_arg, default="all", help="blocks to fine-tune: 0 = frozen features, 'all' (default)")
        g.add_argument("--epochs", type=positive_int, default=10)
        g.add_argument("--lr", type=positive_float, default=1e-3)
        g.add_argument("--batch-size", type=positive_int, default=32)
        g.add_argument("--optimizer", default="adam", help="adam, adamw, sgd, rmsprop")
        g.add_argument("--augment", default="light", help="none, light, medium, heavy")
        g.add_argument("--dropout", type=below_one, default=0.2)
        g.add_argument("--label-smoothing", type=below_one, default=0.0)
        g.add_argument("--no-class-weights", action="store_true", help="do not weight classes by inverse frequency")
        g.add_argument("--patience", type=whole, default=5,
                       help="early-stopping patience on the inner validation split's loss (0 = off)")
        g.add_argument("--reduce-lr", type=whole, default=3,
                       help="reduce-LR-on-plateau patience on the inner validation split's loss (0 = off)")
        g.add_argument("--inner-val", type=below_one, default=0.15,
                       help="fraction of each training fold (whole patients, stratified) that early stopping "
                            "and LR reduction read; the scored fold never reaches them (default 0.15; 0 = "
                            "neither: fixed epochs at a constant rate)")
        g.add_argument("--bn-momentum", default="auto", help="'auto' (matched to steps per epoch), 'keep', or a number")
        g.add_argument("--schedule", default="plateau",
                       help="LR schedule: constant, plateau (default; patience --reduce-lr), step, exponential, cosine")
        g.add_argument("--warmup-epochs", type=whole, default=0, help="linear LR warmup from lr/10 (not with plateau)")
        g.add_argument("--head-epochs", type=whole, default=0,
                       help="two-phase fine-tuning: epochs training the head with the backbone frozen first")
        g.add_argument("--backbone-lr-scale", type=float, default=1.0,
                       help="the backbone's learning rate relative to the head's (e.g. 0.1)")
        g.add_argument("--head-layers", type=whole, default=0, help="hidden dense layers in the head (0-2)")
        g.add_argument("--head-units", type=positive_int, default=256, help="width of the head's dense layers")
        g.add_argument("--pooling", default="avg", help="avg, max or flatten (feature maps up to 8x8)")
        out = parser.add_argument_group("output")
        out.add_argument("--out", type=Path, help="run directory (default runs/<dataset>/<run-id>)")
        out.add_argument("--runs-dir", type=Path, help="parent of run directories (default BENCH_RUNS or ./runs)")

    def run(self, args: argparse.Namespace) -> int:
        quiet_frameworks()
        from bench.training.experiment import prepare_data

        t_start = time.perf_counter()
        check_run_place(args.out, args.runs_dir)
        if args.from_trial is not None:
            return self.rerun_trial(args, t_start)
        if not args.dataset:
            raise ConfigError("bench cv needs --dataset NAME|FOLDER (or --from-trial N --run DIR).")
        if args.weights is not None:  # a missing weights file fails now, not after indexing the data
            from bench.models import get_backbone, resolve_weights

            resolve_weights(get_backbone(args.backbone), args.weights)
        bn = args.bn_momentum
        if bn not in ("auto", "keep"):
            try:
                bn = float(bn)
            except ValueError:
                raise ConfigError(f"--bn-momentum must be 'auto', 'keep' or a number, got {bn!r}.") from None
        data = prepare_data(size=args.size, **data_settings(args), before_decoding=lambda size: check_shape(args, size))
        from bench.training.train import TrainConfig

        config = TrainConfig(
            backbone=args.backbone, weights=args.weights, size=data.size, unfrozen=args.unfrozen,
            lr=args.lr, batch_size=args.batch_size, epochs=args.epochs, optimizer=args.optimizer,
            augment=args.augment, dropout=args.dropout, label_smoothing=args.label_smoothing,
            class_weights=not args.no_class_weights, early_stopping=args.patience, reduce_lr=args.reduce_lr,
            inner_val=args.inner_val, bn_momentum=bn, seed=args.seed, schedule=args.schedule,
            warmup_epochs=args.warmup_epochs, head_epochs=args.head_epochs, backbone_lr_scale=args.backbone_lr_scale,
            head_layers=args.head_layers, head_units=args.head_units, pooling=args.pooling,
        )
        return run_cv_command(args, data, config, t_start)

    def rerun_trial(self, args: argparse.Namespace, t_start: float) -> int:
        from bench.results import RunDir
        from bench.training.experiment import prepare_data_from_manifest
        from bench.training.train import TrainConfig

        if args.run is None:
            raise ConfigError("--from-trial needs --run DIR, the search's run directory.")
        search = RunDir.open(args.run)
        manifest = search.manifest()
        configs = search.configs()
        if args.from_trial not in configs:
            known = ", ".join(str(n) for n in sorted(configs)[:20]) or "none"
            raise ConfigError(f"{search.file('config')} has no trial {args.from_trial} (trials: {known}).")
        config = TrainConfig(**configs[args.from_trial])  # the trial's own seed comes with it
        data = prepare_data_from_manifest(manifest, size=config.size, registry=args.registry)
        return run_cv_command(args, data, config, t_start)


def check_shape(args: argparse.Namespace, size: int) -> None:
    """The backbone's own size limits and one batch's memory, before any image is decoded."""
    from bench.models import check_fits, get_backbone

    check_fits(get_backbone(args.backbone), size, args.batch_size)


def run_cv_command(args: argparse.Namespace, data: Any, config: Any, t_start: float) -> int:
    from bench import environment
    from bench.results import RunDir
    from bench.training.experiment import cross_validate, summarize

    console = stdout_console()
    summary = data.summary()
    ds, sp = summary["dataset"], summary["split"]
    console.print(
        f"[bold]{ds['name']}[/]: {ds['images']} images, {len(ds['classes'])} classes {ds['per_class']}, "
        f"{ds['groups']} groups; skipped {len(ds['skipped'])} unreadable, {ds['duplicates']} exact duplicates grouped"
    )
    console.print(
        f"split: {sp['rule']}; held-out test {sp['test_images']} images (not used here); "
        f"{data.protocol_phrase} on {sp['cv_images']} images; image cache "
        f"{'built' if summary['cache']['built'] else 'reused'} ({summary['cache']['bytes'] / 2**20:.1f} MiB)"
    )
    for line in data.split_lines():
        console.print(line, highlight=False)
    run = RunDir.create(args.runs_dir or paths.runs_dir(), data.spec.name, out=args.out, tag="cv")
    run.write_manifest({
        "kind": "cv",
        "command": " ".join(shlex.quote(a) for a in sys.argv),
        "bench_version": __version__,
        "seeds": {"split": data.splits.seed, "train": config.seed},
        "environment": environment.describe(),
        **summary,
        "status": "running",
    })
    run.write_config(0, config.to_dict())
    data.write_splits(run)

    def on_epoch(fold: int, epoch: int, logs: dict[str, float]) -> None:
        console.print(
            f"  fold {fold + 1}/{data.splits.folds} epoch {epoch + 1}/{config.epochs}: "
            + " ".join(f"{k}={v:.4f}" for k, v in logs.items() if k in ("loss", "accuracy", "val_loss", "val_accuracy"))
        )

    def on_fold(score: Any) -> None:
        if score.status == "ok":
            m = score.metrics
            console.print(
                f"fold {score.fold + 1}: balanced accuracy {m['balanced_accuracy']:.3f}, AUC {m['auc']:.3f}, "
                f"{score.info['epochs_run']} epochs in {score.info['seconds_fit']:.1f} s"
            )
        else:
            console.print(f"[red]fold {score.fold + 1} failed: {score.status}[/]")

    try:
        with run.failed_on_error():
            scores = cross_validate(data, config, run, on_fold=on_fold, on_epoch=on_epoch)
    except KeyboardInterrupt:
        run.update_manifest(status="interrupted", seconds=round(time.perf_counter() - t_start, 1))
        console.print(f"[yellow]Interrupted; finished folds are kept in {run.path}[/]")
        return 130
    summary_table = summarize(scores)
    failed = [s for s in scores if s.status != "ok"]
    wall = time.perf_counter() - t_start
    run.update_manifest(status="complete" if not failed else "complete_with_failures", seconds=round(wall, 1))
    print_cv_tables(console, scores, summary_table, data, config)
    console.print(f"wall time {wall:.1f} s; run directory: {run.path}")
    if failed:  # a mean over the folds that survived is not the k-fold estimate asked for
        reasons = "; ".join(f"fold {s.fold + 1}: {s.status}" for s in failed)
        stderr_console().print(
            f"[red]{len(failed)} of {len(scores)} folds failed ({reasons}). The {len(scores) - len(failed)} "
            f"finished fold(s) are kept in {run.path}; the means above are over them only.[/]", highlight=False)
        return 1
    return 0


def print_cv_tables(console: Any, scores: list, summary_table: Any, data: Any, config: Any) -> None:
    from rich.table import Table

    shown = ["accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity", "mcc"]
    n_cv = int(data.splits.cv.sum())
    table = Table(title=f"{config.backbone} on {data.spec.name}: {data.splits.describe(data.group_word)}, "
                        f"scored within {n_cv} CV images (held-out test not used)")
    table.add_column("fold")
    table.add_column("images")
    for m in shown:
        table.add_column(m.replace("_", " "), justify="right")
    for s in scores:
        cells = [f"{s.metrics[m]:.3f}" for m in shown] if s.status == "ok" else ["-"] * len(shown)
        table.add_row(str(s.fold + 1), str(s.info["n_val"]), *cells)
    by_metric = summary_table.set_index("metric") if len(summary_table) else None
    if by_metric is not None and len(scores) > 1:  # one scored split (hold-out) has no spread
        table.add_row("mean ± std", str(n_cv), *[
            f"{by_metric.loc[m, 'mean']:.3f} ± {by_metric.loc[m, 'std']:.3f}" if m in by_metric.index else "-"
            for m in shown
        ], style="bold")
    console.print(table)




def _variant_plan(args: argparse.Namespace) -> Any:
    from bench.evaluation.variants import VariantPlan

    if args.no_final and (args.operating_point or args.tta != "none" or args.ensemble != "none"):
        raise ConfigError("--operating-point, --tta and --ensemble set up the held-out evaluation at the end of the "
                          "search, which --no-final skips: drop them, or --no-final (or pass them to `bench final` "
                          "later).")
    return VariantPlan(tta=args.tta, ensemble=args.ensemble)


class RunCommand(Command):
    name = "run"
    help = "Search configurations with Optuna, every trial scored by k-fold cross-validation."
    native_log = True  # preparing the search loads TensorFlow; its workers inherit the log too

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_data_arguments(parser)
        g = parser.add_argument_group("search")
        g.add_argument("--trials", type=positive_int,
                       help="finished (complete or pruned) trials in total (with --time-limit: an upper bound)")
        g.add_argument("--time-limit", type=duration, metavar="DURATION",
                       help="wall-time budget (90s, 10m, 1.5h, 2h30m) for a staged plan: probes, cached heads, "
                            "then fine-tuning of the best backbones, with the held-out evaluation's time reserved; "
                            "a resumed search continues the same clock (docs/searching.md)")
        g.add_argument("--space", default="default", help="a search space file, or 'default' / 'smoke'")
        g.add_argument("--sampler", default="tpe", help="tpe (default), random, cmaes, gp, grid")
        from bench.search.allocation import ALLOCATIONS, DEFAULT_ALLOCATION
        from bench.search.pruners import DEFAULT_PRUNER

        g.add_argument("--allocation", default=DEFAULT_ALLOCATION, choices=list(ALLOCATIONS),
                       help="how trials are shared among the leaderboard's entries: "
                            + "; ".join(f"{k}: {v.help}" for k, v in ALLOCATIONS.items()))
        add_by(g, "with --allocation balanced: the categorical parameters an entry is (default backbone; "
                  "e.g. backbone,augment balances every combination)")
        g.add_argument("--pruner", default=DEFAULT_PRUNER,
                       help="none (default: measured, no pruner reached the unpruned best sooner), median (cuts a "
                            "trial below its group's median on an epoch or a fold), halving, wilcoxon (fold "
                            "scores only; acts at 5+ folds)")
        g.add_argument("--engine", default="optuna", choices=["optuna", "kerastuner"],
                       help="optuna (default), or kerastuner to compare search strategies on the same folds")
        g.add_argument("--tuner", default="hyperband", help="with --engine kerastuner: hyperband, bayesian, random")
        g.add_argument("--storage", help="SQLAlchemy URL (postgresql://...), journal:FILE, or a .db/.log file; "
                                         "default: study.db in the run directory")
        g.add_argument("--study", help="study name (default <dataset>-<space>)")
        g.add_argument("--jobs", type=positive_int, default=1, help="worker processes on this machine (one per GPU with GPUs)")
        g.add_argument("--timeout", type=positive_float, help="stop starting trials after this many seconds")
        g.add_argument("--trial-timeout", type=positive_float, help="fail a trial that runs longer than this many seconds")
        g.add_argument("--max-failures", type=positive_int, default=10, help="stop after this many failed trials")
        g.add_argument("--precision", default="float32", help="float32, mixed_float16 (GPU), mixed_bfloat16")
        g.add_argument("--heartbeat", type=positive_int, default=30, help="seconds between a worker's heartbeats")
        g.add_argument("--no-final", action="store_true",
                       help="skip the held-out evaluation when the search ends (run `bench final` later)")
        add_held_out_options(parser, "the held-out evaluation when the search ends (as bench final's)")
        add_mlflow(g, "each trial (an MLflow run in the experiment named after the study) and the held-out "
                       "evaluation that follows the search")
        out = parser.add_argument_group("output")
        out.add_argument("--out", type=Path, help="run directory (default runs/<dataset>/<study>)")
        out.add_argument("--runs-dir", type=Path, help="parent of run directories (default BENCH_RUNS or ./runs)")

    def run(self, args: argparse.Namespace) -> int:
        quiet_frameworks()
        check_run_place(args.out, args.runs_dir)
        if args.trials is None and args.time_limit is None:
            raise ConfigError("bench run needs a budget: --trials N (finished trials), or --time-limit DURATION "
                              "(e.g. --time-limit 10m), or both (--trials then caps the trials).")
        if args.time_limit is not None and args.engine == "kerastuner":
            raise ConfigError("--time-limit runs Optuna's staged plan; --engine kerastuner has none. Use --trials "
                              "with --engine kerastuner, or --engine optuna with --time-limit.")
        from bench.search.staged import UNBOUNDED_TRIALS

        options = dict(
            trials=args.trials or UNBOUNDED_TRIALS, space=args.space, size=args.size, **data_settings(args), storage=args.storage, study=args.study, out=args.out, runs_dir=args.runs_dir,
            sampler=args.sampler, pruner=args.pruner, jobs=args.jobs, timeout=args.timeout,
            trial_timeout=args.trial_timeout, max_failures=args.max_failures, heartbeat=args.heartbeat,
            grace=max(3 * args.heartbeat, 10), precision=args.precision, final=not args.no_final,
            operating_points=tuple(args.operating_point), variants=_variant_plan(args),
            allocation=args.allocation, by=tuple(args.by),
        )
        from bench.search.storage import redact_command

        options["command"] = redact_command(sys.argv)
        options["mlflow"] = mlflow_uri(args)
        if options["mlflow"] and args.engine == "kerastuner":
            raise ConfigError("--mlflow logs trials through Optuna's MLflow callback, which --engine kerastuner does "
                              "not use. Drop --mlflow (and log the held-out evaluation afterwards with `bench final "
                              "--run DIR --mlflow URI`), or use --engine optuna.")
        if args.engine == "kerastuner":
            from bench.search.kerastuner import run_kerastuner

            return run_kerastuner(options, tuner=args.tuner, console=stdout_console())
        from bench.search.runner import SearchOptions, run_search

        if args.time_limit is not None:
            from bench.search.staged import run_staged_search

            return run_staged_search(SearchOptions(**options), stdout_console(), args.time_limit)
        return run_search(SearchOptions(**options), stdout_console())




# ---- bench status ---------------------------------------------------------------------------
class StatusCommand(Command):
    name = "status"
    help = "List the studies in a storage: trials by state, best value, best per backbone."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--storage", help="storage URL or file (default: every study.db under the runs folder)")
        parser.add_argument("--runs-dir", type=Path, help="where to look for study.db files (default BENCH_RUNS or ./runs)")

    def run(self, args: argparse.Namespace) -> int:
        from bench.search.status import print_status

        return print_status(stdout_console(), args.storage, args.runs_dir or paths.runs_dir())
