"""Load run directories into tidy pandas frames, merging copies of one study.

Everything the report shows comes from here, and everything here comes through
``bench.results.RunDir``: the report never opens a run directory's files itself.

Merging. Run directories copied from several machines into one folder (the same study, each
holding the trials that machine ran) become one study: records are concatenated and a trial
present in several copies is taken from the first copy (in path order) that has it, so it is
counted once. Two directories that merely share a study name but hold *different* results
for the same trial number (two separate SQLite studies with the default name) are not merged:
the later one becomes its own study, named ``<study>@<run>``, and a note says so.

Missing or unreadable files never raise: each becomes a ``Note`` that the report shows in the
section that needed the file, marked as a problem (``bench report --strict`` fails on those).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import DataError
from bench.evaluation.grouping import Entry
from bench.report.points import as_metric_rows
from bench.results import FILES, RunDir, trial_record

KEY_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity", "mcc")
DEFAULT_OBJECTIVE = {"metric": "balanced_accuracy", "direction": "maximize"}

# What each file is needed for, to say what is missing in words a reader can act on.
NEEDED_FOR = {
    "config": "the trial configurations (reproduce commands)",
    "splits": "the split sizes",
    "folds": "timings and parameter counts",
    "metrics": "the cross-validation scores (leaderboard)",
    "predictions": "out-of-fold confusion matrices and ROC curves",
    "history": "training curves",
    "trials": "the list of search trials",
}
EXPECTED = {
    "search": ("config", "splits", "folds", "metrics", "predictions", "history", "trials"),
    "cv": ("config", "splits", "folds", "metrics", "predictions", "history"),
}
TRIAL_TABLES = ("folds", "metrics", "predictions", "history")
HELD_OUT_TABLES = ("test_metrics", "test_predictions", "test_variants", "calibration", "operating_points")  # per backbone (bench final)
FINISHED_STATUSES = ("complete", "complete_with_failures", "stopped", "incomplete")


@dataclass(frozen=True)
class Note:
    """Something the reader must know: a missing file, an interrupted run, a skipped plot."""

    text: str
    dataset: str | None = None  # None: about the whole report
    section: str = "overview"  # overview, leaderboard, models, search, significance, ...
    problem: bool = True  # something is missing or broken (--strict fails), not just a fact worth knowing


@dataclass
class Run:
    """One run directory and what its manifest says about it."""

    label: str  # path relative to the folder the runs were found in (posix), for display
    path: Path  # as found (what a reproduce command should name)
    rundir: RunDir
    manifest: dict[str, Any]
    dataset: str
    kind: str  # search | cv
    engine: str  # optuna | kerastuner | cv
    strategy: str  # sampler or tuner (tpe, random, hyperband, ...) or "cv"
    study: str  # merge key within the dataset
    status: str
    objective: dict[str, str]
    present: tuple[str, ...] = ()

    @property
    def folds(self) -> int | None:
        split = self.manifest.get("split") or {}
        return split.get("folds") or self.manifest.get("folds")


@dataclass
class Collection:
    """Every run's records as long-format frames, each with ``dataset``, ``study`` and ``run``."""

    runs: list[Run]
    trials: pd.DataFrame
    folds: pd.DataFrame
    metrics: pd.DataFrame
    predictions: pd.DataFrame
    history: pd.DataFrame
    test_metrics: pd.DataFrame
    test_predictions: pd.DataFrame
    finals: pd.DataFrame
    configs: dict[tuple[str, str, int], dict[str, Any]]
    notes: list[Note] = field(default_factory=list)
    root: Path | None = None
    study_cache: dict[str, Any] = field(default_factory=dict)  # run label -> Optuna study or None
    calibration: pd.DataFrame = field(default_factory=pd.DataFrame)  # bench final: ECE/Brier before and after T
    operating_points: pd.DataFrame = field(default_factory=pd.DataFrame)  # bench final --operating-point
    variants: pd.DataFrame = field(default_factory=pd.DataFrame)  # test_variants.csv rows (bench final --tta ...)
    externals: pd.DataFrame = field(default_factory=pd.DataFrame)  # bench evaluate: metric rows + summary facts
    probes: pd.DataFrame = field(default_factory=pd.DataFrame)  # bench probe: probes.csv rows of every probe run

    @property
    def datasets(self) -> list[str]:
        return sorted({r.dataset for r in self.runs})

    def runs_of(self, dataset: str, study: str | None = None) -> list[Run]:
        return [r for r in self.runs if r.dataset == dataset and (study is None or r.study == study)]

    def studies(self, dataset: str) -> list[str]:
        return sorted({r.study for r in self.runs if r.dataset == dataset})

    def objective(self, dataset: str) -> dict[str, str]:
        """The dataset's objective: that of its searches (the first, by path), else the default."""
        runs = self.runs_of(dataset)
        searches = [r for r in runs if r.kind == "search"]
        return (searches or runs)[0].objective if runs else dict(DEFAULT_OBJECTIVE)

    def manifest(self, dataset: str) -> dict[str, Any]:
        """The manifest of the dataset's first run (dataset facts are the same in all of them)."""
        return self.runs_of(dataset)[0].manifest

    def classes(self, dataset: str) -> list[str]:
        return list((self.manifest(dataset).get("dataset") or {}).get("classes") or [])

    def positive_index(self, dataset: str) -> int | None:
        """For a binary set the index of its positive class (what sensitivity is of)."""
        classes = self.classes(dataset)
        if len(classes) != 2:
            return None
        positive = (self.manifest(dataset).get("dataset") or {}).get("positive")
        return classes.index(positive) if positive in classes else 1

    def notes_for(self, dataset: str | None, section: str) -> list[Note]:
        return [n for n in self.notes if n.dataset == dataset and n.section == section]


