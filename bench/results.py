"""The run directory: the one contract between running and reporting.

Only this module reads or writes it. Layout (all CSV in long format so pandas can concatenate
runs from several machines):

    manifest.json      command line, versions, backend, device, seeds, dataset fingerprint,
                       skipped files, duplicates, split rule and sizes, what the split excluded or
                       dropped, and every data setting (``data``: what re-opening the run needs)
    config.json        the training configuration(s) scored (keyed by trial number)
    splits.csv         path, label, group, split (cv|test|excluded), fold (-1 outside CV), excluded_because
                       (why an image is in neither CV nor test: it shares a patient with the test set)
    folds.csv          one row per trial x fold: status, epochs, timings, sizes; features (which
                       path the fold took: ``cached`` = the head trained on cached frozen-backbone
                       outputs, ``computed`` = the backbone ran every epoch), seconds_features and
                       seconds_saved_est (what the cache cost the fold, and its estimated saving)
    metrics.csv        one row per trial x fold x metric: value (split = cv for validation folds)
    predictions.csv    one row per trial x validation image: path, group, fold, truth (class name),
                       target (class index), p_<class>...
    history.csv        one row per trial x fold x epoch x metric (training curves)
    trials.csv         one row per finished trial of a search: number, state, value, backbone,
                       params (JSON), seconds, pruned_at_fold, pruned_at_epoch (-1: at the
                       fold's end), fail_reason, engine; value only for complete trials
    final.json         the held-out evaluation: per backbone its best trial, refit epochs, sizes,
                       seconds and the saved model (models/<backbone>.keras); with ``bench final
                       --by backbone,weights`` one entry per combination, keyed by its slug
                       (models/resnet50__weights-imagenet.keras), which also names its backbone,
                       label and the factors; each entry records its model's ``model_sha256`` and
                       ``model_binding`` (``bench.deploy.binding``), written together with the model
    test_metrics.csv   one row per backbone x metric on the held-out test set: value and its
                       bootstrap 95% CI (low, high), n_images, n_boot, unit (what the bootstrap
                       resampled: patients, or images where the dataset has no patient ids) and
                       n_units (how many) (split = test); files written before unit existed read as
                       unit images, n_units = n_images, which is what they resampled
    test_predictions.csv  one row per backbone x test image: path, group, truth, target, p_<class>...
    calibration.csv    one row per backbone x split (cv: out-of-fold, test) x scaling (none, temperature) x
                       metric (ece, brier, log_loss): value, CI (low, high), n_images, n_boot, unit, n_units and
                       the temperature (fitted on the out-of-fold CV predictions only; ``bench final``)
    operating_points.csv  one row per backbone x operating point (sens=0.95, ...) x class x split (cv, test):
                       the threshold chosen on CV and the sensitivity and specificity it reaches, with CIs
                       (``bench final --operating-point``)
                       (every held-out file, external ones too: each row names its ``bench final``
                       entry by ``entry`` (the key of final.json and of the model's file name),
                       ``backbone`` (the backbone's name) and one column per ``--by`` factor;
                       ``RunDir.table`` derives them for files written before)
    test_variants.csv  ``bench final --tta/--ensemble``: test_metrics.csv's columns plus variant
                       (refit+tta, fold-ensemble, fold-ensemble+tta), tta (the TTA set) and, for the
                       objective, vs_refit, vs_refit_low, vs_refit_high (the variant minus the
                       refit, paired bootstrap 95% CI)
    test_variant_predictions.csv  test_predictions.csv's columns plus variant
    external/<slug>/   ``bench evaluate``: the final models scored on a dataset outside the search;
                       test_metrics.csv and test_predictions.csv in the held-out files' schema
                       (split = external), confusion_<backbone>.csv, summary.json (source, sizes,
                       overlap with the run's data)
    probes.csv         ``bench probe`` (manifest kind "probe"): one row per backbone x size x probe (linear,
                       knn) x metric: cv_mean, cv_std over the folds, the held-out test value with its
                       bootstrap CI (test_low, test_high, n_boot, unit, n_units), what the probe chose
                       per fold and for the held-out fit (C), seconds_features and seconds_probe
    study.db           the Optuna study (default SQLite storage)
    models/            the final models, <backbone>.keras (written by ``bench final``); with
                       ``--ensemble folds`` also <backbone>.fold<k>.keras, each CV fold's model
    figures/           <method>_<entry>.png (gradcam_<backbone>.png by default): Grad-CAM, LIME or
                       occlusion of correct and wrong held-out predictions per class (``bench
                       final``; the report shows it, it never loads a model)
    export/            models exported by ``bench export``, each with its model card

The held-out test files are written only by ``bench final``, after the search: nothing that
chooses a configuration ever reads them.

Rows are appended fold by fold, so an interrupted run keeps every finished fold. A writer killed
mid-append (``kill -9``, a full disk) leaves a last row without its end: the next append cuts the
file back to its last complete row first (keeping the file as it was, ``FILE.torn-<time>``, and
saying so), as ``bench.search.storage`` does for a journal; a reader ignores such a row and leaves
the file alone.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from filelock import FileLock

from bench.atomic import atomic_path, cut_back, fsync_file, remove_stale_temporaries, write_atomic, write_text_atomic
from bench.download import sha256_file
from bench.errors import BenchError, DataError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# folds.csv's `features` values (see bench.training.features).
FEATURES_CACHED, FEATURES_COMPUTED = "cached", "computed"

FILES = {
    "manifest": "manifest.json",
    "config": "config.json",
    "splits": "splits.csv",
    "folds": "folds.csv",
    "metrics": "metrics.csv",
    "predictions": "predictions.csv",
    "history": "history.csv",
    "trials": "trials.csv",
    "final": "final.json",
    "test_metrics": "test_metrics.csv",
    "test_predictions": "test_predictions.csv",
    "calibration": "calibration.csv",
    "operating_points": "operating_points.csv",
    "study": "study.db",
    "test_variants": "test_variants.csv",
    "test_variant_predictions": "test_variant_predictions.csv",
    "probes": "probes.csv",
}
EXTERNAL_DIR = "external"
EXTERNAL_FILES = {"metrics": "test_metrics.csv", "predictions": "test_predictions.csv", "summary": "summary.json"}
# ``bench evaluate``'s optional tables, in the schema of the held-out files of the same name.
EXTERNAL_TABLES = {"operating_points": "operating_points.csv", "calibration": "calibration.csv"}


# The held-out tables: one `bench final` entry's rows each, named by its identity columns.
ENTRY_TABLES = ("test_metrics", "test_predictions", "calibration", "operating_points", "test_variants",
                "test_variant_predictions")


def entry_keys(frame: pd.DataFrame) -> pd.Series:
    """The final entry each held-out row belongs to: its ``entry`` column; in files written before it
    existed, the ``key`` column (``--by`` entries) or else the backbone column."""
    keys = frame["backbone"].astype(str) if "backbone" in frame else pd.Series("", index=frame.index)
    for column in ("key", "entry"):
        if column in frame:
            keys = frame[column].where(frame[column].notna(), keys).astype(str)
    return keys


def with_entry_columns(frame: pd.DataFrame, finals: dict[str, Any]) -> pd.DataFrame:
    """Held-out rows with their identity columns as ``Entry.columns`` writes them, from files of any age.

    Before one identity existed, `bench final --by` wrote the entry's slug into the ``backbone``
    column of some files (calibration, operating points, variants, external sets) and a ``key``
    column into others: derive ``entry`` and give ``backbone`` back the backbone's name, and the
    factor columns, from final.json's record of each entry (``finals``: its ``backbones``).
    """
    if frame.empty or not ({"backbone", "entry", "key"} & set(frame)):
        return frame
    frame = frame.copy()
    keys = entry_keys(frame)
    frame["entry"] = keys
    if "key" in frame:
        frame = frame.drop(columns="key")
    backbone = frame["backbone"].astype(str) if "backbone" in frame else keys
    frame["backbone"] = [str((finals.get(k) or {}).get("backbone", b)) if b == k else b
                         for k, b in zip(keys, backbone)]
    for key, info in finals.items():
        mine = keys == key
        if not mine.any():
            continue
        factors = info.get("factors") or {}
        if not factors and info.get("by") and info.get("label"):
            values = str(info["label"]).split(" · ")  # grouping.SEPARATOR: the label of those files' time
            factors = dict(zip(info["by"], values)) if len(values) == len(info["by"]) else {}
        for name, value in factors.items():
            if name not in frame:
                frame[name] = None
            frame.loc[mine & frame[name].isna(), name] = str(value)
    return frame


def trial_params(raw: Any) -> dict[str, Any]:
    """A trials.csv ``params`` cell (the trial's configuration as JSON) as a dict; {} if unreadable."""
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw) if isinstance(raw, str) and raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def new_run_id(tag: str = "") -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    suffix = f"-{tag}" if tag else ""
    return f"{stamp}-{os.getpid() % 10000:04d}{suffix}"


