"""``bench run``: create or resume a study, supervise worker processes, print the ranked summary.

The supervisor never imports the training framework. It prepares the data once (so workers only
read the cache), opens the study, starts ``--jobs`` workers and watches them: a worker that dies
mid-trial (crash, out-of-memory kill, ``--trial-timeout``) has its trial marked failed with the
reason and re-queued once, and a new worker takes its place. ``--trials N`` counts finished
(complete or pruned) trials in the study, so running the same command again after an interrupt
continues to the same total. Several machines share a study through ``--storage``; each runs
this same supervisor, and nothing else coordinates them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_module
import shlex
import signal
import socket
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from bench import __version__, paths
from bench.data import digests
from bench.data.spec import DEFAULT_NEAR_THRESHOLD
from bench.errors import BenchError, ConfigError
from bench.evaluation.variants import VariantPlan
from bench.metrics.operating import OperatingPoint
from bench.results import RunDir, trial_record
from bench.search import devices
from bench.search.allocation import ALLOCATIONS, balance_factors, effective_allocation
from bench.search.heldout import final_is_current, run_final_in_subprocess
from bench.search.progress import Progress
from bench.search.pruners import DEFAULT_PRUNER, make_pruner
from bench.search.samplers import make_sampler
from bench.search.shared import recorded_storage
from bench.search.space import load_space, resolve_space
from bench.search.storage import describe_storage, open_storage, redact
from bench.search.worker import (
    EXIT_BUDGET_DONE,
    EXIT_OVER_BUDGET,
    EXIT_SETUP_FAILED,
    EXIT_STOPPED,
    WorkerSpec,
    describe_error,
    finished_and_running,
    worker_main,
)
from bench.training.experiment import DataSettings

MAX_RETRIES = 1  # a trial whose worker died is run once more; a second death is its result
# Study attributes a resumed run must match: changing any of them changes what a trial means.
# The study attribute holding the dataset's packed file listing (bench.data.digests.pack).
FILES_ATTR = "dataset_files"
IDENTITY_KEYS = ("dataset", "dataset_fingerprint", "splits_digest", "space_fingerprint", "folds", "seed", "metric")
IDENTITY_WAIT_SECONDS = 30.0  # how long a machine waits for another's half-written study setup


def recorded_identity(study: optuna.Study, wait: float = IDENTITY_WAIT_SECONDS) -> dict[str, Any]:
    """The setup a study records (its user attributes). Another machine that created the study a
    moment ago may be writing it, one attribute at a time, right now: wait until it is whole (or
    ``wait`` seconds have passed) rather than compare half of it and refuse the study."""
    deadline = time.monotonic() + wait
    while True:
        theirs = study.user_attrs
        present = [k for k in IDENTITY_KEYS if k in theirs]
        if not present or len(present) == len(IDENTITY_KEYS) or time.monotonic() > deadline:
            return theirs
        time.sleep(0.5)


@dataclass
class SearchOptions:
    dataset: str
    trials: int
    space: str = "default"
    folds: int | None = None  # None: the dataset's default (resolved by prepare)
    seed: int = 0
    size: int | None = None
    resize: str | None = None
    strict: bool = False
    group_regex: str | None = None
    group_column: str | None = None
    registry: str | None = None
    test_fraction: float | None = None
    official_test: str = "clean"
    min_class_images: int = 0
    dedupe: str = "exact"
    near_threshold: int = DEFAULT_NEAR_THRESHOLD
    validation: str = "kfold"  # str(Protocol)
    storage: str | None = None
    study: str | None = None
    out: Path | None = None
    runs_dir: Path | None = None
    sampler: str = "tpe"
    pruner: str = DEFAULT_PRUNER
    jobs: int = 1
    timeout: float | None = None
    trial_timeout: float | None = None
    max_failures: int = 10
    max_trials_per_worker: int = 20
    heartbeat: int = 30
    grace: int = 90
    precision: str = "float32"
    final: bool = True  # held-out evaluation of the best trial per backbone when the budget is met
    # What that held-out step scores beside each refit, as `bench final`'s options of the same names.
    operating_points: tuple[OperatingPoint, ...] = ()
    variants: VariantPlan = field(default_factory=VariantPlan)
    fixed: dict[str, Any] = field(default_factory=dict)
    command: str = ""
    mlflow: str | None = None  # MLflow tracking URI (bench.search.tracking), already checked by the CLI
    allocation: str = "balanced"  # bench.search.allocation: trials per leaderboard entry
    by: tuple[str, ...] = ("backbone",)  # the factors an entry is (balanced allocation)


@dataclass
class _Slot:
    """One worker process and the trial it is running."""

    index: int
    process: Any
    trial: int | None = None
    trial_started: float = 0.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Supervisor:
    def __init__(self, options: SearchOptions, console: Any) -> None:
        self.o = options
        self.console = console
        self.failures: list[str] = []
        self.tracking_errors: list[str] = []
        self.stop_reason: str | None = None

    # ---- set-up ---------------------------------------------------------------------------
    def prepare(self) -> None:
        from bench.training.experiment import prepare_data

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        o = self.o
        if o.jobs < 1:
            raise ConfigError(f"--jobs must be at least 1, got {o.jobs}.")
        self.space_path, self.space, self.fixed, self.size = load_search_inputs(o)
        for note in self.space.notes:
            self.console.print(note)
        make_sampler(o.sampler, o.seed, self.space)  # fail now on a missing optional package
        self.allocation = effective_allocation(o.allocation, o.sampler)
        # Checked here, before any training: a --by that cannot be balanced fails now.
        self.factors, self.entries = (balance_factors(self.space, self.fixed, o.by)
                                      if ALLOCATIONS[self.allocation].balances else ((), []))
        self.data = prepare_data(**search_data_kwargs(o), size=self.size)
        self.o = o = replace(o, folds=self.data.splits.folds)  # the dataset's default when --folds is not given
        make_pruner(o.pruner, folds=self.data.splits.folds)
        print_split(self.console, self.data)
        self.study_name = o.study or f"{self.data.spec.name}-{self.space.name}"
        if o.mlflow:
            from bench.search import tracking

            # Made here, once, before any training: a URI that cannot take it fails now, and the
            # workers do not race to create it.
            tracking.ensure_experiment(o.mlflow, self.study_name)
        parent = o.runs_dir or paths.runs_dir()
        self.run = RunDir.open_or_create(o.out or parent / self.data.spec.name / self.study_name)
        self.storage = open_storage(o.storage, self.run.path, heartbeat_interval=o.heartbeat, grace_period=o.grace)
        self.study = optuna.create_study(
            study_name=self.study_name, storage=self.storage, load_if_exists=True, direction=self.space.direction,
            sampler=make_sampler(o.sampler, o.seed, self.space), pruner=make_pruner(o.pruner),
        )
        self._check_identity()
        self._record_allocation()
        if not ALLOCATIONS[self.allocation].balances:
            self._seed_each_backbone()
        self._recover_dead_local_trials()
        self._write_manifest()

    def identity(self) -> dict[str, Any]:
        return {
            "dataset": self.data.spec.name, "dataset_fingerprint": self.data.cache.fingerprint,
            "splits_digest": self.data.splits_digest, "space_fingerprint": self.space.fingerprint,
            "folds": self.o.folds, "seed": self.o.seed, "metric": self.space.metric,
            "size": self.data.size, "space_name": self.space.name, "engine": "optuna",
        }

    def _check_identity(self) -> None:
        mine = self.identity()
        theirs = recorded_identity(self.study)
        if not any(k in theirs for k in IDENTITY_KEYS):
            for key, value in mine.items():
                self.study.set_user_attr(key, value)
            files = digests.listing(self.data.index)
            if files is not None:  # so that a machine whose copy differs is told which files do
                self.study.set_user_attr(FILES_ATTR, digests.pack(files))
            return
        differ = [k for k in IDENTITY_KEYS if theirs.get(k) != mine[k]]
        if differ:
            lines = "; ".join(f"{k}: study has {theirs.get(k)!r}, this command {mine[k]!r}" for k in differ)
            if "dataset_fingerprint" in differ:
                lines += f"; {self._files_differing(theirs.get(FILES_ATTR))}"
            raise ConfigError(
                f"Study '{self.study_name}' in {describe_storage(self.storage)} was created with a different "
                f"setup ({lines}). Its trials would not be comparable. Use the original dataset, space, "
                f"--folds and --seed to continue it, or a new --study name."
            )

    def _files_differing(self, recorded: str | None) -> str:
        files = digests.listing(self.data.index)
        if recorded is None or files is None:
            return "the study records no file listing to say which files differ"
        return f"compared with the study's copy of the dataset: {digests.differences(recorded, files)}"

    def _record_allocation(self) -> None:
        """The study says how its trials were shared out (the report prints it); a continued study
        with another allocation keeps the history in the manifest's sessions."""
        before = self.study.user_attrs.get("allocation")
        if before and before != self.allocation:
            self.console.print(f"[yellow]This study was searched with --allocation {before}; this session uses "
                               f"{self.allocation}.[/]")
        self.study.set_user_attr("allocation", self.allocation)
        self.study.set_user_attr("balance_by", list(self.o.by))
        if self.allocation != self.o.allocation:
            self.console.print(f"--sampler {self.o.sampler} visits every combination itself: the backbones are "
                               f"allocated by the sampler, not balanced.")

    def _seed_each_backbone(self) -> None:
        """A new study first tries every backbone once (the sampler picks the other parameters).

        A benchmark compares backbones; left alone, TPE's random start-up trials can all draw
        the same one (measured: seed 1 drew mobilenet_v2 8 times out of 8 on the smoke space).
        """
        if self.study.get_trials(deepcopy=False) or "backbone" not in self.space:
            return
        param = self.space.param("backbone")
        choices = list(param.choices or ()) if param.kind == "categorical" else []
        if "backbone" in self.fixed or len(choices) < 2:
            return
        for backbone in choices[: self.o.trials]:
            self.study.enqueue_trial({"backbone": backbone}, user_attrs={"seeded": True}, skip_if_exists=True)

    def _recover_dead_local_trials(self) -> None:
        """Trials left RUNNING by a killed `bench run` on this machine: fail and re-queue now.

        Heartbeats would catch them after the grace period; the worker's host and pid let this
        machine do it at once.
        """
        host = socket.gethostname()
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            worker = t.user_attrs.get("worker") or {}
            if worker.get("host") == host and not _pid_alive(int(worker.get("pid", -1))):
                self.fail_and_retry(t.number, f"worker process {worker.get('pid')} died (the search was killed)")

    def _write_manifest(self) -> None:
        write_search_manifest(
            self.run, self.o, self.data, self.space, self.space_path, engine="optuna",
            fields={"study": self.study_name, "storage": recorded_storage(self.run, self.storage)},
            session={"jobs": self.o.jobs, "sampler": self.o.sampler, "pruner": self.o.pruner,
                     "allocation": self.allocation, "by": list(self.o.by),
                     **({"mlflow": redact(self.o.mlflow)} if self.o.mlflow else {})},
        )

    # ---- trials ---------------------------------------------------------------------------
    def fail_and_retry(self, number: int, reason: str, retry: bool = True) -> None:
        storage = self.study._storage
        trial_id = storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number)
        trial = storage.get_trial(trial_id)
        if trial.state != TrialState.RUNNING:
            return
        try:
            storage.set_trial_user_attr(trial_id, "fail_reason", reason)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except Exception as err:  # a full disk, a database gone: the search cannot go on
            raise BenchError(f"cannot record trial {number} as failed ({reason}): {describe_error(err)}") from None
        self.failures.append(f"trial {number}: {reason}")
        self.run.append_trial(trial_record(storage.get_trial(trial_id)))
        retries = int(trial.user_attrs.get("retries", 0))
        if retry and retries < MAX_RETRIES and trial.params:
            self.study.enqueue_trial(trial.params, user_attrs={"retry_of": number, "retries": retries + 1},
                                     skip_if_exists=False)

    # ---- workers --------------------------------------------------------------------------
    def _spec(self, index: int, env: dict[str, str]) -> WorkerSpec:
        o = self.o
        return WorkerSpec(
            index=index, data=asdict(self.data.settings), folds=o.folds, seed=o.seed, size=self.data.size,
            space_path=str(self.space_path), fixed=self.fixed, storage=o.storage,
            study_name=self.study_name, run_dir=str(self.run.path), sampler=o.sampler, pruner=o.pruner,
            trials=o.trials, max_trials=o.max_trials_per_worker, heartbeat=o.heartbeat, grace=o.grace,
            splits_digest=self.data.splits_digest, precision=o.precision, env=env, mlflow=o.mlflow,
            allocation=self.allocation, by=tuple(o.by),
        )

    def _start(self, index: int) -> _Slot:
        process = self.ctx.Process(target=worker_main, args=(self.specs[index], self.queue, self.stop),
                                   name=f"bench-worker-{index}", daemon=True)
        process.start()
        return _Slot(index, process)

    def run_workers(self) -> int:
        o = self.o
        self.ctx = mp.get_context("spawn")
        self.queue = self.ctx.Queue()
        self.stop = self.ctx.Event()
        plans = devices.plan_workers(o.jobs, devices.visible_gpus(), os.cpu_count() or 1)
        self.specs = [self._spec(i, env) for i, env in enumerate(plans)]
        self.progress = Progress(self.console, total=o.trials, folds=o.folds, metric=self.space.metric,
                                 direction=self.space.direction, by=tuple(o.by))
        finished, _ = finished_and_running(self.study)
        self.progress.set_counts(self.study)
        if finished >= o.trials:
            self.console.print(f"The study already has {finished} finished trials (--trials {o.trials}): nothing to run.")
            return 0
        t_start = time.monotonic()
        slots = {i: self._start(i) for i in range(o.jobs)}
        setup_error: str | None = None
        # Ctrl-C is also remembered, not only raised: a KeyboardInterrupt raised inside a library
        # call (SQLAlchemy, a queue) can be lost there, and then the search ran on to its end (seen
        # once in the Ctrl-C test, under load). The loop re-raises it at its next turn.
        interrupted: list[bool] = []

        def on_sigint(signum: int, frame: Any) -> None:
            interrupted.append(True)
            raise KeyboardInterrupt

        # (Not where Ctrl-C is ignored, as under nohup, nor off the main thread, where it cannot be set.)
        keep = not _main_thread() or signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        previous = None if keep else signal.signal(signal.SIGINT, on_sigint)
        try:
            with self.progress:
                while slots:
                    if interrupted:
                        raise KeyboardInterrupt
                    self._drain(slots)
                    now = time.monotonic()
                    self._tick(now)
                    if o.timeout and now - t_start > o.timeout and not self.stop.is_set():
                        self.stop_reason = f"--timeout {o.timeout:g} s reached"
                        self.stop.set()
                    for i, slot in list(slots.items()):
                        if o.trial_timeout and slot.trial is not None and now - slot.trial_started > o.trial_timeout:
                            slot.process.kill()
                            slot.process.join(10)
                            self.fail_and_retry(slot.trial, f"timeout: exceeded --trial-timeout {o.trial_timeout:g} s",
                                                retry=False)
                            self.progress.trial_failed(slot.trial, "timeout")
                            slot.trial = None
                        if slot.process.is_alive():
                            continue
                        self._drain(slots)
                        code = slot.process.exitcode
                        del slots[i]
                        if slot.trial is not None:  # died mid-trial
                            reason = f"worker crashed (exit code {code})" if code and code > 0 else (
                                f"worker killed by signal {-code}" if code else "worker exited mid-trial")
                            self.fail_and_retry(slot.trial, reason)
                            self.progress.trial_failed(slot.trial, reason)
                        if code == EXIT_SETUP_FAILED:
                            setup_error = self.setup_error or f"worker {i} stopped (exit code {code})"
                            self.stop.set()
                            continue
                        if len(self.failures) >= o.max_failures and not self.stop.is_set():
                            self.stop_reason = f"--max-failures {o.max_failures} reached"
                            self.stop.set()
                        if code in (EXIT_BUDGET_DONE, EXIT_STOPPED, EXIT_OVER_BUDGET) or self.stop.is_set():
                            continue
                        finished, _ = finished_and_running(self.study)
                        if finished < o.trials:  # recycle, failed trial, crash: replace the worker
                            slots[i] = self._start(i)
                    time.sleep(0.2)
        except BenchError:
            self._stop_workers(slots)
            raise
        except KeyboardInterrupt:
            self._stop_workers(slots)
            for slot in slots.values():
                if slot.trial is not None:
                    self.fail_and_retry(slot.trial, "interrupted by the user (Ctrl-C)")
            self.run.update_manifest(status="interrupted")
            self.console.print(f"[yellow]Interrupted. Finished trials are kept; run the same command again to "
                               f"continue the study.[/] Run directory: {self.run.path}")
            return 130
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if setup_error:
            raise BenchError(f"The search stopped: {setup_error}")
        return 0

    setup_error: str | None = None

    def _tick(self, now: float) -> None:
        """Called every turn of the loop (a --time-limit search keeps its clock and deadlines here)."""

    def _stop_workers(self, slots: dict[int, _Slot]) -> None:
        self.stop.set()
        for slot in slots.values():
            slot.process.kill()
        for slot in slots.values():
            slot.process.join(10)

    def _drain(self, slots: dict[int, _Slot]) -> None:
        while True:
            try:
                kind, payload = self.queue.get_nowait()
            except queue_module.Empty:
                return
            slot = slots.get(payload.get("worker"))
            if kind == "ready" and "environment" not in self.run.manifest():
                self.run.update_manifest(environment=payload["environment"])
            elif kind == "setup_failed":
                self.setup_error = payload["error"]
            elif kind == "trial_start" and slot is not None:
                slot.trial, slot.trial_started = payload["number"], time.monotonic()
            elif kind == "not_started":
                self.console.print(f"trial {payload['number']} {payload['reason']}", highlight=False)
            elif kind == "tracking_failed":
                self.tracking_errors.append(f"trial {payload['number']}: {payload['error']}")
            elif kind == "trial_end":
                if slot is not None:
                    slot.trial = None
                if payload["state"] == "FAIL":
                    self.failures.append(f"trial {payload['number']}: {payload.get('reason')}")
            self.progress.event(kind, payload)

    # ---- the end --------------------------------------------------------------------------
    def _final_is_stale(self) -> bool:
        if final_is_current(self.run, self.o.operating_points, self.o.variants):
            self.console.print("Held-out evaluation is up to date (final.json covers the best trial of each backbone).")
            return False
        return True

    def finish(self, code: int) -> int:
        from bench.search.summary import print_summary

        self.study = optuna.load_study(study_name=self.study_name, storage=self.storage)
        finished, running = finished_and_running(self.study)
        status = "complete" if finished >= self.o.trials else ("stopped" if self.stop_reason else "incomplete")
        self.run.update_manifest(status=status if code == 0 else "interrupted", finished_trials=finished)
        print_summary(self.console, self.study, self.run.path, describe_storage(self.storage), self.data,
                      self.space.metric)
        if self.stop_reason:
            self.console.print(f"[yellow]Stopped: {self.stop_reason}.[/]")
        if self.failures:
            self.console.print(f"{len(self.failures)} failed trial(s) in this session:")
            for line in self.failures[-10:]:
                self.console.print(f"  {line}")
        if self.tracking_errors:  # the trials themselves are in the study; only their MLflow runs are missing
            self.console.print(f"[yellow]MLflow: {len(self.tracking_errors)} trial(s) of this session not logged to "
                               f"{redact(self.o.mlflow or '')}:[/]")
            for line in self.tracking_errors[-10:]:
                self.console.print(f"  {line}", markup=False, highlight=False)
        # Whatever ended the search (its budget, --timeout, --max-failures), its best trials get their
        # held-out numbers: a user who budgets by time is owed them too. Only Ctrl-C (code 130,
        # returned before this) skips it.
        complete = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if code == 0 and self.o.final and complete:
            if status != "complete":
                self.console.print(f"The search ended after {finished} of {self.o.trials} trials; the held-out "
                                   "evaluation uses the best trials so far.")
            if self.o.storage is not None:
                # A shared study: this machine's run directory holds only its own trials.
                self.console.print("Shared storage: when every machine has finished, run the held-out evaluation "
                                   f"once, on any machine: `bench final --run {self.run.path}"
                                   f"{' --mlflow ' + redact(self.o.mlflow) if self.o.mlflow else ''}` (it reads every "
                                   "machine's trials from the study).")
            elif self._final_is_stale():
                code = run_final_in_subprocess(self.ctx if hasattr(self, "ctx") else mp.get_context("spawn"),
                                               self.run.path, self.o.registry, self.console, mlflow=self.o.mlflow,
                                               operating_points=self.o.operating_points, variants=self.o.variants)
        if self.stop_reason and self.stop_reason.startswith("--max-failures"):
            return 1
        return code


