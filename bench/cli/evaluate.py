"""Commands that evaluate a search's winners: ``bench final``, ``bench evaluate``, ``bench rescore``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.cli._base import (
    Command,
    add_by,
    add_explain_method,
    add_held_out_options,
    add_mlflow,
    explanation_methods,
    mlflow_uri,
    quiet_frameworks,
    stdout_console,
)
from bench.cli.argtypes import at_least, positive_int


class FinalCommand(Command):
    name = "final"
    help = "Refit each backbone's best configuration on all training data and score it once on the held-out test set."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--run", type=Path, required=True, help="a run directory of bench run (or bench cv)")
        parser.add_argument("--backbone", action="append", help="only this backbone (repeatable)")
        add_by(parser, "refit the best trial of each backbone (default), or of each combination of these "
                        "parameters, e.g. backbone,weights (files: models/resnet50__weights-imagenet.keras)")
        parser.add_argument("--boot", type=positive_int, default=1000, help="bootstrap resamples for the 95%% CIs")
        add_explain_method(parser, "--explain", "method of the held-out explanation grid: " +
                            ", ".join(explanation_methods()) + " (default gradcam)")
        parser.add_argument("--registry", type=Path, help="another datasets.toml")
        parser.add_argument("--storage", help="the study's storage when several machines shared it (default: the "
                                              "one the manifest records; password from BENCH_STORAGE_PASSWORD)")
        add_held_out_options(parser, "operating points and variants scored beside the refit")
        add_mlflow(parser, "each refitted model's held-out metrics, model card and model file (MLflow run "
                            "final/<backbone> in the study's experiment)")

    def run(self, args: argparse.Namespace) -> int:
        quiet_frameworks()
        from bench.evaluation.final import evaluate_run
        from bench.evaluation.variants import VariantPlan
        from bench.results import RunDir
        from bench.search.shared import shared_study

        mlflow = mlflow_uri(args)
        if mlflow:  # the experiment too, before the refit: a store that refuses it fails now, not after
            from bench.search import tracking

            run = RunDir.open(args.run)
            tracking.ensure_experiment(mlflow, tracking.experiment_name(run.manifest(), run.path))
        console = stdout_console()
        results = evaluate_run(args.run, backbones=args.backbone, n_boot=args.boot, console=console,
                               registry=args.registry, study=shared_study(RunDir.open(args.run), args.storage),
                               operating_points=args.operating_point,
                               by=args.by, explain=args.explain,
                               variants=VariantPlan(tta=args.tta, ensemble=args.ensemble))
        if mlflow:
            from bench.search.tracking import log_final

            log_final(mlflow, args.run, results, say=console.print)
        return 0


# ---- bench evaluate -------------------------------------------------------------------------
class EvaluateCommand(Command):
    name = "evaluate"
    help = "Score a run's final models on an external labelled dataset that took no part in the search."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--run", type=Path, required=True, help="a run directory after `bench final`")
        parser.add_argument("--dataset", required=True,
                            help="registry name or class-per-folder path with the run's classes (by name)")
        parser.add_argument("--group-regex", help="regex on file names whose first group is the patient id")
        parser.add_argument("--registry", type=Path, help="another datasets.toml")
        parser.add_argument("--backbone", action="append", help="only this backbone's model (repeatable)")
        parser.add_argument("--boot", type=positive_int, default=1000, help="bootstrap resamples for the 95%% CIs")
        parser.add_argument("--drop-overlap", action="store_true",
                            help="leave out images identical to the run's and images of the run's patients "
                                 "(default: score them, warn and record it)")
        from bench.evaluation.variants import TTA_SETS

        parser.add_argument("--tta", default="none", choices=list(TTA_SETS),
                            help="average each prediction over these flips, the ones `bench final --tta` scored "
                                 "(flip: the image and its horizontal mirror); recorded in summary.json")

    def run(self, args: argparse.Namespace) -> int:
        quiet_frameworks()
        from bench.evaluation.external import evaluate_external

        evaluate_external(args.run, args.dataset, group_regex=args.group_regex, registry=args.registry,
                          backbones=args.backbone, n_boot=args.boot, drop_overlap=args.drop_overlap,
                          tta=args.tta, console=stdout_console())
        return 0




# ---- bench rescore --------------------------------------------------------------------------
class RescoreCommand(Command):
    name = "rescore"
    help = "Re-score the N best trials of a search (e.g. a hold-out search) by full k-fold cross-validation."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--run", type=Path, required=True, help="the search's run directory")
        parser.add_argument("--top", type=positive_int, default=3, help="how many of the best trials (default 3)")
        parser.add_argument("--folds", type=at_least(2), default=5, help="k of the k-fold CV (default 5)")

    def run(self, args: argparse.Namespace) -> int:
        quiet_frameworks()
        from bench.evaluation.rescore import COMPARISON, rescore

        console = stdout_console()

        def on_trial(row: dict[str, Any]) -> None:
            kfold = "failed" if row["kfold_mean"] is None else f"{row['kfold_mean']:.3f} ± {row['kfold_std']:.3f}"
            console.print(f"trial {row['trial']} ({row['backbone']}): {row['search_protocol']} {row['search_value']:.3f}"
                          f" -> {args.folds}-fold CV {kfold}", highlight=False)

        out = rescore(args.run, args.top, args.folds, on_trial=on_trial)
        console.print(f"k-fold scores in {out.path} ({COMPARISON}); `bench report --run {out.path}` ranks on them")
        return 0