def _atomic_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _atomic_csv(path: Path, frame: pd.DataFrame) -> None:
    write_atomic(path, lambda f: frame.to_csv(f, index=False))


def _end_of_last_row(data: bytes) -> int:
    """Where the last complete CSV row of ``data`` ends (``len(data)`` when it ends in a newline).

    Rows end in a newline outside quotes; a torn tail ends elsewhere. Cutting at the last newline
    is not enough when that newline is inside the torn row's quoted field (a multi-line failure
    reason): a cut point must leave an even number of quote characters before it.
    """
    if not data or data.endswith(b"\n"):
        return len(data)
    end = data.rfind(b"\n") + 1
    while end and data.count(b'"', 0, end) % 2:
        end = data.rfind(b"\n", 0, end - 1) + 1
    return end


def _torn_tail(path: Path) -> bytes | None:
    """The file's content when its last row is torn; None (without reading it all) when it is whole."""
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return None
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return None
        f.seek(0)
        return f.read()


def repair_torn_rows(path: Path) -> Path | None:
    """Cut an appended CSV back to its last complete row; return the copy kept of the torn file, if any.

    The caller holds the run directory's lock, so no other writer is mid-row.
    """
    data = _torn_tail(path) if path.is_file() else None
    if data is None:
        return None
    end = _end_of_last_row(data)
    copy = cut_back(path, end)
    log.warning("%s ended in a torn row (a writer was killed mid-append): cut back to its last complete row, "
                "dropping %d byte(s); the file as it was is kept as %s", path, len(data) - end, copy)
    return copy


