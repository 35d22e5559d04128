"""The held-out step at the end of ``bench run``: whether final.json is already current, and
``bench final``'s evaluation in a process of its own, so the search's supervisor never imports the
framework."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.errors import BenchError, disk_full
from bench.evaluation.variants import VariantPlan
from bench.metrics.operating import OperatingPoint
from bench.results import RunDir
from bench.search.storage import redact


def final_is_current(run: RunDir, points: Sequence[OperatingPoint] = (),
                      variants: VariantPlan | None = None) -> bool:
    """final.json already holds the refit of each backbone's best trial, with the operating points and
    variants asked for now (a search continued with --operating-point or --tta refits again)."""
    from bench.evaluation.final import best_trials

    # Entries of `bench final --by <factors>` (they record "by") are not what the search refits.
    infos = {b: info for b, info in run.final().get("backbones", {}).items() if "by" not in info}
    wanted = [p.name for p in points]
    if any(list(dict.fromkeys(t.get("point") for t in info.get("operating_points") or [])) != wanted
           for info in infos.values()):
        return False
    if variants is not None and variants.any and not all(info.get("variants") for info in infos.values()):
        return False
    try:
        return bool(infos) and {b: info.get("trial") for b, info in infos.items()} == best_trials(run)
    except BenchError:
        return False


def _final_main(run_dir: str, registry: str | None, mlflow: str | None = None,
                operating_points: Sequence[OperatingPoint] = (), variants: VariantPlan | None = None) -> None:
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from rich.console import Console

    from bench.environment import native_stderr_to_log
    from bench.evaluation.final import evaluate_run
    from bench.search.shared import shared_study

    console = Console()
    try:
        with native_stderr_to_log():
            console = console if console.is_terminal else Console(width=160)
            results = evaluate_run(Path(run_dir), console=console, registry=Path(registry) if registry else None,
                                   study=shared_study(RunDir.open(Path(run_dir))),
                                   operating_points=operating_points, variants=variants)
            if mlflow:
                from bench.search.tracking import log_final

                log_final(mlflow, Path(run_dir), results, say=console.print)
    except BenchError as err:
        # stdout: under `bench run` this process's descriptor 2 is TensorFlow's log file (bench.environment)
        print(f"error: {err}", file=sys.stdout)
        sys.exit(2)
    except OSError as err:  # a full disk is the user's to fix too: its reason on the terminal, not in the log
        message = disk_full(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stdout)
        sys.exit(1)


def run_final_in_subprocess(ctx: Any, run_dir: Path, registry: str | None, console: Any,
                            mlflow: str | None = None, operating_points: Sequence[OperatingPoint] = (),
                            variants: VariantPlan | None = None) -> int:
    """The held-out evaluation, in its own process: the supervisor never imports the framework.
    With ``mlflow`` (a tracking URI) it is logged there as ``bench final --mlflow`` does;
    ``operating_points`` and ``variants`` are ``bench final --operating-point/--tta/--ensemble``."""
    console.print("Held-out evaluation (bench final): best trial per backbone, refit on the cross-validation pool")
    process = ctx.Process(target=_final_main, args=(str(run_dir), registry, mlflow, tuple(operating_points), variants),
                          name="bench-final")
    process.start()
    process.join()
    if process.exitcode != 0:
        again = f" --mlflow {redact(mlflow)}" if mlflow else ""
        console.print(f"[red]The held-out evaluation failed (exit code {process.exitcode}); the search results "
                      f"are kept. Run `bench final --run {run_dir}{again}` to retry.[/]")
        return 1
    return 0
