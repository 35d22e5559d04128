"""A search worker: one process that imports the framework once and runs trials until told to stop.

Started by ``bench run`` (one per ``--jobs``), it reads the decoded images from the cache (no
decoding), opens the study in the shared storage and runs one trial at a time through
``study.optimize``, which keeps the heartbeat that lets other workers fail this one's trial if
the process dies. It exits after a failed trial (so a process whose memory or framework state
may be damaged is replaced) or after ``max_trials`` trials (to bound memory growth).

Messages to the supervising process go through a multiprocessing queue as ``(kind, payload)``.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Exit codes the supervisor reads.
EXIT_BUDGET_DONE = 0
EXIT_RECYCLE = 10  # ran max_trials trials: replace me
EXIT_TRIAL_FAILED = 11  # a trial failed in this process: replace me
EXIT_STOPPED = 12  # the supervisor asked to stop
EXIT_SETUP_FAILED = 13  # could not start, or cannot go on (bad data, a full disk): do not replace
EXIT_OVER_BUDGET = 14  # --time-limit: the next trial cannot finish in its stage; this stage is over for me


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs, picklable (workers are spawned, not forked)."""

    index: int
    data: dict[str, Any]  # the supervisor's DataSettings (asdict): the same call, the same splits
    folds: int
    seed: int
    size: int | None
    space_path: str
    fixed: dict[str, Any]
    storage: str | None
    study_name: str
    run_dir: str
    sampler: str
    pruner: str
    trials: int
    max_trials: int = 20
    heartbeat: int = 30
    grace: int = 90
    splits_digest: str = ""
    precision: str = "float32"
    env: dict[str, str] = field(default_factory=dict)
    mlflow: str | None = None  # tracking URI: each worker logs the trials it ran (bench.search.tracking)
    allocation: str = "balanced"  # bench.search.allocation (already resolved by the supervisor)
    by: tuple[str, ...] = ("backbone",)
    # A --time-limit stage (bench.search.gate.StageGate's fields but the clock); None: no stages.
    stage: dict[str, Any] | None = None
    promoted: tuple[str, ...] = ()  # a stage that promotes: only these backbones compete


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the supervisor dies, so `kill -9 bench` leaves no orphans."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def finished_and_running(study: Any) -> tuple[int, int]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    return len(trials) - running, running


def worker_main(spec: WorkerSpec, queue: Any, stop: Any) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides what Ctrl-C means
    os.environ.update(spec.env)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def send(kind: str, payload: dict[str, Any]) -> None:
        queue.put((kind, {"worker": spec.index, "pid": os.getpid(), **payload}))

    from bench.environment import native_stderr_to_log

    with native_stderr_to_log():
        # An error outside a trial (a full disk, a storage that refuses writes) would come back in
        # a replacement worker: reported as fatal, so the supervisor stops instead of looping.
        try:
            study, objective, callbacks = _setup(spec, send)
            from bench.results import RunDir

            code = _loop(spec, study, objective, send, stop, RunDir.open(Path(spec.run_dir)), callbacks)
        except Exception as err:  # noqa: BLE001 - reported to the supervisor, which prints it
            send("setup_failed", {"error": describe_error(err)})
            sys.exit(EXIT_SETUP_FAILED)
        sys.exit(code)


def describe_error(err: BaseException) -> str:
    """One line for the user; a full disk anywhere in the chain of causes is named as such."""
    import errno

    from bench.errors import BenchError

    if isinstance(err, BenchError):
        return str(err)
    cause: BaseException | None = err
    while cause is not None:
        full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
        if full or "disk is full" in str(cause):
            where = f" ({cause.filename})" if isinstance(cause, OSError) and cause.filename else ""
            return (f"no space left on the disk of the run directory or the study{where}: free some space and run "
                    "the same command again; finished trials are kept in the study")
        cause = cause.__cause__ or cause.__context__
    return f"{type(err).__name__}: {err}"