def _append_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    repair_torn_rows(path)  # else this append's first row would be glued onto the torn one
    new = not path.exists() or path.stat().st_size == 0  # a torn header is cut back to nothing
    columns = list(rows[0])
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())


def _append_frame(path: Path, frame: pd.DataFrame) -> None:
    repair_torn_rows(path)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        frame.to_csv(f, index=False, header=new)
        f.flush()
        os.fsync(f.fileno())


def trial_record(trial: Any, engine: str = "optuna") -> dict[str, Any]:
    """The trials.csv row of a finished Optuna trial (a ``FrozenTrial``).

    Only a complete trial has a value: Optuna gives a pruned trial its last intermediate value,
    which may be one epoch's score on an inner validation split, not a cross-validation result.
    """
    attrs = trial.user_attrs
    config = attrs.get("config") or dict(trial.params)
    return {
        "number": trial.number, "state": trial.state.name,
        "value": trial.value if trial.state.name == "COMPLETE" else None,
        "backbone": config.get("backbone") or trial.params.get("backbone"),
        "params": config, "seconds": attrs.get("seconds"),
        "pruned_at_fold": attrs.get("pruned_at_fold"), "pruned_at_epoch": attrs.get("pruned_at_epoch"),
        "fail_reason": attrs.get("fail_reason"), "engine": engine, "host": (attrs.get("worker") or {}).get("host"),
    }


