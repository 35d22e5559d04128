"""The ``bench`` command: a thin face over the rooms, built from a table of command classes.

Every user mistake surfaces as a ``BenchError``: one message on stderr, exit status 2, no
traceback. Keras/TensorFlow are imported only by the commands that train, so listing datasets
stays instant.
"""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from bench import __version__, paths
from bench.argtypes import at_least, below_one, factors, fraction, operating_point, positive_float, positive_int, whole
from bench.config import DEDUPE_MODES, DEFAULT_NEAR_THRESHOLD, OFFICIAL_TEST_POLICIES
from bench.errors import BenchError, ConfigError, DataError
from bench.variants import ENSEMBLES, TTA_SETS

COMMANDS: dict[str, type[Command]] = {}


def register_command(cls: type[Command]) -> type[Command]:
    COMMANDS[cls.name] = cls
    return cls


class Command:
    name = ""
    help = ""
    # Commands that load TensorFlow in this process: its C++ lines go to a log file (bench.quiet).
    native_log = False

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


def _console():
    from rich.console import Console

    # Rich falls back to 80 columns when piped (CI, logs); tables of citations need more.
    console = Console()
    return console if console.is_terminal else Console(width=160)


def _err_console():
    from rich.console import Console

    return Console(stderr=True)


def _quiet_frameworks() -> None:
    """Before keras is imported: default backend, fewer TensorFlow start-up lines."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# ---- bench datasets -------------------------------------------------------------------------
def _location(spec, root: Path) -> tuple[str, int | None]:
    from bench.data.images import is_image_file
    from bench.data.sources import special_source

    if (source := special_source(spec.source.kind)) is not None:  # e.g. MedMNIST npz files
        return source.location(spec)
    if not root.is_dir():
        return ("not downloaded" if spec.source.kind == "archive" else "not found"), None
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        n += sum(1 for f in filenames if is_image_file(Path(f)))
    kind = "embedded" if spec.source.kind == "embedded" else "local"
    return kind, n


@register_command
class DatasetsCommand(Command):
    name = "datasets"
    help = "List the datasets in the registry (datasets.toml) and where their data is."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--registry", type=Path, help="another datasets.toml (default: BENCH_DATASETS or the shipped one)")
        parser.add_argument("--citations", action="store_true", help="print each dataset's full citation")

    def run(self, args: argparse.Namespace) -> int:
        from rich.table import Table

        from bench.data.registry import dataset_root, registry

        specs = registry(args.registry)
        table = Table(title=f"Datasets ({args.registry or paths.registry_file()})")
        for col in ("name", "title", "task", "classes", "images", "data", "licence"):
            table.add_column(col, overflow="fold")
        for name, spec in specs.items():
            root = dataset_root(spec)
            where, found = _location(spec, root)
            images = f"{found} found" if found is not None else (f"{spec.images} expected" if spec.images else "?")
            classes = str(len(spec.classes)) if spec.classes else "from folders"
            data = f"{where}: {root}"
            table.add_row(name, spec.title, spec.task, classes, images, data, spec.license)
        console = _console()
        console.print(table)
        if args.citations:
            for name, spec in specs.items():
                console.print(f"[bold]{name}[/]: {spec.citation or '(none)'}")
        else:
            console.print("Citations: bench datasets --citations. Data folder: BENCH_DATA =", paths.data_dir())
        return 0


# ---- bench backbones ------------------------------------------------------------------------
@register_command
class BackbonesCommand(Command):
    name = "backbones"
    help = "List the registered backbones: parameters, cut points, blocks, minimum input size."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--size", type=positive_int, default=None, help="input size to build them at (default: each one's minimum, at least 64)")
        parser.add_argument("names", nargs="*", help="only these backbones")

    def run(self, args: argparse.Namespace) -> int:
        _quiet_frameworks()
        from rich.table import Table

        from bench.models import backbone_names, describe_backbone, get_backbone

        names = args.names or backbone_names()
        for n in names:
            get_backbone(n)
        table = Table(title="Backbones (built with random weights to count layers)")
        for col in ("name", "title", "params", "layers", "cut points", "blocks", "min size", "preprocessing", "ImageNet file / preset"):
            table.add_column(col)
        for name in names:
            try:
                d = describe_backbone(name, args.size)
            except ConfigError as err:  # e.g. a keras-hub ViT without keras-hub, or a size it cannot take
                spec = get_backbone(name)
                table.add_row(name, spec.title, f"[yellow]{err}[/]", "-", "-", "-", str(spec.min_size),
                              spec.preprocess, spec.imagenet_file or spec.imagenet_preset or "-")
                continue
            table.add_row(name, str(d.get("title", "")), f"{d['params']:,}", str(d["layers"]), str(d["cut_points"]),
                          str(d["blocks"]), str(d["min_size"]), str(d["preprocess"]),
                          str(d.get("imagenet_file") or d.get("imagenet_preset") or "-"))
        _console().print(table)
        return 0


# ---- bench fetch ----------------------------------------------------------------------------
@register_command
class FetchCommand(Command):
    name = "fetch"
    help = "Download and unpack a registry dataset into BENCH_DATA."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", help="dataset name from `bench datasets`")
        parser.add_argument("--registry", type=Path)
        parser.add_argument("--max-gb", type=positive_float, default=50.0, help="refuse archives that unpack to more than this")
        parser.add_argument("--size", type=positive_int, help="MedMNIST: the file of this image size (28, 64, 128, 224; "
                                                     "default: the dataset's image_size)")

    def run(self, args: argparse.Namespace) -> int:
        from bench.data.fetch import archive_path, fetch_archive
        from bench.data.registry import dataset_root, registry
        from bench.data.sources import special_source
        from bench.errors import close_matches

        specs = registry(args.registry)
        if args.name not in specs:
            raise ConfigError(f"Unknown dataset '{args.name}'.{close_matches(args.name, specs)} Run `bench datasets`.")
        spec = specs[args.name]
        if (source := special_source(spec.source.kind)) is not None:  # e.g. MedMNIST npz files
            _console().print(source.fetch(spec, size=args.size))
            return 0
        root = dataset_root(spec)
        if spec.source.kind != "archive":
            where = "is shipped inside bench" if spec.source.kind == "embedded" else f"is read from {root}"
            _console().print(f"{spec.name} {where}; there is nothing to download. {spec.notes}")
            return 0
        target = paths.data_dir() / spec.name
        if root.is_dir() and any(root.iterdir()) and not (target / ".bench-extracted").exists():
            _console().print(f"{spec.name}: {root} already holds data (unpacked by hand); nothing to download.")
            return 0
        archive = archive_path(spec.source.url, target)
        hint = (f"Download {spec.source.url} by hand (from {spec.homepage or 'its homepage'}) and unpack it into "
                f"{target} so that {root} holds the class folders, or put the archive itself at "
                f"{archive} and run `bench fetch {spec.name}` again.")
        fetch_archive(spec.source.url, spec.source.sha256, target, max_bytes=int(args.max_gb * 2**30),
                      manual_hint=hint)
        if not root.is_dir():
            raise DataError(f"{spec.name}: the archive {archive.name} was unpacked into {target}, but the registry's "
                            f"root {root} is not there. The archive holds: {_top_level(target)}. Fix `root` of "
                            f"[{spec.name}] in {args.registry or paths.registry_file()} (a path inside {target}).")
        _console().print(f"{spec.name}: ready in {root}")
        return 0


def _top_level(folder: Path, shown: int = 10) -> str:
    """What an unpacked archive holds at its top, for a message: 'a/, b/, c.txt'."""
    from bench.data.fetch import MARKER

    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name != MARKER)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return (", ".join(names[:shown]) + more) if names else "nothing"


# ---- bench weights --------------------------------------------------------------------------
@register_command
class WeightsCommand(Command):
    name = "weights"
    help = "Pretrained weight files: list, pull, export/import (air-gapped machines), convert."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from bench import weights_cli

        weights_cli.add_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        _quiet_frameworks()
        from bench import weights_cli

        return weights_cli.run(args, _console())


# ---- bench cv -------------------------------------------------------------------------------
def _unfrozen(value: str) -> int | str:
    if value == "all":
        return value
    try:
        depth = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'all' or a number of blocks, got {value!r}") from None
    if depth < 0:
        raise argparse.ArgumentTypeError(f"must be 'all' or a number of blocks >= 0, got {value}")
    return depth


def _weights(value: str) -> str | None:
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
                        "(perceptual hashes within --near-threshold; see `bench audit`)")
    g.add_argument("--near-threshold", type=int, default=DEFAULT_NEAR_THRESHOLD, metavar="BITS",
                   help=f"Hamming distance of the 256-bit perceptual hash up to which two images are near-copies "
                        f"(default {DEFAULT_NEAR_THRESHOLD})")
    g.add_argument("--registry", type=Path, help="another datasets.toml")


def data_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The data options of ``add_data_arguments`` as ``prepare_data`` (and ``DataSettings``) keywords."""
    from bench.data.near import check_threshold

    if args.min_class_images < 0:
        raise ConfigError(f"--min-class-images must be 0 (keep every class) or more, got {args.min_class_images}.")
    return dict(dataset=args.dataset, folds=args.folds, seed=args.seed, resize=args.resize, strict=args.strict,
                group_regex=args.group_regex, registry=str(args.registry) if args.registry else None,
                test_fraction=args.test_fraction, official_test=args.official_test,
                min_class_images=args.min_class_images, dedupe=args.dedupe,
                near_threshold=check_threshold(args.near_threshold), validation=args.validation)