def _setup(spec: WorkerSpec, send: Any) -> tuple[Any, Any, list[Any]]:
    from bench.search.devices import apply_precision, apply_thread_limits

    apply_thread_limits()
    apply_precision(spec.precision)
    import optuna

    from bench import environment
    from bench.results import RunDir
    from bench.search.allocation import ALLOCATIONS, balance_factors, wrap_sampler
    from bench.search.objective import make_objective
    from bench.search.pruners import make_pruner
    from bench.search.samplers import make_sampler
    from bench.search.space import load_space
    from bench.search.storage import open_storage
    from bench.training.experiment import DataBySize, prepare_data

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    data = prepare_data(**spec.data, size=spec.size)
    if spec.splits_digest and data.splits_digest != spec.splits_digest:
        raise RuntimeError("this worker computed different splits from the supervisor's; the dataset changed")
    space = load_space(Path(spec.space_path))
    run = RunDir.open(Path(spec.run_dir))
    storage = open_storage(spec.storage, run.path, heartbeat_interval=spec.heartbeat, grace_period=spec.grace)
    balances = ALLOCATIONS[spec.allocation].balances
    factors, entries = balance_factors(space, spec.fixed, spec.by) if balances else ((), [])
    if spec.promoted and "backbone" in factors:
        at = factors.index("backbone")
        entries = [e for e in entries if e[at] in spec.promoted]
    gate = None
    if spec.stage is not None:
        from bench.search.gate import StageGate

        gate = StageGate(**spec.stage)
    sampler = wrap_sampler(make_sampler(spec.sampler, spec.seed * 100 + spec.index, space), spec.allocation,
                           factors, entries)
    study = optuna.load_study(study_name=spec.study_name, storage=storage, sampler=sampler,
                              pruner=make_pruner(spec.pruner))
    objective = make_objective(DataBySize(data), space, run, study_seed=spec.seed, fixed=spec.fixed,
                               on_event=lambda kind, payload: send(kind, payload), budget=spec.trials,
                               gate=gate)
    callbacks: list[Any] = []
    if spec.mlflow:
        # Optuna runs callbacks in the process that ran the trial: every worker logs its own.
        from bench.search.tracking import trial_logger

        callbacks.append(trial_logger(
            spec.mlflow, metric=space.metric, dataset=str(data.spec.name), study=spec.study_name,
            run_dir=str(run.path.resolve()),
            on_error=lambda number, error: send("tracking_failed", {"number": number, "error": error})))
    send("ready", {"environment": environment.describe(), "host": socket.gethostname()})
    return study, objective, callbacks


def _loop(spec: WorkerSpec, study: Any, objective: Any, send: Any, stop: Any, run: Any,
          callbacks: Sequence[Any] = ()) -> int:
    import optuna
    from optuna.trial import TrialState

    done_here = 0
    while True:
        if stop.is_set():
            return EXIT_STOPPED
        finished, running = finished_and_running(study)
        if finished >= spec.trials:
            return EXIT_BUDGET_DONE
        if finished + running >= spec.trials:
            # The rest of the budget is in flight elsewhere; one of those may still fail.
            optuna.storages.fail_stale_trials(study)
            time.sleep(2.0)
            continue
        # Enqueued trials (retries; one per backbone in a new --allocation sampler study) exist,
        # WAITING, before they run: only trials that had started before this call are not this call's.
        before = {t.number for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING}
        study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True, callbacks=list(callbacks))
        done_here += 1
        mine = [t for t in study.get_trials(deepcopy=False) if t.number not in before
                and (t.user_attrs.get("worker") or {}).get("pid") == os.getpid()]
        trial = mine[-1] if mine else None
        if trial is not None and trial.user_attrs.get("over_budget"):
            send("not_started", {"number": trial.number, "reason": trial.user_attrs.get("fail_reason")})
            return EXIT_OVER_BUDGET
        if trial is not None and trial.user_attrs.get("surplus"):
            continue  # another worker took the last place; wait for the budget to settle
        if trial is not None:
            from bench.evaluation.grouping import Grouping
            from bench.results import trial_record
            from bench.search.allocation import trial_label

            run.append_trial(trial_record(trial))
            send("trial_end", {
                "number": trial.number, "state": trial.state.name, "value": trial.value,
                "backbone": (trial.user_attrs.get("config") or {}).get("backbone"),
                "entry": trial_label(trial, Grouping(spec.by)),
                "reason": trial.user_attrs.get("fail_reason"),
                "seconds": trial.user_attrs.get("seconds"),
            })
            if trial.state == TrialState.FAIL:
                return EXIT_TRIAL_FAILED
        if done_here >= spec.max_trials:
            return EXIT_RECYCLE