# ---- finding run directories ---------------------------------------------------------------------


def find_run_dirs(root: Path) -> list[Path]:
    """Every run directory (a folder with manifest.json) under ``root``, in path order.

    A run directory inside another one is not a separate run (it cannot be: nothing writes
    one there), so the walk does not descend into a run directory.
    """
    root = Path(root)
    if (root / FILES["manifest"]).is_file():
        return [root]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if FILES["manifest"] in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []
    return sorted(found, key=lambda p: p.as_posix())


def resolve_runs(runs: Sequence[Path] | None, runs_dir: Path | None, default_dir: Path) -> tuple[list[Path], Path]:
    """The run directories to report on, and the folder their labels are relative to.

    ``runs``: explicit run directories (or folders holding them); else everything under
    ``runs_dir``, else under ``default_dir``. An empty or missing folder is a ``DataError``
    naming it.
    """
    if runs:
        found: list[Path] = []
        for path in runs:
            if not Path(path).is_dir():
                raise DataError(f"{path} does not exist or is not a directory; give a run directory "
                                f"written by `bench run` or `bench cv`.")
            inside = find_run_dirs(Path(path))
            if not inside:
                raise DataError(f"{path} is not a bench run directory (no {FILES['manifest']}) and holds none.")
            found += [p for p in inside if p not in found]
        parents = [os.path.abspath(p.parent) for p in found]
        root = Path(os.path.commonpath(parents)) if parents else Path(".")
        return found, root
    folder = Path(runs_dir) if runs_dir is not None else Path(default_dir)
    if not folder.is_dir():
        raise DataError(f"The runs folder {folder} does not exist. Run `bench run` or `bench cv` first, "
                        f"or point at run directories with --run DIR or --runs-dir DIR.")
    found = find_run_dirs(folder)
    if not found:
        raise DataError(f"No run directories (folders with {FILES['manifest']}) under {folder}. Run `bench run` "
                        f"or `bench cv` first, or point at run directories with --run DIR or --runs-dir DIR.")
    return found, folder