@dataclass(frozen=True)
class RunDir:
    path: Path

    @classmethod
    def create(cls, parent: Path, dataset: str, *, out: Path | None = None, tag: str = "") -> RunDir:
        path = out if out is not None else parent / dataset / new_run_id(tag)
        if path.exists() and any(path.iterdir()):
            raise DataError(f"Run directory {path} exists and is not empty. Choose another --out.")
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def open_or_create(cls, path: Path) -> RunDir:
        """A search's run directory: reopened when the same study is continued."""
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    def lock(self) -> FileLock:
        """Several workers (processes) append to one run directory."""
        return FileLock(str(self.path / ".lock"))

    @classmethod
    def open(cls, path: Path) -> RunDir:
        if not (path / FILES["manifest"]).is_file():
            raise DataError(f"{path} is not a bench run directory (no {FILES['manifest']}).")
        return cls(path)

    def file(self, key: str) -> Path:
        return self.path / FILES[key]

    # ---- writing ---------------------------------------------------------------------------
    def write_manifest(self, manifest: dict[str, Any]) -> None:
        _atomic_json(self.file("manifest"), {"schema": SCHEMA_VERSION, **manifest})

    def update_manifest(self, **changes: Any) -> None:
        with self.lock():
            manifest = self.manifest()
            manifest.update(changes)
            _atomic_json(self.file("manifest"), manifest)

    @contextlib.contextmanager
    def failed_on_error(self) -> Iterator[None]:
        """Inside the block, an error marks the run "failed" with its reason (not "running" for ever)."""
        try:
            yield
        except Exception as err:
            reason = str(err) if isinstance(err, BenchError) else f"{type(err).__name__}: {err}"
            with contextlib.suppress(OSError):  # a full disk must not hide the error itself
                self.update_manifest(status="failed", reason=reason)
            raise

    def write_config(self, trial: int, config: dict[str, Any]) -> None:
        path = self.file("config")
        with self.lock():
            configs = json.loads(path.read_text()) if path.exists() else {}
            configs[str(trial)] = config
            _atomic_json(path, configs)

    def write_splits(self, paths: tuple[str, ...], labels: list[str], groups: np.ndarray,
                     split: np.ndarray, fold: np.ndarray, excluded_because: np.ndarray | None = None) -> None:
        """``split`` names each image's side (cv, test, excluded); ``excluded_because`` says why."""
        frame = pd.DataFrame({
            "path": paths, "label": labels, "group": groups, "split": split, "fold": fold,
            "excluded_because": [""] * len(paths) if excluded_because is None else excluded_because,
        })
        _atomic_csv(self.file("splits"), frame)

    def append_fold(
        self,
        *,
        trial: int,
        fold: int,
        backbone: str,
        status: str,
        info: dict[str, Any],
        metrics: dict[str, float],
        predictions: pd.DataFrame | None,
        history: dict[str, list[float]],
    ) -> None:
        """Everything one finished fold produced; predictions/metrics are absent for failed folds."""
        with self.lock():
            self._append_fold(trial, fold, backbone, status, info, metrics, predictions, history)

    def _append_fold(self, trial: int, fold: int, backbone: str, status: str, info: dict[str, Any],
                     metrics: dict[str, float], predictions: pd.DataFrame | None,
                     history: dict[str, list[float]]) -> None:
        base = {"trial": trial, "fold": fold, "backbone": backbone}
        _append_rows(self.file("folds"), [{**base, "status": status, **info}])
        _append_rows(self.file("metrics"), [
            {**base, "split": "cv", "metric": name, "value": value} for name, value in metrics.items()
        ])
        if predictions is not None and len(predictions):
            frame = predictions.copy()
            frame.insert(0, "fold", fold)
            frame.insert(0, "trial", trial)
            _append_frame(self.file("predictions"), frame)
        _append_rows(self.file("history"), [
            {**base, "epoch": epoch + 1, "metric": name, "value": value}
            for name, values in history.items() for epoch, value in enumerate(values)
        ])

    def append_trial(self, row: dict[str, Any]) -> None:
        """A finished search trial (any engine), in the same columns for Optuna and KerasTuner."""
        columns = ("number", "state", "value", "backbone", "params", "seconds", "pruned_at_fold",
                   "pruned_at_epoch", "fail_reason", "engine", "host")
        clean = {c: row.get(c) for c in columns}
        if not isinstance(clean["params"], str):
            clean["params"] = json.dumps(clean["params"] or {}, sort_keys=True, default=str)
        with self.lock():
            _append_rows(self.file("trials"), [clean])

    def write_final_backbone(self, backbone: str, info: dict[str, Any], metrics: list[dict[str, Any]],
                             predictions: pd.DataFrame, *, save_model: Callable[[Path], None] | None = None,
                             seal: Callable[[str], dict[str, Any]] | None = None) -> None:
        """One entry's held-out result (``backbone``: a backbone, or a combination's slug); a re-run of
        ``bench final`` replaces its rows.

        With ``save_model`` (it writes the entry's model to the path it is given) the model and the
        record that describes it become visible together: the model is written whole under a
        temporary name in models/, its sha256 goes into the entry as ``model_sha256`` (with what
        ``seal(sha256)`` adds), final.json is replaced, and only then one rename puts the model in
        place. A kill at any moment leaves the previous pair, or a record whose sha256 the file in
        models/ does not have, which readers refuse (``bench.deploy.export.verified_run_model``).
        """
        with self.lock():
            if save_model is None:
                self._write_final_entry(backbone, info, metrics, predictions)
                return
            with self._model_temp(self.model_path(backbone)) as tmp:
                save_model(tmp)
                fsync_file(tmp)
                sha = sha256_file(tmp)
                info = {**info, "model_sha256": sha, **(seal(sha) if seal else {})}
                self._write_final_entry(backbone, info, metrics, predictions)
            # The rename on leaving the block: the model final.json now describes is in place.

    def _write_final_entry(self, backbone: str, info: dict[str, Any], metrics: list[dict[str, Any]],
                           predictions: pd.DataFrame) -> None:
        for key, frame in (("test_metrics", pd.DataFrame(metrics)), ("test_predictions", predictions)):
            self._replace_backbone_rows(key, backbone, frame)
        for key in ("test_variants", "test_variant_predictions"):  # they were of the model just replaced
            if self.file(key).exists():
                self._replace_backbone_rows(key, backbone, pd.DataFrame())
        final = self.final()
        final.setdefault("backbones", {})[backbone] = info
        _atomic_json(self.file("final"), final)  # last: the entry's record, read with the rows above

    @contextlib.contextmanager
    def _model_temp(self, path: Path) -> Iterator[Path]:
        """A temporary beside ``path`` for a model (Keras saves only to a name ending in .keras),
        renamed onto ``path`` when the block succeeds; a disk that fills up leaves no partial model."""
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(path.parent)  # of a writer killed mid-save
        with atomic_path(path, keep_suffix=True, durable=True) as tmp:
            yield tmp

    def save_model(self, path: Path, save: Callable[[Path], None]) -> str:
        """``save(tmp)`` writes a model that appears at ``path`` whole or not at all; its sha256."""
        with self._model_temp(path) as tmp:
            save(tmp)
            return sha256_file(tmp)

    def write_backbone_table(self, key: str, entry: dict[str, Any], frame: pd.DataFrame) -> None:
        """One entry's rows of a held-out table (calibration, operating points); replaces earlier ones.
        ``entry``: the identity columns (``Entry.columns``: ``entry``, ``backbone``, each factor)."""
        frame = frame.assign(**entry)[[*entry, *(c for c in frame if c not in entry)]]
        with self.lock():
            self._replace_backbone_rows(key, entry["entry"], frame)

    def _replace_backbone_rows(self, key: str, backbone: str, frame: pd.DataFrame) -> None:
        path = self.file(key)
        old = self.table(key) if path.exists() else None
        if old is not None and len(old):
            frame = pd.concat([old[entry_keys(old) != backbone], frame], ignore_index=True)
        _atomic_csv(path, frame)

    def write_final_variants(self, backbone: str, entries: list[dict[str, Any]], metrics: list[dict[str, Any]],
                             predictions: pd.DataFrame) -> None:
        """The variants ``bench final`` scored beside ``backbone``'s refit; a re-run replaces its rows."""
        with self.lock():
            final = self.final()
            info = final.setdefault("backbones", {}).setdefault(backbone, {})
            info["variants"] = entries
            _atomic_json(self.file("final"), final)
            self._replace_backbone_rows("test_variants", backbone, pd.DataFrame(metrics))
            self._replace_backbone_rows("test_variant_predictions", backbone, predictions)

    def append_probes(self, frame: pd.DataFrame) -> None:
        """``bench probe``'s rows of one backbone x size, added as soon as they exist; a re-run of a pair replaces it."""
        with self.lock():
            old = self.table("probes")
            if len(old) and len(frame):
                pairs = set(zip(frame.backbone.astype(str), frame["size"].astype(int)))
                old = old[[p not in pairs for p in zip(old.backbone.astype(str), old["size"].astype(int))]]
            _atomic_csv(self.file("probes"), pd.concat([old, frame], ignore_index=True) if len(old) else frame)

    def model_path(self, backbone: str) -> Path:
        return self.path / "models" / f"{backbone}.keras"

    def member_path(self, backbone: str, fold: int) -> Path:
        """One CV fold's model of the best trial, kept by ``bench final --ensemble folds``."""
        return self.path / "models" / f"{backbone}.fold{fold}.keras"

    def external_dir(self, slug: str) -> Path:
        return self.path / EXTERNAL_DIR / slug

    def write_external(self, slug: str, summary: dict[str, Any], metrics: pd.DataFrame, predictions: pd.DataFrame,
                       confusions: dict[str, pd.DataFrame], tables: dict[str, pd.DataFrame] | None = None) -> Path:
        """``bench evaluate``'s result on one external dataset; a re-run replaces the whole folder's files
        (an earlier ``tables`` file too: its thresholds may be ones the run no longer has)."""
        folder = self.external_dir(slug)
        folder.mkdir(parents=True, exist_ok=True)
        with self.lock():
            for name, file in EXTERNAL_TABLES.items():
                _atomic_csv(folder / file, tables[name]) if name in (tables or {}) else (folder / file).unlink(True)
            _atomic_csv(folder / EXTERNAL_FILES["metrics"], metrics)
            _atomic_csv(folder / EXTERNAL_FILES["predictions"], predictions)
            for backbone, frame in confusions.items():
                write_atomic(folder / f"confusion_{backbone}.csv", lambda f, frame=frame: frame.to_csv(f))
            _atomic_json(folder / EXTERNAL_FILES["summary"], summary)
        return folder

    def externals(self) -> dict[str, tuple[dict[str, Any], pd.DataFrame]]:
        """Each external evaluation: slug -> (summary, metrics)."""
        root = self.path / EXTERNAL_DIR
        out = {}
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            summary, metrics = folder / EXTERNAL_FILES["summary"], folder / EXTERNAL_FILES["metrics"]
            if summary.is_file() and metrics.is_file():
                frame = pd.read_csv(metrics, dtype={"backbone": str, "entry": str})
                out[folder.name] = (json.loads(summary.read_text()),
                                    with_entry_columns(frame, self.final().get("backbones") or {}))
        return out

    def external_table(self, slug: str, name: str) -> pd.DataFrame:
        """One of EXTERNAL_TABLES of an external evaluation (empty if it has none)."""
        path = self.external_dir(slug) / EXTERNAL_TABLES[name]
        return with_entry_columns(pd.read_csv(path, dtype={"backbone": str, "entry": str, "class": str}),
                                  self.final().get("backbones") or {}) if path.is_file() else pd.DataFrame()

    def gradcam_path(self, backbone: str) -> Path:
        """Grid of Grad-CAM overlays of the final model's held-out predictions (``bench final``)."""
        return self.explanation_path(backbone, "gradcam")

    def explanation_path(self, backbone: str, method: str) -> Path:
        """Grid of one explanation method's overlays of an entry's held-out predictions (``bench final``)."""
        return self.path / "figures" / f"{method}_{backbone}.png"

    def explanation_figures(self, backbone: str) -> dict[str, Path]:
        """The held-out grids drawn for an entry, by method (method names are lower-case letters)."""
        pattern = re.compile(rf"([a-z]+)_{re.escape(backbone)}\.png")
        folder = self.path / "figures"
        found = sorted(folder.glob(f"*_{backbone}.png")) if folder.is_dir() else []
        return {m.group(1): p for p in found if (m := pattern.fullmatch(p.name))}

    def export_dir(self) -> Path:
        """Default folder of ``bench export`` (a model and its card per file name)."""
        return self.path / "export"

    # ---- reading ---------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return json.loads(self.file("manifest").read_text())

    def configs(self) -> dict[int, dict[str, Any]]:
        path = self.file("config")
        return {int(k): v for k, v in json.loads(path.read_text()).items()} if path.exists() else {}

    def final(self) -> dict[str, Any]:
        path = self.file("final")
        return json.loads(path.read_text()) if path.exists() else {}

    def study(self) -> Any:
        """The Optuna study in this run directory's study.db, or None (other storages, cv runs)."""
        path = self.file("study")
        if not path.exists():
            return None
        import optuna

        url = f"sqlite:///{path.resolve()}"
        names = optuna.get_all_study_names(url)
        wanted = self.manifest().get("study")
        name = wanted if wanted in names else (names[0] if names else None)
        return optuna.load_study(study_name=name, storage=url) if name else None

    def oof_predictions(self, trial: int) -> pd.DataFrame:
        """The out-of-fold predictions of ``trial`` (its rows of predictions.csv; empty if none)."""
        frame = self.table("predictions")
        return frame[frame.trial == trial].reset_index(drop=True) if len(frame) else frame

    def table(self, key: str) -> pd.DataFrame:
        path = self.file(key)
        if not path.exists():
            return pd.DataFrame()
        source: Path | io.BytesIO = path
        torn = _torn_tail(path)
        if torn is not None:  # a reader leaves the file as it is: the next append cuts it back
            end = _end_of_last_row(torn)
            log.warning("%s ends in a torn row (a writer was killed mid-append): read without its last %d byte(s)",
                        path, len(torn) - end)
            source = io.BytesIO(torn[:end])
            if end == 0:
                return pd.DataFrame()
        # Paths, labels and groups stay strings even when a patient id looks like a number or "NA".
        frame = pd.read_csv(source, dtype={"path": str, "label": str, "group": str, "truth": str, "class": str,
                                         "backbone": str, "entry": str, "key": str})
        if key in ENTRY_TABLES:
            frame = with_entry_columns(frame, self.final().get("backbones") or {})
        if key == "test_metrics" and "unit" not in frame and "n_images" in frame:
            # Written before CIs could resample patients: those resampled images.
            frame["unit"], frame["n_units"] = "images", frame["n_images"]
        return frame