@register_command
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
        g.add_argument("--weights", type=_weights, default=None, help="imagenet, none (default) or a weights file")
        g.add_argument("--unfrozen", type=_unfrozen, default="all", help="blocks to fine-tune: 0 = frozen features, 'all' (default)")
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
        _quiet_frameworks()
        from bench.experiment import prepare_data

        t_start = time.perf_counter()
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
        data = prepare_data(size=args.size, **data_settings(args))
        from bench.train import TrainConfig

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
        from bench.experiment import prepare_data_from_manifest
        from bench.results import RunDir
        from bench.train import TrainConfig

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


def run_cv_command(args: argparse.Namespace, data: Any, config: Any, t_start: float) -> int:
    from bench import environment
    from bench.experiment import cross_validate, summarize
    from bench.results import RunDir

    console = _console()
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
        _err_console().print(
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


# ---- bench run ------------------------------------------------------------------------------
def _add_mlflow(parser: Any, what: str) -> None:
    from bench.tracking import ENV, INSTALL

    parser.add_argument("--mlflow", metavar="URI",
                        help=f"log {what} to this MLflow tracking store: file:///path/mlruns (or a folder), "
                             f"sqlite:///mlflow.db, http://host:5000 (default: {ENV}; needs `{INSTALL}`)")


def _mlflow_uri(args: argparse.Namespace) -> str | None:
    """``--mlflow`` (or BENCH_MLFLOW_URI), checked now: mlflow installed, the store writable or the
    server answering; a ConfigError naming the fix otherwise, before any training."""
    from bench import tracking

    uri = tracking.resolve_uri(args.mlflow)
    return tracking.check(uri) if uri else None


@register_command
class RunCommand(Command):
    name = "run"
    help = "Search configurations with Optuna, every trial scored by k-fold cross-validation."
    native_log = True  # preparing the search loads TensorFlow; its workers inherit the log too

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_data_arguments(parser)
        g = parser.add_argument_group("search")
        g.add_argument("--trials", type=positive_int, required=True, help="finished (complete or pruned) trials in total")
        g.add_argument("--space", default="default", help="a search space file, or 'default' / 'smoke'")
        g.add_argument("--sampler", default="tpe", help="tpe (default), random, cmaes, gp, grid")
        g.add_argument("--pruner", default="median",
                       help="median (default: cuts a trial below the finished trials' median on an epoch or a "
                            "fold), halving, wilcoxon (fold scores only; acts at 5+ folds), none")
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
        _add_mlflow(g, "each trial (an MLflow run in the experiment named after the study) and the held-out "
                       "evaluation that follows the search")
        out = parser.add_argument_group("output")
        out.add_argument("--out", type=Path, help="run directory (default runs/<dataset>/<study>)")
        out.add_argument("--runs-dir", type=Path, help="parent of run directories (default BENCH_RUNS or ./runs)")

    def run(self, args: argparse.Namespace) -> int:
        _quiet_frameworks()
        options = dict(
            trials=args.trials, space=args.space, size=args.size, **data_settings(args), storage=args.storage, study=args.study, out=args.out, runs_dir=args.runs_dir,
            sampler=args.sampler, pruner=args.pruner, jobs=args.jobs, timeout=args.timeout,
            trial_timeout=args.trial_timeout, max_failures=args.max_failures, heartbeat=args.heartbeat,
            grace=max(3 * args.heartbeat, 10), precision=args.precision, final=not args.no_final,
        )
        from bench.search.storage import redact_command

        options["command"] = redact_command(sys.argv)
        options["mlflow"] = _mlflow_uri(args)
        if options["mlflow"] and args.engine == "kerastuner":
            raise ConfigError("--mlflow logs trials through Optuna's MLflow callback, which --engine kerastuner does "
                              "not use. Drop --mlflow (and log the held-out evaluation afterwards with `bench final "
                              "--run DIR --mlflow URI`), or use --engine optuna.")
        if args.engine == "kerastuner":
            from bench.search.kerastuner import run_kerastuner

            return run_kerastuner(options, tuner=args.tuner, console=_console())
        from bench.search.runner import SearchOptions, run_search

        return run_search(SearchOptions(**options), _console())


# ---- bench audit ----------------------------------------------------------------------------
@register_command
class AuditCommand(Command):
    name = "audit"
    help = ("Find near-duplicate images (perceptual hashes, optionally pretrained features): clusters with "
            "different labels, and clusters that straddle the CV folds or the test set a run would use.")
    native_log = True  # --features loads TensorFlow

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_data_arguments(parser)
        g = parser.add_argument_group("audit")
        g.add_argument("--features", action="store_true",
                       help="also link images whose ImageNet EfficientNet-Lite0 features are nearly parallel "
                            "(needs `bench weights convert efficientnet_lite0`; without it, hashes only)")
        g.add_argument("--min-cosine", type=fraction, default=None, metavar="C",
                       help="with --features: the cosine (of dataset-centred features) from which two images are "
                            "near-copies (default 0.95)")
        g.add_argument("--out", type=Path, metavar="DIR",
                       help="where to write near_duplicates.csv and near_duplicates.png (default reports/audit/<dataset>)")
        g.add_argument("--show", type=whole, default=10, help="clusters to list (default 10; all go to the CSV)")

    def run(self, args: argparse.Namespace) -> int:
        _quiet_frameworks()
        from rich.markup import escape
        from rich.table import Table

        from bench.audit import DEFAULT_MIN_COSINE, contact_sheet, run_audit, write_csv
        from bench.experiment import prepare_data

        t_start = time.perf_counter()
        settings = data_settings(args)
        if args.min_cosine is not None and not args.features:
            raise ConfigError("--min-cosine only applies with --features.")
        data = prepare_data(size=args.size, **settings)
        audit = run_audit(data, settings["near_threshold"],
                          min_cosine=(args.min_cosine or DEFAULT_MIN_COSINE) if args.features else None)
        out = args.out or Path("reports") / "audit" / data.spec.name
        csv_path = write_csv(audit, out / "near_duplicates.csv")
        sheet = contact_sheet(audit, out / "near_duplicates.png")
        console = _console()
        for note in audit.notes:
            console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
        sp = data.summary()["split"]
        console.print(f"{data.spec.name} at {data.size} px, split as a run would: {sp['rule']}, held-out test "
                      f"{sp['test_images']} images, {sp['folds']}-fold CV on {sp['cv_images']}", highlight=False)
        table = Table(title=f"Near-duplicate audit of {data.spec.name}", show_header=False)
        table.add_column("")
        table.add_column("", justify="right")
        for key, value in audit.counts().items():
            table.add_row(key.replace("_", " "), str(value))
        console.print(table)
        if audit.clusters and args.show:
            worst = Table(title="worst clusters (CSV numbering)")
            for col in ("#", "images", "labels", "sides", "first image"):
                worst.add_column(col, overflow="fold")
            for number, c in enumerate(audit.clusters[:args.show], start=1):
                worst.add_row(str(number), str(len(c.rows)), ("[red]" if c.conflict else "") + ", ".join(c.labels),
                              ("[red]" if c.straddles else "") + ", ".join(c.sides),
                              escape(data.index.paths[c.rows[0]]))
            console.print(worst)
        console.print(f"csv: {csv_path}" + (f"\ncontact sheet: {sheet}" if sheet else "")
                      + f"\naudit {audit.seconds:.1f} s, wall time {time.perf_counter() - t_start:.1f} s", highlight=False)
        return 0


# ---- bench final ----------------------------------------------------------------------------
def _explanation_methods() -> list[str]:
    from bench.explainers import METHODS

    return list(METHODS)


def _add_explain_method(parser: argparse.ArgumentParser, flag: str, help: str) -> None:
    parser.add_argument(flag, choices=_explanation_methods(), default="gradcam", metavar="METHOD", help=help)


def _add_by(parser: argparse.ArgumentParser, help: str) -> None:
    from bench.grouping import DEFAULT_BY

    parser.add_argument("--by", type=factors, default=DEFAULT_BY, metavar="PARAM[,PARAM...]", help=help)


@register_command
class FinalCommand(Command):
    name = "final"
    help = "Refit each backbone's best configuration on all training data and score it once on the held-out test set."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--run", type=Path, required=True, help="a run directory of bench run (or bench cv)")
        parser.add_argument("--backbone", action="append", help="only this backbone (repeatable)")
        _add_by(parser, "refit the best trial of each backbone (default), or of each combination of these "
                        "parameters, e.g. backbone,weights (files: models/resnet50__weights-imagenet.keras)")
        parser.add_argument("--boot", type=positive_int, default=1000, help="bootstrap resamples for the 95%% CIs")
        _add_explain_method(parser, "--explain", "method of the held-out explanation grid: " +
                            ", ".join(_explanation_methods()) + " (default gradcam)")
        parser.add_argument("--registry", type=Path, help="another datasets.toml")
        parser.add_argument("--storage", help="the study's storage when several machines shared it (default: the "
                                              "one the manifest records; password from BENCH_STORAGE_PASSWORD)")
        parser.add_argument("--operating-point", type=operating_point, action="append", default=[],
                            metavar="sens=X|spec=X",
                            help="a threshold reaching this sensitivity or specificity, chosen on the out-of-fold "
                                 "CV predictions and applied unchanged to the test set (repeatable; multiclass: "
                                 "one per class, one-vs-rest)")
        v = parser.add_argument_group("variants scored beside the refit")
        v.add_argument("--tta", default="none", choices=list(TTA_SETS),
                       help="test-time augmentation: flip = identity + horizontal flip; flip-hv adds the vertical "
                            "and both flips (images without an up)")
        v.add_argument("--ensemble", default="none", choices=list(ENSEMBLES),
                       help="folds: also train the best trial on every CV fold as CV did and average the fold models")
        _add_mlflow(parser, "each refitted model's held-out metrics, model card and model file (MLflow run "
                            "final/<backbone> in the study's experiment)")

    def run(self, args: argparse.Namespace) -> int:
        _quiet_frameworks()
        from bench.final import evaluate_run
        from bench.variants import VariantPlan

        mlflow = _mlflow_uri(args)
        if mlflow:  # the experiment too, before the refit: a store that refuses it fails now, not after
            from bench import tracking
            from bench.results import RunDir

            run = RunDir.open(args.run)
            tracking.ensure_experiment(mlflow, tracking.experiment_name(run.manifest(), run.path))
        console = _console()
        results = evaluate_run(args.run, backbones=args.backbone, n_boot=args.boot, console=console,
                               registry=args.registry, storage=args.storage, operating_points=args.operating_point,
                               by=args.by, explain=args.explain,
                               variants=VariantPlan(tta=args.tta, ensemble=args.ensemble))
        if mlflow:
            from bench.tracking import log_final

            log_final(mlflow, args.run, results, say=console.print)
        return 0


# ---- bench evaluate -------------------------------------------------------------------------
@register_command
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

    def run(self, args: argparse.Namespace) -> int:
        _quiet_frameworks()
        from bench.external import evaluate_external

        evaluate_external(args.run, args.dataset, group_regex=args.group_regex, registry=args.registry,
                          backbones=args.backbone, n_boot=args.boot, drop_overlap=args.drop_overlap,
                          console=_console())
        return 0


# ---- bench status ---------------------------------------------------------------------------
@register_command
class StatusCommand(Command):
    name = "status"
    help = "List the studies in a storage: trials by state, best value, best per backbone."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--storage", help="storage URL or file (default: every study.db under the runs folder)")
        parser.add_argument("--runs-dir", type=Path, help="where to look for study.db files (default BENCH_RUNS or ./runs)")

    def run(self, args: argparse.Namespace) -> int:
        from bench.search.status import print_status

        return print_status(_console(), args.storage, args.runs_dir or paths.runs_dir())


# ---- bench rescore --------------------------------------------------------------------------
@register_command
class RescoreCommand(Command):
    name = "rescore"
    help = "Re-score the N best trials of a search (e.g. a hold-out search) by full k-fold cross-validation."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--run", type=Path, required=True, help="the search's run directory")
        parser.add_argument("--top", type=positive_int, default=3, help="how many of the best trials (default 3)")
        parser.add_argument("--folds", type=at_least(2), default=5, help="k of the k-fold CV (default 5)")

    def run(self, args: argparse.Namespace) -> int:
        _quiet_frameworks()
        from bench.rescore import COMPARISON, rescore

        console = _console()

        def on_trial(row: dict[str, Any]) -> None:
            kfold = "failed" if row["kfold_mean"] is None else f"{row['kfold_mean']:.3f} ± {row['kfold_std']:.3f}"
            console.print(f"trial {row['trial']} ({row['backbone']}): {row['search_protocol']} {row['search_value']:.3f}"
                          f" -> {args.folds}-fold CV {kfold}", highlight=False)

        out = rescore(args.run, args.top, args.folds, on_trial=on_trial)
        console.print(f"k-fold scores in {out.path} ({COMPARISON}); `bench report --run {out.path}` ranks on them")
        return 0


# ---- bench report ---------------------------------------------------------------------------
@register_command
class ReportCommand(Command):
    name = "report"
    help = "Write the comparison report (Markdown, HTML, CSV tables, figures) from run directories."

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--run", type=Path, action="append", metavar="DIR",
                            help="a run directory (repeatable; a folder holding run directories also works)")
        parser.add_argument("--runs-dir", type=Path, metavar="DIR",
                            help="report on every run directory under DIR (default BENCH_RUNS or ./runs)")
        parser.add_argument("--out", type=Path, default=Path("reports"), metavar="DIR",
                            help="where to write index.md, index.html, tables/ and figures/ (default reports/)")
        parser.add_argument("--quiet", action="store_true", help="do not print the main tables")
        _add_by(parser, "one leaderboard row per backbone (default), or per combination of these searched "
                        "parameters, e.g. backbone,weights or backbone,unfrozen")
        parser.add_argument("--strict", action="store_true",
                            help="exit 1, naming each problem, if any part could not be drawn or any record is "
                                 "missing (a figure, a held-out result, a file); the report is written anyway")

    def run(self, args: argparse.Namespace) -> int:
        from bench.report.render import print_report, write_report

        report = write_report(args.run, args.out, runs_dir=args.runs_dir, by=args.by)
        console = _console()
        if args.quiet:
            console.print(f"report: {report.html}")
        else:
            print_report(console, report)
        if args.strict and report.problems:
            err = _err_console()
            # soft_wrap: no line breaks inserted, so a long path stays whole for the terminal to wrap
            err.print(f"[red]bench report --strict: {len(report.problems)} problem(s) in {report.html}:[/]",
                      highlight=False, soft_wrap=True)
            for text in report.problems:
                err.print(f"  - {text}", markup=False, highlight=False, soft_wrap=True)
            return 1
        return 0


