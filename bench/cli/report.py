"""``bench report``: the comparison tables, figures and pages from run directories."""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.cli._base import Command, add_by, stderr_console, stdout_console


# ---- bench report ---------------------------------------------------------------------------
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
        add_by(parser, "one leaderboard row per backbone (default), or per combination of these searched "
                        "parameters, e.g. backbone,weights or backbone,unfrozen")
        parser.add_argument("--strict", action="store_true",
                            help="exit 1, naming each problem, if any part could not be drawn or any record is "
                                 "missing (a figure, a held-out result, a file); the report is written anyway")

    def run(self, args: argparse.Namespace) -> int:
        from bench.report.render import print_report, write_report

        report = write_report(args.run, args.out, runs_dir=args.runs_dir, by=args.by)
        console = stdout_console()
        if args.quiet:
            console.print(f"report: {report.html}")
        else:
            print_report(console, report)
        if args.strict and report.problems:
            err = stderr_console()
            # soft_wrap: no line breaks inserted, so a long path stays whole for the terminal to wrap
            err.print(f"[red]bench report --strict: {len(report.problems)} problem(s) in {report.html}:[/]",
                      highlight=False, soft_wrap=True)
            for text in report.problems:
                err.print(f"  - {text}", markup=False, highlight=False, soft_wrap=True)
            return 1
        return 0