# ---- reading one run -------------------------------------------------------------------------------


def _label(path: Path, root: Path) -> str:
    try:
        rel = Path(os.path.relpath(os.path.abspath(path), os.path.abspath(root)))
    except ValueError:  # another drive on Windows
        rel = path
    label = rel.as_posix()
    return Path(path).name if label in (".", "") or label.startswith("..") else label


def _strategy(manifest: dict[str, Any]) -> str:
    if manifest.get("kind") in ("cv", "probe"):
        return str(manifest["kind"])
    if manifest.get("tuner"):
        return str(manifest["tuner"])
    samplers = [s.get("sampler") or s.get("tuner") for s in manifest.get("sessions") or []]
    samplers = [s for s in samplers if s]
    return "+".join(dict.fromkeys(samplers)) if samplers else "?"


def _read_table(run: Run, key: str, notes: list[Note]) -> pd.DataFrame:
    try:
        return run.rundir.table(key)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as err:
        notes.append(Note(f"{run.label}: {FILES[key]} could not be read ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); "
                          f"{NEEDED_FOR.get(key, 'its records')} are left out for this run.", run.dataset))
        return pd.DataFrame()


def _open_run(path: Path, root: Path, notes: list[Note]) -> Run | None:
    rundir = RunDir(Path(path))
    label = _label(path, root)
    try:
        manifest = rundir.manifest()
    except (OSError, ValueError) as err:
        notes.append(Note(f"{label}: {FILES['manifest']} could not be read ({type(err).__name__}: {err}); "
                          f"this run is left out of the report."))
        return None
    if not isinstance(manifest, dict):
        notes.append(Note(f"{label}: {FILES['manifest']} does not hold a JSON object; this run is left out."))
        return None
    kind = str(manifest.get("kind") or ("search" if rundir.file("trials").exists() else "cv"))
    dataset = str((manifest.get("dataset") or {}).get("name") or manifest.get("dataset_arg") or "unknown")
    engine = kind if kind in ("cv", "probe") else str(manifest.get("engine") or "optuna")
    objective = {**DEFAULT_OBJECTIVE, **(manifest.get("objective") or {})}
    present = tuple(k for k in FILES if rundir.file(k).exists())
    return Run(
        label=label, path=Path(path), rundir=rundir, manifest=manifest, dataset=dataset, kind=kind,
        engine=engine, strategy=_strategy(manifest), study=str(manifest.get("study") or Path(path).name),
        status=str(manifest.get("status") or "unknown"), objective=objective, present=present,
    )


def _check_run(run: Run, notes: list[Note]) -> None:
    missing = [k for k in EXPECTED.get(run.kind, ()) if k not in run.present]
    for key in missing:
        notes.append(Note(f"{run.label}: {FILES[key]} is missing, so {NEEDED_FOR[key]} are left out for this run.",
                          run.dataset))
    if run.status in ("running", "interrupted", "failed", "unknown"):
        what = {"running": "is still running or was killed without a chance to record it",
                "interrupted": "was interrupted", "failed": "failed",
                "unknown": "has no status in its manifest"}[run.status]
        notes.append(Note(f"{run.label} {what} (manifest status '{run.status}'): the report shows the trials and "
                          f"folds it finished; trials in flight are not counted.", run.dataset))