def load_search_inputs(o: SearchOptions) -> tuple[Path, Any, dict[str, Any], int | None]:
    """Checks of --trials and --precision, the space, the pinned values and the reference image size.

    Shared by both engines (Optuna here, KerasTuner in ``kerastuner.py``). The reference size is
    the one whose cache is built up front and whose splits every trial uses: pinned on the command
    line, else fixed by the space, else the dataset's own.
    """
    if o.trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {o.trials}.")
    if o.precision not in devices.PRECISIONS:
        raise ConfigError(f"--precision must be one of {', '.join(devices.PRECISIONS)}, got {o.precision!r}.")
    space_path = resolve_space(o.space)
    space = load_space(space_path)
    fixed = dict(o.fixed)
    if o.size is not None:
        fixed["size"] = o.size
    fixed = space.check_fixed(fixed)
    size = fixed.get("size")
    if size is None and "size" in space and space.param("size").kind == "fixed":
        size = space.param("size").value
    return space_path, space, fixed, size


def search_data_kwargs(o: SearchOptions) -> dict[str, Any]:
    """``prepare_data`` arguments (all but the size) of a search: the same call, the same splits."""
    return {name: getattr(o, name) for name in DataSettings.__dataclass_fields__}


def print_split(console: Any, data: Any) -> None:
    """The split a search scores on, and what it took out of the data."""
    s = data.splits
    console.print(f"{data.spec.name}: {data.protocol_phrase} on {int(s.cv.sum())} images; held-out "
                  f"test {int(s.test.sum())} images ({s.rule}), never used by the search", highlight=False)
    for line in data.split_lines():
        console.print(line, highlight=False)


