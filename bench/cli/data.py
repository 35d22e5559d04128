"""Commands on datasets and backbones: ``bench datasets``, ``backbones``, ``fetch``, ``audit``."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from bench import paths
from bench.cli._base import (
    Command,
    add_data_arguments,
    data_settings,
    quiet_frameworks,
    stdout_console,
)
from bench.cli.argtypes import fraction, positive_float, positive_int, whole
from bench.errors import ConfigError, DataError


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
        console = stdout_console()
        console.print(table)
        if args.citations:
            for name, spec in specs.items():
                console.print(f"[bold]{name}[/]: {spec.citation or '(none)'}")
        else:
            console.print("Citations: bench datasets --citations. Data folder: BENCH_DATA =", paths.data_dir())
        return 0


# ---- bench backbones ------------------------------------------------------------------------
class BackbonesCommand(Command):
    name = "backbones"
    help = "List the registered backbones: parameters, cut points, blocks, minimum input size."
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--size", type=positive_int, default=None, help="input size to build them at (default: each one's minimum, at least 64)")
        parser.add_argument("names", nargs="*", help="only these backbones")

    def run(self, args: argparse.Namespace) -> int:
        quiet_frameworks()
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
        stdout_console().print(table)
        return 0


# ---- bench fetch ----------------------------------------------------------------------------
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
            stdout_console().print(source.fetch(spec, size=args.size))
            return 0
        root = dataset_root(spec)
        if spec.source.kind != "archive":
            where = "is shipped inside bench" if spec.source.kind == "embedded" else f"is read from {root}"
            stdout_console().print(f"{spec.name} {where}; there is nothing to download. {spec.notes}")
            return 0
        target = paths.data_dir() / spec.name
        if root.is_dir() and any(root.iterdir()) and not (target / ".bench-extracted").exists():
            stdout_console().print(f"{spec.name}: {root} already holds data (unpacked by hand); nothing to download.")
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
        stdout_console().print(f"{spec.name}: ready in {root}")
        return 0


def _top_level(folder: Path, shown: int = 10) -> str:
    """What an unpacked archive holds at its top, for a message: 'a/, b/, c.txt'."""
    from bench.data.fetch import MARKER

    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name != MARKER)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return (", ".join(names[:shown]) + more) if names else "nothing"




# ---- bench audit ----------------------------------------------------------------------------
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
        quiet_frameworks()
        from rich.markup import escape
        from rich.table import Table

        from bench.training.audit import (
            DEFAULT_MIN_COSINE,
            contact_sheet,
            run_audit,
            write_csv,
        )
        from bench.atomic import check_writable
        from bench.training.experiment import prepare_data

        t_start = time.perf_counter()
        settings = data_settings(args)
        if args.min_cosine is not None and not args.features:
            raise ConfigError("--min-cosine only applies with --features.")
        # Checked before the data is decoded: the default folder is reports/audit/<dataset>.
        check_writable(args.out or Path("reports"), "--out", "Give another --out, a folder you can write to.",
                       folder=True)
        data = prepare_data(size=args.size, **settings)
        audit = run_audit(data, settings["near_threshold"],
                          min_cosine=(args.min_cosine or DEFAULT_MIN_COSINE) if args.features else None)
        out = args.out or Path("reports") / "audit" / data.spec.name
        csv_path = write_csv(audit, out / "near_duplicates.csv")
        sheet = contact_sheet(audit, out / "near_duplicates.png")
        console = stdout_console()
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