# ---- bench export / predict / explain -------------------------------------------------------
def _add_no_verify(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-verify", action="store_true",
                        help="skip checking the model file's sha256 and the card's binding digest (for a model or "
                             "card you changed on purpose); size, outputs and backbone are still checked")


def _list_unreadable(unreadable: list[tuple[str, str]]) -> None:
    if not unreadable:
        return
    from rich.markup import escape

    err = _err_console()
    err.print(f"[yellow]{len(unreadable)} unreadable image(s) skipped:[/]", highlight=False)
    for path, reason in unreadable:
        err.print(f"  {escape(path)}: {escape(reason)}", highlight=False, soft_wrap=True)


@register_command
class ExportCommand(Command):
    name = "export"
    help = "Save a run's refit best model (the one scored on the held-out test) as .keras with a model card."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--run", type=Path, required=True, help="a run directory after `bench final`")
        parser.add_argument("--backbone", help="this backbone's model (default: the best by cross-validation)")
        parser.add_argument("--out", type=Path, metavar="FILE.keras",
                            help="where to write the model; FILE.card.json and FILE.card.md go beside it "
                                 "(default <run>/export/<dataset>-<backbone>.keras)")
        parser.add_argument("--ensemble", default="none", choices=list(ENSEMBLES),
                            help="folds: export the fold ensemble of `bench final --ensemble folds` as one model")

    def run(self, args: argparse.Namespace) -> int:
        _quiet_frameworks()
        from bench.export import export_model, resampled
        from bench.variants import export_ensemble

        export = export_ensemble if args.ensemble == "folds" else export_model
        result = export(args.run, backbone=args.backbone, out=args.out)
        console = _console()
        ev = result.card["evaluation"]
        metric = ev["objective"]["metric"]
        cv = ev["cv"]["metrics"].get(metric) or {}
        test = ev["test"]["metrics"].get(metric) or {}

        def num(x: Any) -> str:
            return "-" if x is None else f"{x:.3f}"

        console.print(f"{result.backbone} (trial {result.card['training']['trial']}): {metric} "
                      f"CV {num(cv.get('mean'))} ± {num(cv.get('std'))}, held-out test {num(test.get('value'))} "
                      f"(95% CI {num(test.get('low'))}-{num(test.get('high'))}, {ev['test'].get('n_images')} images, "
                      f"{resampled(ev['test'])})")
        console.print(f"model: {result.model}\ncard:  {result.card_md}\n       {result.card_json}")
        return 0