def _cv_trial_row(run: Run, folds: pd.DataFrame, metrics: pd.DataFrame, config: dict[str, Any] | None) -> dict:
    """A ``bench cv`` run as a one-trial 'search' so the rest of the report treats both alike."""
    metric = run.objective["metric"]
    ok = folds[folds.status == "ok"] if not folds.empty and "status" in folds else folds.iloc[0:0]
    values = metrics[(metrics.metric == metric)].value if not metrics.empty else pd.Series(dtype=float)
    backbone = (config or {}).get("backbone")
    if backbone is None and not folds.empty and "backbone" in folds:
        backbone = str(folds.backbone.iloc[0])
    finished = run.status in FINISHED_STATUSES
    state = "COMPLETE" if finished and len(ok) and len(values) else ("FAIL" if finished else "INTERRUPTED")
    return {
        "number": 0, "state": state, "value": float(values.mean()) if len(values) else math.nan,
        "backbone": backbone or "?", "params": json.dumps(config or {}, sort_keys=True, default=str),
        "seconds": run.manifest.get("seconds", math.nan), "pruned_at_fold": math.nan,
        "fail_reason": None if state != "FAIL" else "every fold failed", "engine": "cv",
        "host": None,
    }


def _tag(frame: pd.DataFrame, run: Run, order: int) -> pd.DataFrame:
    if frame.empty:
        return frame
    frame = frame.copy()
    frame.insert(0, "run", run.label)
    frame.insert(0, "study", run.study)
    frame.insert(0, "dataset", run.dataset)
    frame["_order"] = order
    return frame


# ---- merging ----------------------------------------------------------------------------------------


def _comparable(row: pd.Series) -> tuple:
    value = row.get("value")
    value = None if value is None or (isinstance(value, float) and math.isnan(value)) else round(float(value), 12)
    return (str(row.get("state")), value, str(row.get("params")))


def _split_conflicting_studies(runs: list[Run], trials: dict[str, pd.DataFrame], notes: list[Note]) -> None:
    """Give a run that shares a study name but disagrees on a trial its own study name."""
    seen: dict[tuple[str, str], dict[int, tuple]] = {}
    first_label: dict[tuple[str, str], str] = {}
    for run in runs:
        key = (run.dataset, run.study)
        frame = trials.get(run.label, pd.DataFrame())
        mine = {int(r.number): _comparable(r) for _, r in frame.iterrows()} if not frame.empty else {}
        known = seen.get(key)
        if known is not None and any(n in known and known[n] != v for n, v in mine.items()):
            new = f"{run.study}@{run.label}"
            notes.append(Note(f"{run.label} and {first_label[key]} both call their study '{run.study}' but record "
                              f"different results for the same trial numbers: they are separate studies (separate "
                              f"storages) and are reported apart, this one as '{new}'.", run.dataset,
                              problem=False))
            run.study = new
            key = (run.dataset, run.study)
            known = None
        if known is None:
            seen[key] = dict(mine)
            first_label[key] = run.label
        else:
            for n, v in mine.items():
                known.setdefault(n, v)


def _dedupe_by_trial(frame: pd.DataFrame, trial_col: str = "trial", owners: pd.DataFrame | None = None) -> pd.DataFrame:
    """Keep each (dataset, study, trial)'s rows from one run: its owner (the run whose trials.csv
    record of it was kept) if that run has rows, else the first run (in path order) that has any."""
    if frame.empty:
        return frame
    order = frame["_order"]
    if owners is not None and not owners.empty:
        keys = ["dataset", "study", trial_col]
        owner = frame[keys].merge(owners.rename(columns={"trial": trial_col, "run": "_owner"}), how="left",
                                  on=keys)["_owner"].to_numpy()
        owned = owner == frame["run"].to_numpy()
        order = order.where(owned, order + 1_000_000)
    first = order.groupby([frame["dataset"], frame["study"], frame[trial_col]], sort=False).transform("min")
    return frame[order == first]


def _unrecorded(trials: pd.DataFrame, folds: pd.DataFrame) -> list[int]:
    """Trial numbers with fold records but no trials.csv row."""
    if folds.empty or "trial" not in folds:
        return []
    known = set(trials["number"].astype(int)) if not trials.empty and "number" in trials else set()
    return sorted(int(n) for n in set(folds["trial"].astype(int)) - known)


