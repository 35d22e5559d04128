"""``bench probe``: a linear probe and kNN on every backbone's frozen features, at every size."""

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
    add_data_arguments,
    data_settings,
    quiet_frameworks,
    stderr_console,
    stdout_console,
)
from bench.cli.argtypes import positive_int
from bench.errors import ConfigError

DEFAULT_SIZES = (64, 128, 224)


def names(value: str) -> tuple[str, ...]:
    found = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not found:
        raise argparse.ArgumentTypeError(f"must name at least one, separated by commas, got {value!r}")
    return found


def sizes(value: str) -> tuple[int, ...]:
    return tuple(dict.fromkeys(positive_int(v.strip()) for v in names(value)))


class ProbeCommand(Command):
    name = "probe"
    help = ("Score every backbone at every size in minutes: a linear probe and kNN on frozen, pooled features, "
            "on the same folds and held-out test as a search.")
    native_log = True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        add_data_arguments(parser)
        g = parser.add_argument_group("probes")
        g.add_argument("--backbones", type=names, metavar="B[,B...]",
                       help="backbones to probe (default: every backbone with ImageNet weights; those whose files "
                            "are not on this machine are skipped with the command that gets them)")
        g.add_argument("--sizes", type=sizes, default=DEFAULT_SIZES, metavar="PX[,PX...]",
                       help=f"image sizes (default {','.join(map(str, DEFAULT_SIZES))}); --size is not used here")
        g.add_argument("--weights", choices=["imagenet", "none"], default="imagenet",
                       help="imagenet (default) or none: random init, which needs --allow-random")
        g.add_argument("--allow-random", action="store_true",
                       help="allow --weights none: probes of an untrained network (smoke tests; they measure "
                            "nothing a user wants)")
        g.add_argument("--boot", type=positive_int, default=1000, help="bootstrap resamples of the held-out CIs")
        out = parser.add_argument_group("output")
        out.add_argument("--out", type=Path, help="run directory (default runs/<dataset>/<run-id>-probe)")
        out.add_argument("--runs-dir", type=Path, help="parent of run directories (default BENCH_RUNS or ./runs)")

    def run(self, args: argparse.Namespace) -> int:
        quiet_frameworks()
        if args.weights == "none" and not args.allow_random:
            raise ConfigError("--weights none probes a randomly initialised network: its features measure nothing a "
                              "user wants. Use --weights imagenet (the default), or add --allow-random to run it "
                              "anyway (smoke tests).")
        if args.size is not None:
            raise ConfigError(f"bench probe takes --sizes (a list), not --size; e.g. --sizes {args.size}.")
        from bench.evaluation.probe import plan
        from bench.models import backbone_names, get_backbone

        weights = None if args.weights == "none" else "imagenet"
        wanted = args.backbones or tuple(n for n in backbone_names() if get_backbone(n).has_imagenet)
        pairs, skips = plan(wanted, args.sizes, weights)
        err = stderr_console()
        for skip in skips:
            err.print(f"[yellow]{skip.line()}[/]", highlight=False, soft_wrap=True)
        if not pairs:
            raise ConfigError(f"Nothing to probe: every backbone x size of --backbones {','.join(wanted)} --sizes "
                              f"{','.join(map(str, args.sizes))} was skipped (see above).")
        return run_probes(args, pairs, skips, weights)


def run_probes(args: argparse.Namespace, pairs: list, skips: list, weights: str | None) -> int:
    from bench import environment
    from bench.evaluation.probe import (
        C_GRID,
        INNER_FRACTION,
        KNN_NEIGHBOURS,
        PROBES,
        probe_all,
    )
    from bench.results import RunDir
    from bench.training.experiment import DataBySize, prepare_data

    t_start = time.perf_counter()
    console = stdout_console()
    data = prepare_data(size=pairs[0][1], **data_settings(args))
    by_size = DataBySize(data)
    sp = data.summary()["split"]
    console.print(f"[bold]{data.spec.name}[/]: {data.protocol_phrase} on {sp['cv_images']} images, held-out test "
                  f"{sp['test_images']} images; {len(pairs)} backbone x size pair(s), probes {', '.join(PROBES)}")
    for line in data.split_lines():
        console.print(line, highlight=False)
    run = RunDir.create(args.runs_dir or paths.runs_dir(), data.spec.name, out=args.out, tag="probe")
    run.write_manifest({
        "kind": "probe", "command": " ".join(shlex.quote(a) for a in sys.argv), "bench_version": __version__,
        "seeds": {"split": data.splits.seed, "train": args.seed}, "environment": environment.describe(),
        **data.summary(), "status": "running",
        "probe": {"pairs": [list(p) for p in pairs], "weights": weights or "none", "probes": list(PROBES),
                  "knn_neighbours": KNN_NEIGHBOURS, "C_grid": list(C_GRID), "inner_fraction": INNER_FRACTION,
                  "n_boot": args.boot, "skipped": [s.line() for s in skips]},
    })
    data.write_splits(run)
    try:
        with run.failed_on_error():
            rows = probe_all(by_size, pairs, run, weights=weights, n_boot=args.boot, seed=args.seed,
                             say=lambda text: console.print(text, highlight=False))
    except KeyboardInterrupt:
        run.update_manifest(status="interrupted", seconds=round(time.perf_counter() - t_start, 1))
        console.print(f"[yellow]Interrupted; the finished backbone x size pairs are kept in {run.path}[/]")
        return 130
    wall = time.perf_counter() - t_start
    run.update_manifest(status="complete", seconds=round(wall, 1))
    print_probes(console, rows, data)
    console.print(f"wall time {wall:.1f} s; run directory: {run.path} (`bench report --run {run.path}`)")
    return 0


def print_probes(console: Any, rows: Any, data: Any) -> None:
    from rich.table import Table

    from bench.report.probes import display_frame

    shown = display_frame(rows, "balanced_accuracy")
    table = Table(title=f"Probes on {data.spec.name}: {data.protocol_phrase}, held-out test "
                        f"{int(data.splits.test.sum())} images")
    for c in shown.columns:
        table.add_column(str(c))
    for values in shown.itertuples(index=False):
        table.add_row(*map(str, values))
    console.print(table)
