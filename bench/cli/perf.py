"""``bench perf``: speed ratios measured side by side."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench import paths
from bench.cli._base import Command, quiet_frameworks, stdout_console
from bench.cli.argtypes import whole


# ---- bench perf -----------------------------------------------------------------------------
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
        quiet_frameworks()
        from bench.perf import PerfOptions
        from bench.perf._run import run_perf

        options = PerfOptions(dataset=args.dataset, quick=args.quick, seed=args.seed)
        out = args.out or paths.runs_dir() / "perf" / "bench_perf.csv"
        return run_perf(options, only=args.only, out=out, console=stdout_console())