def write_search_manifest(run: RunDir, o: SearchOptions, data: Any, space: Any, space_path: Path, *, engine: str,
                          fields: dict[str, Any], session: dict[str, Any]) -> None:
    """A search's manifest and splits.csv; a continued search only gets a new session entry."""
    session = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
               "command": o.command, "trials": o.trials, **session}
    if run.file("manifest").exists():
        manifest = run.manifest()
        run.update_manifest(sessions=[*manifest.get("sessions", []), session], status="running")
        return
    run.write_manifest({
        "kind": "search", "engine": engine, "bench_version": __version__,
        "dataset_arg": o.dataset, "folds": o.folds, "command": o.command, **fields,
        "space": str(space_path), "space_fingerprint": space.fingerprint,
        "objective": {"metric": space.metric, "direction": space.direction},
        "seeds": {"split": o.seed, "study": o.seed},
        "sessions": [session], "status": "running", **data.summary(),
    })
    data.write_splits(run)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # signal.signal works only there


def run_search(options: SearchOptions, console: Any) -> int:
    return drive(Supervisor(options, console))


def drive(supervisor: Supervisor) -> int:
    """Prepare, run the workers, then finish (held-out step); Ctrl-C (130) skips the finish."""
    supervisor.prepare()
    with supervisor.run.failed_on_error():
        code = supervisor.run_workers()
    if code == 130:
        return code
    return supervisor.finish(code)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in sys.argv)