def load_study(run: Run, cache: dict[str, Any], notes: list[Note]) -> Any:
    """``RunDir.study()`` once per run; None (and a note) if the database cannot be opened."""
    if run.label not in cache:
        study = None
        if run.engine == "optuna" and "study" in run.present:
            try:
                import optuna

                optuna.logging.set_verbosity(optuna.logging.WARNING)
                study = run.rundir.study()
            except Exception as err:  # locked, corrupt or from a newer Optuna: report without it
                notes.append(Note(f"{run.label}: {FILES['study']} could not be opened ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:200] if str(err) else ''}); Optuna's plots are "
                                  f"left out for it.", run.dataset, "search"))
        cache[run.label] = study
    return cache[run.label]


def _rows_from_study(run: Run, numbers: list[int], study: Any) -> pd.DataFrame:
    """trials.csv rows for finished trials the study has but trials.csv lacks (same columns as
    the search writes: the configuration and timings come from the trial's user attributes)."""
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    rows = []
    for n in numbers:
        t = by_number.get(n)
        if t is None or t.state.name not in ("COMPLETE", "PRUNED", "FAIL"):
            continue
        row = trial_record(t)
        rows.append({**row, "params": json.dumps(row["params"], sort_keys=True, default=str)})
    return pd.DataFrame(rows)


def _in_flight(run: Run, trials: pd.DataFrame, folds: pd.DataFrame) -> pd.DataFrame:
    """Trials with finished folds but no record of their end: in flight when the run stopped."""
    if folds.empty or "trial" not in folds:
        return pd.DataFrame()
    known = set(trials["number"].astype(int)) if not trials.empty and "number" in trials else set()
    rows = []
    for number, group in folds.groupby("trial", sort=True):
        if int(number) in known:
            continue
        ok = int((group.status == "ok").sum()) if "status" in group else len(group)
        rows.append({"number": int(number), "state": "INTERRUPTED", "value": math.nan,
                     "backbone": str(group.backbone.iloc[0]) if "backbone" in group else "?", "params": "{}",
                     "seconds": math.nan, "pruned_at_fold": math.nan, "pruned_at_epoch": math.nan,
                     "fail_reason": f"no record of its end: {ok} fold(s) finished when {run.label} stopped",
                     "engine": run.engine, "host": None, "_in_flight": True})
    return pd.DataFrame(rows)


