"""``bench run --engine kerastuner``: the same space, folds and budget through KerasTuner's tuners.

So that search strategies can be compared on one dataset, everything but the strategy is the
Optuna engine's: the data is prepared by the same call (same seed, so the same held-out test set
and the same folds, written to ``splits.csv``), the space is the same TOML file
(``SearchSpace.to_keras_tuner``), each trial's seed is ``trial_seed(--seed, trial number)``, and
each trial is scored by ``cross_validate`` on the saved folds (one compiled model per trial,
reused across folds). The run directory gets the same records: ``config.json``, the per-fold rows
(``folds/metrics/predictions/history.csv``) and one ``trials.csv`` row per finished trial with
``engine = kerastuner``; the summary at the end is built from those records.

Tuners: ``random`` and ``bayesian`` (``max_trials = --trials``) and ``hyperband`` (the space's
``epochs``, its largest value if searched, is ``max_epochs``; each trial trains for Hyperband's
``tuner/epochs``). Bayesian starts with 3 random trials per searched dimension (KerasTuner's rule,
without counting the space's fixed values as dimensions), then follows its Gaussian process.
``--trials`` counts COMPLETE trials for every tuner: a failed trial (NaN loss, an error) is a FAIL
row with its reason and does not use the budget, Hyperband is stopped once the budget is met, and
``--max-failures`` failed trials in one session stop the search (exit 1). An oracle with no
untried configuration left ends the search early (status "exhausted").

Hyperband here trains each trial from scratch for ``tuner/epochs`` epochs: a later-round trial
does not inherit the weights of the trial it continues (that would mean saving k fold models per
trial). Rounds therefore cost more than in KerasTuner's own Keras tuner, but every trial is scored
on exactly the epochs it reports, like the Optuna engine's trials.

When the budget is met, each backbone's best trial is refit and scored once on the held-out
test set (``bench final``, in a child process), as the Optuna engine does; ``--no-final`` skips it.

KerasTuner runs in this process, one trial at a time, with no worker processes: there is no
``--jobs``, ``--trial-timeout`` or ``--storage`` (those are rejected), and a crash of the training
framework ends the search. Its state lives in ``<run>/kerastuner/`` and is reloaded
(``overwrite=False``), so running the same command again continues to the same total; a trial the
previous session did not finish (killed, Ctrl-C) is recorded as failed and not re-run, as in the
Optuna engine (where it gets a new number).

KerasTuner's Keras tuner imports ``tensorboard`` in its own ``run_trial`` (undeclared by it, and
TensorFlow >= 2.20 no longer installs it); this engine replaces ``run_trial`` and needs neither,
but a missing module during a trial stops the search with a message naming it, instead of failing
every trial while ``search()`` returns normally.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import math
import os
import socket
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench import paths
from bench.errors import BenchError, ConfigError, close_matches
from bench.results import RunDir
from bench.search.pruners import DEFAULT_PRUNER
from bench.search.runner import (
    IDENTITY_KEYS,
    SearchOptions,
    load_search_inputs,
    print_split,
    search_data_kwargs,
    write_search_manifest,
)

ENGINE = "kerastuner"
TUNERS = ("hyperband", "bayesian", "random")
PROJECT = "kerastuner"  # KerasTuner's project directory, inside the run directory
HYPERBAND_FACTOR = 3
# Hyperband repeats its brackets until --trials trials completed (the budget stops it, not this).
HYPERBAND_ITERATIONS = 1_000_000
# KerasTuner's own "N consecutive failures" stop would raise out of search(); --max-failures decides.
NEVER = 1_000_000_000
COMPLETED, FAILED = "COMPLETED", "FAILED"  # keras_tuner TrialStatus values
CHECKED = (*IDENTITY_KEYS, "engine", "tuner", "max_epochs")
INTERRUPTED = "interrupted: the search stopped during this trial (killed or Ctrl-C); not re-run"


def oracle_seed(seed: int) -> int:
    """KerasTuner takes a seed of 0 to mean "pick one at random": shift it so --seed 0 is repeatable."""
    return seed + 1


@functools.cache
def _keras_tuner() -> Any:
    try:
        import keras_tuner
    except ImportError as err:
        missing = getattr(err, "name", None) or str(err)
        raise BenchError(
            f"--engine kerastuner needs keras-tuner, which could not be imported: {err}. Install it (and "
            f"its undeclared dependencies) with: pip install keras-tuner six  (missing: {missing})"
        ) from None
    return keras_tuner


@functools.cache
def _classes() -> tuple[Any, Any, Any]:
    """KerasTuner subclasses, defined on first use so that `import bench.search.kerastuner` stays light."""
    kt = _keras_tuner()

    class SpaceModel(kt.HyperModel):
        """Registers the search space on a ``HyperParameters``; builds no model (run_trial does)."""

        def __init__(self, space: Any, fixed: dict[str, Any]) -> None:
            super().__init__(name=f"bench-{space.name}")
            self.space, self.fixed = space, fixed

        def build(self, hp: Any) -> dict[str, Any]:
            return self.space.to_keras_tuner(hp, self.fixed)

    class FatalTrialError(kt.errors.FatalError):
        """Not this trial's fault (a missing module): stop the search instead of failing every trial."""

    class BenchTuner(kt.Tuner):
        """Hands every trial to ``KerasTunerSearch``; KerasTuner keeps the oracle and its state."""

        def __init__(self, search: KerasTunerSearch, **kwargs: Any) -> None:
            self.bench = search
            super().__init__(**kwargs)

        def pre_create_trial(self) -> None:
            self.bench.before_trial()

        def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> float:
            return self.bench.run_trial(trial)

        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)  # the oracle records the result, then the state is saved
            self.bench.after_trial(trial)

    return SpaceModel, BenchTuner, FatalTrialError