@register_command
class PredictCommand(Command):
    name = "predict"
    help = "Class probabilities for image files or folders from an exported model (same preprocessing as training)."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", type=Path, metavar="MODEL.keras", help="an exported model (its .card.json beside it)")
        parser.add_argument("paths", type=Path, nargs="+", metavar="PATH",
                            help="image files or folders (a folder of class subfolders is also scored)")
        parser.add_argument("--csv", type=Path, help="write one row per image: path, [truth], predicted, p_<class>...")
        parser.add_argument("--batch-size", type=positive_int, default=64)
        parser.add_argument("--show", type=whole, default=20, help="rows to print (default 20; all go to --csv)")
        parser.add_argument("--operating-point", metavar="NAME|default",
                            help="predict with a threshold from the model card (e.g. sens=0.95, as given to "
                                 "`bench final --operating-point`) instead of argmax ('default')")
        _add_no_verify(parser)

    def run(self, args: argparse.Namespace) -> int:
        _quiet_frameworks()
        from rich.markup import escape
        from rich.table import Table

        from bench.predict import predict_paths

        result = predict_paths(args.model, args.paths, batch_size=args.batch_size, verify=not args.no_verify,
                               operating_point=args.operating_point)
        console = _console()
        frame = result.frame
        table = Table(title=f"{len(frame)} image(s), {args.model.name}")
        for col in ("path", *(["truth"] if "truth" in frame else []), "predicted", "confidence"):
            table.add_column(col, justify="right" if col == "confidence" else "left", overflow="fold")
        for row in frame.head(max(args.show, 0)).itertuples(index=False):
            d = row._asdict()
            table.add_row(escape(d["path"]), *([d["truth"]] if "truth" in frame else []), d["predicted"],
                          f"{d['confidence']:.3f}")
        if args.show > 0:
            console.print(table)
        if len(frame) > args.show > 0:
            console.print(f"... {len(frame) - args.show} more" + (" (all in --csv)" if args.csv else "; use --csv"))
        if args.operating_point not in (None, "default"):
            console.print(f"predicted at operating point {args.operating_point} (thresholds from the model card, "
                          f"chosen on cross-validation){'' if len(result.classes) == 2 else '; one yes/no column per class in --csv'}")
        counts = frame.predicted.value_counts()
        console.print("predicted: " + ", ".join(f"{c} {int(counts.get(c, 0))}" for c in result.classes))
        if result.metrics is not None:
            shown = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity", "mcc")
            console.print(f"metrics on {result.n_labelled} labelled image(s) (truth = class folder): "
                          + ", ".join(f"{m.replace('_', ' ')} {result.metrics[m]:.3f}" for m in shown
                                      if m in result.metrics))
            cm = Table(title="confusion matrix (rows truth, columns predicted)")
            cm.add_column("")
            for c in result.classes:
                cm.add_column(c, justify="right")
            for c, counts_row in zip(result.classes, result.confusion):
                cm.add_row(c, *[str(int(v)) for v in counts_row])
            console.print(cm)
        if args.csv:
            console.print(f"wrote {result.write_csv(args.csv)}")
        _list_unreadable(result.unreadable)
        return 0