def _concat(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def collect(paths: Sequence[Path], root: Path | None = None) -> Collection:
    """Read the run directories ``paths`` (labels relative to ``root``) into one ``Collection``."""
    notes: list[Note] = []
    if root is None:
        parents = [os.path.abspath(Path(p).parent) for p in paths]
        root = Path(os.path.commonpath(parents)) if parents else Path(".")
    runs = [r for r in (_open_run(Path(p), root, notes) for p in sorted(paths, key=lambda p: _label(p, root)))
            if r is not None]
    if not runs:
        raise DataError("None of the run directories could be read: " + " ".join(n.text for n in notes))
    for run in runs:
        _check_run(run, notes)

    raw: dict[str, dict[str, pd.DataFrame]] = {}
    study_cache: dict[str, Any] = {}
    configs_of: dict[str, dict[int, dict[str, Any]]] = {}
    for run in runs:
        tables = {key: _read_table(run, key, notes) if key in run.present else pd.DataFrame()
                  for key in (*TRIAL_TABLES, "trials", *HELD_OUT_TABLES, "probes")}
        try:
            configs_of[run.label] = run.rundir.configs()
        except (OSError, ValueError) as err:
            notes.append(Note(f"{run.label}: {FILES['config']} could not be read ({type(err).__name__}); "
                              f"{NEEDED_FOR['config']} are left out.", run.dataset))
            configs_of[run.label] = {}
        trials = tables["trials"]
        if run.kind == "cv":
            config = configs_of[run.label].get(0)
            trials = pd.DataFrame([_cv_trial_row(run, tables["folds"], tables["metrics"], config)])
        else:
            if not trials.empty and "number" in trials:
                # A trial can be written twice (failed by a heartbeat, then by its worker): the last wins.
                trials = trials.drop_duplicates("number", keep="last")
            missing = _unrecorded(trials, tables["folds"])
            study = load_study(run, study_cache, notes) if missing else None
            if study is not None:
                found = _rows_from_study(run, missing, study)
                if not found.empty:
                    notes.append(Note(f"{run.label}: {FILES['trials']} has no row for trial(s) "
                                      f"{', '.join(map(str, found.number))}, which {FILES['study']} records as "
                                      f"finished; they are taken from the study.", run.dataset))
                    trials = _concat([trials, found])
        tables["trials"] = trials
        raw[run.label] = tables

    _split_conflicting_studies(runs, {label: t["trials"] for label, t in raw.items()}, notes)

    for run in runs:  # after the conflict check: these rows are inferred, not recorded
        if run.kind == "search":
            extra = _in_flight(run, raw[run.label]["trials"], raw[run.label]["folds"])
            if not extra.empty:
                configs = configs_of[run.label]
                extra["params"] = [json.dumps(configs.get(n, {}), sort_keys=True, default=str) for n in extra.number]
                raw[run.label]["trials"] = _concat([raw[run.label]["trials"], extra])

    order = {run.label: i for i, run in enumerate(runs)}
    merged: dict[str, list[pd.DataFrame]] = {k: [] for k in (*TRIAL_TABLES, "trials", *HELD_OUT_TABLES, "probes")}
    external_frames: list[pd.DataFrame] = []
    final_rows: list[dict[str, Any]] = []
    configs: dict[tuple[str, str, int], dict[str, Any]] = {}
    for run in runs:
        for key, frame in raw[run.label].items():
            merged[key].append(_tag(frame, run, order[run.label]))
        external_frames.append(_tag(_externals(run, notes), run, order[run.label]))
        for number, config in sorted(configs_of[run.label].items()):
            configs.setdefault((run.dataset, run.study, int(number)), config)
        try:
            final = run.rundir.final()
        except (OSError, ValueError) as err:
            notes.append(Note(f"{run.label}: {FILES['final']} could not be read ({type(err).__name__}); "
                              f"held-out test results are left out for this run.", run.dataset))
            final = {}
        for key, info in sorted((final.get("backbones") or {}).items()):
            # An entry of `bench final --by ...` is keyed by its combination and names its backbone.
            entry = Entry.from_final(key, info)
            final_rows.append({"dataset": run.dataset, "study": run.study, "run": run.label,
                               "backbone": entry.backbone, "entry": entry.key, "label": entry.label,
                               # what the report must then show for it (its completeness check)
                               "calibrated": "calibration" in info,  # not before `bench final` calibrated
                               "operating_points": len(info.get("operating_points") or []),
                               "variants": len(info.get("variants") or []),
                               "trial": info.get("trial"), "refit_epochs": info.get("refit_epochs"),
                               "n_train": info.get("n_train"), "n_test": info.get("n_test"),
                               "seconds": info.get("seconds"), "model": info.get("model"),
                               "temperature": (info.get("calibration") or {}).get("temperature"),
                               "explanations": {m: str(p) for m, p in run.rundir.explanation_figures(key).items()},
                               "_order": order[run.label]})

    trials = _concat(merged["trials"])
    if not trials.empty:
        trials = trials.rename(columns={"number": "trial"})
        trials["trial"] = trials["trial"].astype(int)
        if "_in_flight" in trials:  # a recorded end anywhere beats an inferred "in flight"
            inferred = trials["_in_flight"].fillna(False).astype(bool)
            trials["_order"] = trials["_order"].where(~inferred, trials["_order"] + 1_000_000)
            trials = trials.drop(columns="_in_flight")
        trials = _dedupe_by_trial(trials)
    owners = None if trials.empty else trials[["dataset", "study", "trial", "run"]]
    frames = {key: _dedupe_by_trial(_concat(merged[key]), owners=owners) for key in TRIAL_TABLES}
    # Held-out results: one per (study, entry), from the first run that has it.
    held_out = {key: _dedupe_by_trial(_concat(merged[key]), "entry") for key in HELD_OUT_TABLES}
    externals = _dedupe_by_trial(_concat(external_frames), "entry")
    finals = pd.DataFrame(final_rows)
    if not finals.empty:
        finals = _dedupe_by_trial(finals, "entry")

    def tidy(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
        if frame.empty:
            return frame
        frame = frame.drop(columns=["_order"])
        keys = [k for k in keys if k in frame]
        return frame.sort_values(keys, kind="stable").reset_index(drop=True)

    return Collection(
        runs=runs,
        trials=tidy(trials, ["dataset", "study", "trial"]),
        folds=tidy(frames["folds"], ["dataset", "study", "trial", "fold"]),
        metrics=tidy(frames["metrics"], ["dataset", "study", "trial", "fold", "metric"]),
        predictions=tidy(frames["predictions"], ["dataset", "study", "trial", "fold", "path"]),
        history=tidy(frames["history"], ["dataset", "study", "trial", "fold", "metric", "epoch"]),
        test_metrics=tidy(held_out["test_metrics"], ["dataset", "study", "backbone", "metric"]),
        test_predictions=tidy(held_out["test_predictions"], ["dataset", "study", "backbone", "path"]),
        calibration=tidy(held_out["calibration"], ["dataset", "study", "backbone"]),
        operating_points=tidy(held_out["operating_points"], ["dataset", "study", "backbone"]),
        finals=tidy(finals, ["dataset", "study", "backbone"]),
        configs=configs,
        notes=notes,
        root=root,
        study_cache=study_cache,
        variants=tidy(held_out["test_variants"], ["dataset", "study", "backbone", "variant", "metric"]),
        externals=tidy(externals, ["dataset", "study", "external", "backbone", "metric"]),
        probes=tidy(_concat(merged["probes"]), ["dataset", "run"]),  # each probe run is its own
    )


def _externals(run: Run, notes: list[Note]) -> pd.DataFrame:
    """``bench evaluate``'s results of one run: its metric rows, each with its external set's facts."""
    try:
        found = run.rundir.externals()
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        notes.append(Note(f"{run.label}: an external evaluation could not be read ({type(err).__name__}); "
                          f"external results are left out for this run.", run.dataset))
        return pd.DataFrame()
    frames = []
    for slug, (summary, metrics) in found.items():
        overlap = summary.get("overlap") or {}
        # The run's CV thresholds and temperature applied to the set: rows of the same table as its metrics.
        extra = as_metric_rows(run.rundir.external_table(slug, "operating_points"),
                               run.rundir.external_table(slug, "calibration"))
        metrics = _concat([metrics, extra])
        frames.append(metrics.assign(external=slug, external_dataset=summary.get("dataset"),
                                     external_images=summary.get("n_images"),
                                     external_patients=summary.get("n_patients"),
                                     shared_images=overlap.get("shared_images"),
                                     shared_patients=overlap.get("shared_patients"),
                                     overlap_dropped=overlap.get("dropped")))
    return _concat(frames)


# ---- small helpers shared by tables and figures ---------------------------------------------------------


def proba_columns(frame: pd.DataFrame, classes: Sequence[str]) -> list[str]:
    """The ``p_<class>`` columns in class order (a missing one is a DataError naming it)."""
    cols = [f"p_{c}" for c in classes]
    missing = [c for c in cols if c not in frame]
    if missing:
        raise DataError(f"predictions lack the probability columns {missing}")
    return cols


def proba_matrix(frame: pd.DataFrame, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, proba)`` from a predictions frame, exactly as written (no renormalising)."""
    proba = frame[proba_columns(frame, classes)].to_numpy(dtype=np.float64)
    return frame["target"].to_numpy(dtype=np.int64), proba