class KerasTunerSearch:
    def __init__(self, options: SearchOptions, tuner: str, console: Any) -> None:
        self.o = options
        self.tuner_name = (tuner or "").strip().lower()
        self.console = console
        self.failures: list[str] = []  # failed trials of this session
        self.stop_reason: str | None = None
        self.exhausted = False
        self.info: dict[str, dict[str, Any]] = {}  # trial_id -> config, seconds, reason of a running trial
        self.progress: Any = None
        self.tuner: Any = None

    # ---- set-up ---------------------------------------------------------------------------
    def prepare(self) -> None:
        from bench.training.experiment import DataBySize, prepare_data

        o = self.o
        if self.tuner_name not in TUNERS:
            raise ConfigError(f"--tuner must be one of {', '.join(TUNERS)}, got {self.tuner_name!r}."
                              f"{close_matches(self.tuner_name, TUNERS)}")
        self._reject_optuna_options()
        self.space_path, self.space, fixed, self.size = load_search_inputs(o)
        self.max_epochs: int | None = None
        if self.tuner_name == "hyperband":
            self.max_epochs, fixed = self._hyperband_epochs(fixed)
        self.fixed = fixed
        self.data = prepare_data(**search_data_kwargs(o), size=self.size)
        self.o = o = replace(o, folds=self.data.splits.folds)  # the dataset's default when --folds is not given
        print_split(self.console, self.data)
        self.data_for = DataBySize(self.data)
        self.name = f"{self.data.spec.name}-{self.space.name}-{ENGINE}-{self.tuner_name}"
        parent = o.runs_dir or paths.runs_dir()
        self.run = RunDir.open_or_create(o.out or parent / self.data.spec.name / self.name)
        self.project_dir = self.run.path / PROJECT
        self._check_identity()
        write_search_manifest(
            self.run, o, self.data, self.space, self.space_path, engine=ENGINE,
            fields={"tuner": self.tuner_name, "identity": self.identity(),
                    "kerastuner": {"project": str(self.project_dir), "oracle_seed": oracle_seed(o.seed),
                                   "max_epochs": self.max_epochs,
                                   "factor": HYPERBAND_FACTOR if self.max_epochs else None}},
            # The tuner chooses the backbones too: its allocation, whatever --allocation says.
            session={"tuner": self.tuner_name, "max_failures": o.max_failures, "allocation": "tuner"},
        )

    def _reject_optuna_options(self) -> None:
        o = self.o
        problems = []
        if o.jobs != 1:
            problems.append("--jobs (KerasTuner runs its trials one at a time in this process)")
        if o.trial_timeout:
            problems.append("--trial-timeout (it needs worker processes, which this engine does not use)")
        if o.storage:
            problems.append(f"--storage (KerasTuner keeps its state in <run directory>/{PROJECT})")
        if o.study:
            problems.append("--study (the run directory is <dataset>-<space>-kerastuner-<tuner>, or --out)")
        if o.sampler != "tpe" or o.pruner != DEFAULT_PRUNER:
            problems.append("--sampler/--pruner (they choose Optuna's strategy; choose --tuner instead)")
        if problems:
            raise ConfigError("Not available with --engine kerastuner: " + "; ".join(problems) + ".")

    def _hyperband_epochs(self, fixed: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Hyperband's max_epochs: the pinned or fixed epochs, the largest searched one, else the default.

        Epochs are then pinned (Hyperband chooses each trial's, as ``tuner/epochs``), so they are
        not a searched KerasTuner hyperparameter.
        """
        if "epochs" in fixed:
            max_epochs = int(fixed["epochs"])
        elif "epochs" in self.space:
            options = self.space.param("epochs").options() or [self.space.param("epochs").high]
            max_epochs = int(max(options))
            if len(options) > 1:
                self.console.print(f"hyperband: the space searches epochs {options}; Hyperband chooses each "
                                   f"trial's epochs up to max_epochs = {max_epochs} instead.")
        else:
            from bench.training.train import TrainConfig

            max_epochs = TrainConfig.epochs
        return max_epochs, self.space.check_fixed({**fixed, "epochs": max_epochs})

    def identity(self) -> dict[str, Any]:
        """What a continued search must match (the Optuna engine's identity, plus the tuner)."""
        return {
            "dataset": self.data.spec.name, "dataset_fingerprint": self.data.cache.fingerprint,
            "splits_digest": self.data.splits_digest, "space_fingerprint": self.space.fingerprint,
            "folds": self.o.folds, "seed": self.o.seed, "metric": self.space.metric,
            "size": self.data.size, "space_name": self.space.name, "engine": ENGINE, "tuner": self.tuner_name,
            "max_epochs": self.max_epochs,
        }

    def _check_identity(self) -> None:
        if not self.run.file("manifest").exists():
            return
        manifest = self.run.manifest()
        if manifest.get("kind") != "search" or manifest.get("engine") != ENGINE:
            what = f"an {manifest.get('engine')} search" if manifest.get("kind") == "search" else \
                f"a '{manifest.get('kind', 'bench')}' run"
            raise ConfigError(f"{self.run.path} holds {what}, not a KerasTuner search; choose another --out.")
        mine, theirs = self.identity(), manifest.get("identity") or {}
        differ = [k for k in CHECKED if theirs.get(k) != mine[k]]
        if differ:
            lines = "; ".join(f"{k}: search has {theirs.get(k)!r}, this command {mine[k]!r}" for k in differ)
            raise ConfigError(
                f"The KerasTuner search in {self.run.path} was created with a different setup ({lines}). Its "
                f"trials would not be comparable. Use the original dataset, space, --folds, --seed and --tuner "
                f"to continue it, or another --out."
            )

    # ---- KerasTuner -----------------------------------------------------------------------
    def _oracle(self) -> Any:
        kt = _keras_tuner()
        objective = kt.Objective(self.space.metric, "max" if self.space.direction == "maximize" else "min")
        common = dict(objective=objective, seed=oracle_seed(self.o.seed), max_retries_per_trial=0,
                      max_consecutive_failed_trials=NEVER)
        if self.tuner_name == "random":
            oracle = kt.oracles.RandomSearchOracle(max_trials=self.o.trials, **common)
        elif self.tuner_name == "bayesian":
            oracle = kt.oracles.BayesianOptimizationOracle(max_trials=self.o.trials, **common)
        else:
            oracle = kt.oracles.HyperbandOracle(max_epochs=self.max_epochs, factor=HYPERBAND_FACTOR,
                                                hyperband_iterations=HYPERBAND_ITERATIONS, **common)
        oracle.verbose = 0  # no KerasTuner tables on stdout: the progress display reports
        return oracle

    def open_tuner(self) -> Any:
        """The tuner, its project created or reloaded; the run directory's records reconciled with it."""
        space_model, bench_tuner, _ = _classes()
        with contextlib.redirect_stdout(io.StringIO()):  # "Reloading Tuner from ..."
            self.tuner = bench_tuner(self, oracle=self._oracle(), hypermodel=space_model(self.space, self.fixed),
                                     directory=str(self.run.path), project_name=PROJECT, overwrite=False)
        self._check_records()
        self.tuner.save()  # a search killed in its first trial must reload, not start again at trial 0
        if self.tuner_name == "bayesian":
            # KerasTuner's default, 3 random trials per dimension before the Gaussian process, counts
            # the space's fixed values as dimensions; count only what is searched.
            fixed_type = _keras_tuner().engine.hyperparameters.Fixed
            searched = [hp for hp in self.oracle.hyperparameters.space if not isinstance(hp, fixed_type)]
            self.oracle.num_initial_points = max(3 * len(searched), 3)
            settings = self.run.manifest().get("kerastuner") or {}
            self.run.update_manifest(kerastuner={**settings, "num_initial_points": self.oracle.num_initial_points})
        self._recover_interrupted()
        self._add_missing_rows()
        return self.tuner

    @property
    def oracle(self) -> Any:
        return self.tuner.oracle

    def counts(self) -> tuple[int, int]:
        """(completed, failed) trials in KerasTuner's state: the budget's source of truth."""
        statuses = [t.status for t in self.oracle.trials.values()]
        return statuses.count(COMPLETED), statuses.count(FAILED)

    def _check_records(self) -> None:
        known = {int(i) for i in self.oracle.trials}
        recorded = set()
        for key, column in (("trials", "number"), ("folds", "trial")):
            table = self.run.table(key)
            if not table.empty:
                recorded |= {int(n) for n in table[column]}
        unknown = sorted(recorded - known)
        if unknown:
            raise ConfigError(
                f"{self.run.path} records trial(s) {unknown[:10]} that the KerasTuner project in {self.project_dir} "
                f"does not know (was it deleted or replaced?). Continuing would reuse their numbers; start a new "
                f"search with another --out."
            )

    def _recover_interrupted(self) -> None:
        """Trials the previous session left running: KerasTuner would re-run them under the same number,
        next to their partial fold rows; record them as failed instead."""
        configs = self.run.configs()
        queue = self.oracle._retry_queue  # KerasTuner puts reloaded ongoing trials here
        for trial_id in list(queue):
            queue.remove(trial_id)
            trial = self.oracle.trials[trial_id]
            trial.status, trial.message = FAILED, INTERRUPTED
            config = configs.get(int(trial_id))
            self.info[trial_id] = {"reason": INTERRUPTED, "config": config,
                                   "backbone": (config or {}).get("backbone"), "session": False}
            self.tuner.on_trial_end(trial)

    def _add_missing_rows(self) -> None:
        """A trial KerasTuner recorded as finished but trials.csv lacks (killed between the two writes)."""
        table = self.run.table("trials")
        have = set() if table.empty else {int(n) for n in table.number}
        configs = self.run.configs()
        for trial_id, trial in sorted(self.oracle.trials.items(), key=lambda kv: int(kv[0])):
            if int(trial_id) in have or trial.status not in (COMPLETED, FAILED):
                continue
            config = configs.get(int(trial_id)) or {}
            reason = None if trial.status == COMPLETED else _last_line(trial.message)
            self.run.append_trial(_row(int(trial_id), trial.status, trial.score, config, None, reason))

    # ---- the loop -------------------------------------------------------------------------
    def before_trial(self) -> None:
        """Before KerasTuner asks its oracle for a trial: allow exactly what the budget has left."""
        completed, _ = self.counts()
        remaining = self.o.trials - completed
        if remaining > 0 and len(self.failures) >= self.o.max_failures:
            self.stop_reason = f"--max-failures {self.o.max_failures} reached"
        elif remaining > 0 and self.o.timeout and time.monotonic() - self.t_start > self.o.timeout:
            self.stop_reason = f"--timeout {self.o.timeout:g} s reached"
        # Oracle.create_trial stops once len(trials) >= max_trials; failed trials are among them but
        # must not use the budget. Hyperband has no max_trials of its own: this is its stop.
        self.oracle.max_trials = len(self.oracle.trials) + remaining if remaining > 0 and not self.stop_reason else -1

    def run_trial(self, trial: Any) -> float:
        import keras

        from bench.search.objective import (
            config_from_values,
            summarize_folds,
            trial_seed,
        )

        kt = _keras_tuner()
        _, _, fatal = _classes()
        t0 = time.perf_counter()
        number = int(trial.trial_id)
        info = self.info.setdefault(trial.trial_id, {"session": True})

        def fail(reason: str) -> None:
            info.update(reason=reason, seconds=round(time.perf_counter() - t0, 2))
            raise kt.errors.FailedTrialError(reason)

        hp = trial.hyperparameters
        try:
            values = self.space.to_keras_tuner(hp, self.fixed)
            if "tuner/epochs" in hp.values:  # Hyperband: this trial's epochs
                values["epochs"] = int(hp.values["tuner/epochs"])
            config = config_from_values(values, trial_seed(self.o.seed, number))
        except BenchError as err:
            fail(str(err))
        info.update(config=config.to_dict(), backbone=config.backbone)
        self.run.write_config(number, config.to_dict())
        self.emit("trial_start", {"number": number, "backbone": config.backbone, "folds": self.o.folds})
        metric = self.space.metric

        def on_fold(score: Any) -> None:
            if score.status == "ok":
                self.emit("fold", {"number": number, "fold": score.fold, "value": score.metrics.get(metric, math.nan)})

        def on_epoch(fold: int, epoch: int, logs: dict[str, float]) -> None:
            self.emit("epoch", {"number": number, "fold": fold, "epoch": epoch, "epochs": config.epochs})

        from bench.training.experiment import cross_validate

        keras.backend.clear_session()  # as KerasTuner does before building a trial's model
        gc.collect()
        try:
            data = self.data_for(config.size)
            scores = cross_validate(data, config, self.run, trial=number, on_fold=on_fold, on_epoch=on_epoch,
                                    stop_after_fold=lambda s: s.status != "ok")
        except ImportError as err:
            info.update(reason=f"{type(err).__name__}: {err}", seconds=round(time.perf_counter() - t0, 2))
            raise fatal(
                f"trial {number} could not import {getattr(err, 'name', None) or 'a module'} ({err}); every trial "
                f"would fail the same way. Install it (pip install {getattr(err, 'name', None) or '...'}) and run "
                f"the same command again to continue."
            ) from err
        except BenchError as err:
            fail(str(err))
        except Exception as err:  # out of memory, a framework error, a bug: this trial fails, the search goes on
            fail(f"{type(err).__name__}: {err}"[:2000])
        summary = summarize_folds(scores, metric)
        info["seconds"] = round(time.perf_counter() - t0, 2)
        failed = [s for s in scores if s.status != "ok"]
        if failed:
            fail(f"fold {failed[0].fold + 1}: {failed[0].status}")
        value = float(np.mean(summary["fold_values"])) if summary["fold_values"] else math.nan
        if not math.isfinite(value):
            fail(f"objective {metric} is undefined on these folds")
        return value

    def after_trial(self, trial: Any) -> None:
        """KerasTuner has recorded the trial's end: one trials.csv row, and the progress display."""
        trial = self.oracle.trials[trial.trial_id]
        info = self.info.pop(trial.trial_id, {})
        number = int(trial.trial_id)
        complete = trial.status == COMPLETED
        reason = None if complete else (info.get("reason") or _last_line(trial.message) or "failed")
        config = info.get("config") or {}
        self.run.append_trial(_row(number, trial.status, trial.score if complete else None, config,
                                   info.get("seconds"), reason))
        if not complete and info.get("session", True):
            self.failures.append(f"trial {number}: {reason}")
        self.emit("trial_end", {"number": number, "state": "COMPLETE" if complete else "FAIL",
                                "value": trial.score if complete else None, "backbone": config.get("backbone"),
                                "reason": reason, "seconds": info.get("seconds")})

    def emit(self, kind: str, payload: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.event(kind, {"worker": 0, "pid": os.getpid(), **payload})

    def _fail_ongoing(self, reason: str) -> None:
        for trial in list(self.oracle.ongoing_trials.values()):
            trial.status, trial.message = FAILED, reason
            info = self.info.setdefault(trial.trial_id, {"session": True})
            info.setdefault("reason", reason)
            self.tuner.on_trial_end(trial)

    def search(self) -> int:
        """Run trials until --trials completed (or a stop); 130 after Ctrl-C."""
        from bench import environment
        from bench.search import devices
        from bench.search.progress import Progress

        _, _, fatal = _classes()
        devices.apply_precision(self.o.precision)
        if "environment" not in self.run.manifest():
            self.run.update_manifest(environment=environment.describe())
        self.open_tuner()
        completed, _ = self.counts()
        if completed >= self.o.trials:
            self.console.print(f"The search already has {completed} completed trials (--trials {self.o.trials}): "
                               f"nothing to run.")
            return 0
        self.progress = Progress(self.console, total=self.o.trials, folds=self.o.folds, metric=self.space.metric,
                                 direction=self.space.direction)
        self.progress.set_counts(self._as_study())
        self.t_start = time.monotonic()
        interrupted, fatal_error = False, None
        with self.progress:
            try:
                self.tuner.search()
            except KeyboardInterrupt:
                interrupted = True
                self._fail_ongoing("interrupted by the user (Ctrl-C)")
            except fatal as err:
                fatal_error = err
                self._fail_ongoing(str(err))
        self.progress = None
        if interrupted:
            self.run.update_manifest(status="interrupted")
            self.console.print(f"[yellow]Interrupted. Finished trials are kept; run the same command again to "
                               f"continue the search.[/] Run directory: {self.run.path}")
            return 130
        if fatal_error is not None:
            self.run.update_manifest(status="failed")
            raise BenchError(f"The KerasTuner search stopped: {fatal_error}")
        completed, _ = self.counts()
        if completed < self.o.trials and not self.stop_reason:
            self.exhausted = True  # the oracle stopped by itself: no untried configuration left
        return 0

    # ---- the end --------------------------------------------------------------------------
    def finish(self, code: int) -> int:
        from bench.search.summary import print_run_summary

        completed, failed = self.counts() if self.tuner is not None else (0, 0)
        if completed >= self.o.trials:
            status = "complete"
        else:
            status = "stopped" if self.stop_reason else ("exhausted" if self.exhausted else "incomplete")
        self.run.update_manifest(status=status, finished_trials=completed, failed_trials=failed)
        where = f"KerasTuner {self.tuner_name} ({type(self.oracle).__name__}), project {self.project_dir}"
        print_run_summary(self.console, self.run, self.data, self.space.metric, self.space.direction, where)
        if self.stop_reason:
            self.console.print(f"[yellow]Stopped: {self.stop_reason}.[/]")
        if self.exhausted:
            self.console.print(f"[yellow]KerasTuner's {self.tuner_name} oracle has no untried configuration left: "
                               f"{completed} of --trials {self.o.trials} completed.[/]")
        if self.failures:
            self.console.print(f"{len(self.failures)} failed trial(s) in this session:")
            for line in self.failures[-10:]:
                self.console.print(f"  {line}")
        if self.stop_reason and self.stop_reason.startswith("--max-failures"):
            return 1
        if completed == 0:
            return 1
        if code == 0 and status == "complete" and self.o.final:
            # As the Optuna engine: each backbone's best trial refit and scored once on the held-out test.
            import multiprocessing as mp

            from bench.search.heldout import run_final_in_subprocess

            code = run_final_in_subprocess(mp.get_context("spawn"), self.run.path, self.o.registry, self.console,
                                           operating_points=self.o.operating_points, variants=self.o.variants)
        return code

    def _as_study(self) -> Any:
        """The oracle's trials shaped like an Optuna study, for ``Progress.set_counts``."""
        from optuna.trial import TrialState

        states = {COMPLETED: TrialState.COMPLETE, FAILED: TrialState.FAIL}
        # params: the trial's values (its backbone) for the live panel's trials per entry.
        trials = [SimpleNamespace(number=int(i), state=states.get(t.status, TrialState.RUNNING),
                                  value=t.score if t.status == COMPLETED else None, user_attrs={}, system_attrs={},
                                  params=dict(t.hyperparameters.values))
                  for i, t in self.oracle.trials.items()]
        return SimpleNamespace(get_trials=lambda deepcopy=False, states=None: trials)


def _last_line(message: str | None) -> str | None:
    lines = [line for line in (message or "").strip().splitlines() if line.strip()]
    return lines[-1].strip()[:2000] if lines else None


def _row(number: int, status: str, value: float | None, config: dict[str, Any], seconds: float | None,
         reason: str | None) -> dict[str, Any]:
    """A trials.csv row in the Optuna engine's columns."""
    return {
        "number": number, "state": "COMPLETE" if status == COMPLETED else "FAIL", "value": value,
        "backbone": config.get("backbone"), "params": config, "seconds": seconds, "pruned_at_fold": None,
        "fail_reason": reason, "engine": ENGINE, "host": socket.gethostname(),
    }


def run_kerastuner(options: dict[str, Any], tuner: str, console: Any) -> int:
    """``bench run --engine kerastuner --tuner hyperband|bayesian|random``; returns the exit code."""
    fields = dict(options)
    if isinstance(fields.get("out"), str):
        fields["out"] = Path(fields["out"])
    search = KerasTunerSearch(SearchOptions(**fields), tuner, console)
    search.prepare()
    code = search.search()
    if code == 130:
        return code
    return search.finish(code)