@register_command
class ExplainCommand(Command):
    name = "explain"
    help = "Grad-CAM, LIME or occlusion overlays: where in each image the evidence for the predicted class lies."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("model", type=Path, metavar="MODEL.keras", help="an exported model (its .card.json beside it)")
        parser.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="image files or folders")
        parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                            help="folder for the overlays (<name>.<method>.png) and <method>.csv")
        _add_explain_method(parser, "--method", "explanation method: " + ", ".join(_explanation_methods()) +
                            " (default gradcam)")
        parser.add_argument("--class", dest="class_name", metavar="NAME",
                            help="explain this class for every image (default: each image's predicted class)")
        parser.add_argument("--block", type=int, default=-1,
                            help="backbone block whose output is explained: -1 = last (default), -2 = the one "
                                 "before (finer map), ...")
        parser.add_argument("--display-size", type=positive_int, help="overlay side in pixels (default: model size, at least 224)")
        _add_no_verify(parser)

    def run(self, args: argparse.Namespace) -> int:
        _quiet_frameworks()
        from bench.explain import explain_paths

        if args.method != "gradcam" and args.block != -1:
            raise ConfigError(f"--block chooses the layer Grad-CAM reads; --method {args.method} has none. "
                              f"Drop --block, or use --method gradcam.")
        result = explain_paths(args.model, args.paths, args.out, class_name=args.class_name, block=args.block,
                               display_size=args.display_size, verify=not args.no_verify, method=args.method)
        t = result.target
        console = _console()
        if t is not None:
            console.print(f"Grad-CAM on {t.backbone or 'the model'}: block {t.block + 1} of {t.n_blocks} "
                          f"(ends at {t.name}, {t.shape[0]}x{t.shape[1]} map)")
        else:
            console.print(f"{args.method} on the model's predictions")
        console.print(f"{len(result.rows)} overlay(s) in {args.out}; index: {result.csv}")
        _list_unreadable(result.unreadable)
        return 0


