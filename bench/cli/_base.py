"""What every command shares: the ``Command`` base class, the consoles, and the argument groups
that several commands take (data settings, --mlflow, --by, explanation methods, --no-verify)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bench.cli.argtypes import (
    at_least,
    factors,
    fraction,
    operating_point,
    positive_int,
    whole,
)
from bench.data.spec import DEDUPE_MODES, DEFAULT_NEAR_THRESHOLD, OFFICIAL_TEST_POLICIES
from bench.errors import ConfigError


class Command:
    name = ""
    help = ""
    # Commands that load TensorFlow in this process: its C++ lines go to a log file (bench.environment).
    native_log = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


def stdout_console():
    from rich.console import Console

    # Rich falls back to 80 columns when piped (CI, logs); tables of citations need more.
    console = Console()
    return console if console.is_terminal else Console(width=160)


def stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def quiet_frameworks() -> None:
    """Before keras is imported: default backend, fewer TensorFlow start-up lines."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def unfrozen_arg(value: str) -> int | str:
    if value == "all":
        return value
    try:
        depth = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'all' or a number of blocks, got {value!r}") from None
    if depth < 0:
        raise argparse.ArgumentTypeError(f"must be 'all' or a number of blocks >= 0, got {value}")
    return depth


def weights_arg(value: str) -> str | None:
    return None if value.lower() in ("none", "random", "") else value


def add_data_arguments(parser: argparse.ArgumentParser, dataset_required: bool = True) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--dataset", required=dataset_required,
                   help="registry name (`bench datasets`) or a class-per-folder path")
    g.add_argument("--size", type=positive_int, help="image side in pixels (default: the dataset's image_size)")
    g.add_argument("--resize", choices=["squash", "pad", "crop"], help="how images become square (default: the dataset's)")
    g.add_argument("--folds", type=at_least(2), help="cross-validation folds (default: the dataset's `folds` in "
                                                  "datasets.toml, else 5)")
    g.add_argument("--seed", type=whole, default=0, help="seed for splits, initialisation and shuffling")
    g.add_argument("--test-fraction", type=fraction, help="held-out fraction when the dataset has no official test split")
    g.add_argument("--group-regex", help="regex on file names whose first group is the patient id (overrides the registry)")
    g.add_argument("--group-column", metavar="COLUMN",
                   help="the manifest column holding patient ids (overrides the registry; without it a folder's "
                        "manifest.csv uses a column named like patient, patient_id, subject, case, group or video)")
    g.add_argument("--official-test", choices=OFFICIAL_TEST_POLICIES, default="clean",
                   help="clean (default): images whose patient (or duplicate group) also has images in the official "
                        "test set leave the CV pool; as-published: keep them (the report warns)")
    g.add_argument("--validation", default="kfold", metavar="PROTOCOL",
                   help="kfold (default: --folds folds), holdout[:FRACTION] (one stratified, group-aware split of "
                        "the CV pool, default 0.2) or official (the dataset's published validation split)")
    g.add_argument("--min-class-images", type=whole, default=0, metavar="N",
                   help="leave out classes with fewer than N images in the CV pool (their test images too)")
    g.add_argument("--strict", action="store_true",
                   help="fail on unreadable images instead of skipping them, and on identical images filed "
                        "under different labels instead of warning")
    g.add_argument("--dedupe", choices=DEDUPE_MODES, default="exact",
                   help="exact (default): identical images share a group for splitting; near: near-copies too "
                        "(perceptual hashes within --near-threshold under small shifts and crops; see `bench audit`)")
    g.add_argument("--near-threshold", type=int, default=DEFAULT_NEAR_THRESHOLD, metavar="BITS",
                   help=f"Hamming distance of the 256-bit perceptual hash (the closest of a few shifted and "
                        f"cropped windows) up to which two images are near-copies (default {DEFAULT_NEAR_THRESHOLD})")
    g.add_argument("--registry", type=Path, help="another datasets.toml")


