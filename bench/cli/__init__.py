"""The ``bench`` command: a thin face over the rooms, built from a table of command classes.

Every user mistake surfaces as a ``BenchError``: one message on stderr, exit status 2, no
traceback. Keras/TensorFlow are imported only by the commands that train, so listing datasets
stays instant. One module per family of commands; this table is the only place that lists them.
"""

from __future__ import annotations

import argparse
import os
import sys

from bench import __version__, paths
from bench.cli._base import Command, stderr_console
from bench.cli.data import AuditCommand, BackbonesCommand, DatasetsCommand, FetchCommand
from bench.cli.evaluate import EvaluateCommand, FinalCommand, RescoreCommand
from bench.cli.perf import PerfCommand
from bench.cli.probe import ProbeCommand
from bench.cli.report import ReportCommand
from bench.cli.search import CVCommand, RunCommand, StatusCommand
from bench.cli.use import ExplainCommand, ExportCommand, PredictCommand
from bench.cli.weights import WeightsCommand
from bench.errors import BenchError, disk_full

# The order of `bench --help`.
COMMANDS: dict[str, type[Command]] = {cls.name: cls for cls in (
    DatasetsCommand, BackbonesCommand, FetchCommand, WeightsCommand, CVCommand, RunCommand, ProbeCommand, AuditCommand,
    FinalCommand, EvaluateCommand, StatusCommand, RescoreCommand, ReportCommand, ExportCommand, PredictCommand,
    ExplainCommand, PerfCommand,
)}


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
        from bench.environment import native_stderr_to_log

        with native_stderr_to_log():
            return args._command.run(args)
    except BenchError as err:
        from rich.markup import escape

        stderr_console().print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return err.exit_code
    except OSError as err:
        message = disk_full(err)
        if message is None:
            raise
        # Not a bug and not the user's typo: say where, keep the traceback out of it.
        from rich.markup import escape

        stderr_console().print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
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