# ---- bench perf -----------------------------------------------------------------------------
@register_command
class PerfCommand(Command):
    name = "perf"
    help = "Run the same work two ways on this machine (bench's way and a naive one) and print the ratios."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--only", metavar="NAME[,NAME]", help="only these measurements (default: all)")
        parser.add_argument("--quick", action="store_true", help="tiny settings: checks the code paths, not figures")
        parser.add_argument("--dataset", default="pneumonia-demo", help="dataset of the measurements that take one")
        parser.add_argument("--seed", type=whole, default=0)
        parser.add_argument("--out", type=Path, help="CSV of the table (default: <runs folder>/perf/bench_perf.csv)")

    def run(self, args: argparse.Namespace) -> int:
        _quiet_frameworks()
        from bench.perf import PerfOptions
        from bench.perf._run import run_perf

        options = PerfOptions(dataset=args.dataset, quick=args.quick, seed=args.seed)
        out = args.out or paths.runs_dir() / "perf" / "bench_perf.csv"
        return run_perf(options, only=args.only, out=out, console=_console())


# ---- entry point ----------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="Benchmark transfer learning on medical images: honest k-fold CV, searches, reports.",
    )
    parser.add_argument("--version", action="version", version=f"bench {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, cls in COMMANDS.items():
        command = cls()
        p = sub.add_parser(name, help=command.help, description=command.help)
        command.add_arguments(p)
        p.add_argument("--offline", action="store_true",
                       help="never touch the network (same as BENCH_OFFLINE=1); a missing file fails at once")
        p.set_defaults(_command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_command", None):
        parser.print_help()
        return 2
    # Through the environment, --offline reaches worker processes too; restored afterwards, so a
    # caller of main() in the same process (a test, a notebook) is not left offline.
    previous = os.environ.get(paths.OFFLINE_ENV)
    if getattr(args, "offline", False):
        os.environ[paths.OFFLINE_ENV] = "1"
    try:
        if not args._command.native_log:
            return args._command.run(args)
        from bench.quiet import native_stderr_to_log

        with native_stderr_to_log():
            return args._command.run(args)
    except BenchError as err:
        from rich.markup import escape

        _err_console().print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return err.exit_code
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # Not a bug and not the user's typo: say where, keep the traceback out of it.
        where = f" while writing {err.filename}" if err.filename else ""
        _err_console().print(f"[bold red]error:[/] no space left on the disk{where}. Free some space and run the "
                             "same command again: files are written whole, so nothing partial is read back.",
                             highlight=False, soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is None:
            os.environ.pop(paths.OFFLINE_ENV, None)
        else:
            os.environ[paths.OFFLINE_ENV] = previous


if __name__ == "__main__":
    sys.exit(main())