def data_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The data options of ``add_data_arguments`` as ``prepare_data`` (and ``DataSettings``) keywords."""
    from bench.data.near import check_threshold

    if args.min_class_images < 0:
        raise ConfigError(f"--min-class-images must be 0 (keep every class) or more, got {args.min_class_images}.")
    return dict(dataset=args.dataset, folds=args.folds, seed=args.seed, resize=args.resize, strict=args.strict,
                group_regex=args.group_regex, group_column=args.group_column, registry=str(args.registry) if args.registry else None,
                test_fraction=args.test_fraction, official_test=args.official_test,
                min_class_images=args.min_class_images, dedupe=args.dedupe,
                near_threshold=check_threshold(args.near_threshold), validation=args.validation)


def check_run_place(out: Path | None, runs_dir: Path | None = None) -> None:
    """Before any decoding or training: the run directory (``--out``, else under ``--runs-dir`` or
    BENCH_RUNS) can be written. Found out only when the results are written, the work is lost."""
    from bench import paths
    from bench.atomic import check_writable

    if out is not None:
        check_writable(out, "--out", "Give another --out, a folder you can write to.", folder=True)
    elif runs_dir is not None:
        check_writable(runs_dir, "--runs-dir", "Give another --runs-dir, or --out.", folder=True)
    else:
        check_writable(paths.runs_dir(), "the runs folder (BENCH_RUNS, else ./runs)",
                       "Set BENCH_RUNS to a folder you can write to, or give --out.", folder=True)


def add_mlflow(parser: Any, what: str) -> None:
    from bench.search.tracking import ENV, INSTALL

    parser.add_argument("--mlflow", metavar="URI",
                        help=f"log {what} to this MLflow tracking store: file:///path/mlruns (or a folder), "
                             f"sqlite:///mlflow.db, http://host:5000 (default: {ENV}; needs `{INSTALL}`)")


def mlflow_uri(args: argparse.Namespace) -> str | None:
    """``--mlflow`` (or BENCH_MLFLOW_URI), checked now: mlflow installed, the store writable or the
    server answering; a ConfigError naming the fix otherwise, before any training."""
    from bench.search import tracking

    uri = tracking.resolve_uri(args.mlflow)
    return tracking.check(uri) if uri else None


def explanation_methods() -> list[str]:
    from bench.deploy.explainers import METHODS

    return list(METHODS)


def add_explain_method(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    parser.add_argument(flag, choices=explanation_methods(), default="gradcam", metavar="METHOD", help=help)


def add_by(parser: argparse.ArgumentParser, help: str) -> None:
    from bench.evaluation.grouping import DEFAULT_BY

    parser.add_argument("--by", type=factors, default=DEFAULT_BY, metavar="PARAM[,PARAM...]", help=help)



def add_held_out_options(parser: argparse.ArgumentParser, title: str) -> None:
    """``--operating-point``, ``--tta`` and ``--ensemble``: what a held-out evaluation scores beside each
    refit, for ``bench final`` and for the one at the end of ``bench run`` alike."""
    from bench.evaluation.variants import ENSEMBLES, TTA_SETS

    v = parser.add_argument_group(title)
    v.add_argument("--operating-point", type=operating_point, action="append", default=[], metavar="sens=X|spec=X",
                   help="a threshold reaching this sensitivity or specificity, chosen on the out-of-fold CV "
                        "predictions and applied unchanged to the test set (repeatable; multiclass: one per "
                        "class, one-vs-rest)")
    v.add_argument("--tta", default="none", choices=list(TTA_SETS),
                   help="test-time augmentation: flip = identity + horizontal flip; flip-hv adds the vertical "
                        "and both flips (images without an up)")
    v.add_argument("--ensemble", default="none", choices=list(ENSEMBLES),
                   help="folds: also train the best trial on every CV fold as CV did and average the fold models")


def add_no_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-verify", action="store_true",
                        help="skip checking the model file's sha256 and the card's binding digest (for a model or "
                             "card you changed on purpose); size, outputs and backbone are still checked")


def warn_no_verify(args: argparse.Namespace) -> None:
    """--no-verify is an override: say so every time, so a forgotten flag in a script is seen."""
    if getattr(args, "no_verify", False):
        stderr_console().print("[yellow]warning:[/] --no-verify: the model file's sha256 and its card's binding are "
                               "not checked; the predictions are only as right as the card beside the model.",
                               highlight=False, soft_wrap=True)


def list_unreadable(unreadable: list[tuple[str, str]]) -> None:
    if not unreadable:
        return
    from rich.markup import escape

    err = stderr_console()
    err.print(f"[yellow]{len(unreadable)} unreadable image(s) skipped:[/]", highlight=False)
    for path, reason in unreadable:
        err.print(f"  {escape(path)}: {escape(reason)}", highlight=False, soft_wrap=True)


