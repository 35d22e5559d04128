"""External validation: the models ``bench final`` saved, scored on a dataset the search never saw.

``bench evaluate --run R --dataset D`` indexes D like any dataset (a registry name or a folder; its
patients from the registry's ``groups``, a manifest's patient column or ``--group-regex``), maps
its classes to the run's by name, decodes it at each model's size with the run's resize mode, and
scores every final model with bootstrap CIs over D's patients (over images, exact duplicates
together, when D has none). The results go to ``<run>/external/<slug>/`` in the held-out files'
schema, so the report reads them as it reads the held-out test.

The run's operating points and temperature (final.json: chosen on the out-of-fold CV predictions by
``bench final --operating-point``) are applied unchanged to the external predictions: the
sensitivity and specificity each threshold reaches there, and ECE / Brier / log loss before and
after the temperature, with the same patient bootstrap (``operating_points.csv`` and
``calibration.csv`` beside the metrics, in the held-out files' schema, split = external). That is
the deploying user's question: at the threshold chosen on CV, what does the other hospital get?
``--tta SET`` averages the predictions over the flips ``bench final --tta`` scored; the
thresholds and temperature were chosen on plain predictions, so under TTA they are not applied
(summary.json says so).

An external set is only external if it shares nothing with the run's data: images identical to
one of the run's (same decoded pixels) or patient ids the run also has are counted, warned about
loudly and recorded; ``--drop-overlap`` leaves them out instead.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import metrics as M
from bench.data import cache as image_cache
from bench.data.index import DatasetIndex
from bench.data.registry import resolve
from bench.data.sources import build_index
from bench.errors import DataError
from bench.deploy.tta import tta_names, tta_proba
from bench.evaluation.grouping import Entry
from bench.metrics.calibration import calibration_rows
from bench.metrics.operating import apply_operating_points
from bench.results import RunDir

SPLIT = "external"


def dataset_slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "external"


def class_map(external: tuple[str, ...], run_classes: list[str], source: str) -> np.ndarray:
    """Index into ``run_classes`` of each external class; a DataError names any that does not match."""
    unknown = [c for c in external if c not in run_classes]
    missing = [c for c in run_classes if c not in external]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"{source} has class(es) {', '.join(map(repr, unknown))} that the run does not")
        if missing:
            parts.append(f"it lacks the run's class(es) {', '.join(map(repr, missing))}")
        raise DataError(f"{'; '.join(parts)}. The run's models know {', '.join(map(repr, run_classes))}: name the "
                        f"class folders (or the manifest's label column) exactly so, with every class present.")
    return np.array([run_classes.index(c) for c in external], dtype=np.int64)


@dataclass(frozen=True)
class Overlap:
    """What the external set shares with the run's data (any split: CV, test or excluded)."""

    images: np.ndarray  # bool per external image: identical pixels to one of the run's images
    patients: np.ndarray  # bool per external image: its patient id is one of the run's
    patient_ids: tuple[str, ...]

    def summary(self, dropped: bool) -> dict[str, Any]:
        return {"shared_images": int(self.images.sum()), "shared_patients": len(self.patient_ids),
                "images_of_shared_patients": int(self.patients.sum()),
                "patient_examples": list(self.patient_ids[:10]), "dropped": dropped}

    @property
    def any(self) -> np.ndarray:
        return self.images | self.patients


def find_overlap(run_data: Any, index: DatasetIndex, hashes: tuple[str, ...], has_groups: bool) -> Overlap:
    """``run_data`` is the run's PreparedData at the same size and resize (the digests compare pixels)."""
    ours = set(run_data.cache.row_hashes)
    shared_images = np.array([h in ours for h in hashes], dtype=bool)
    if has_groups and run_data.spec.groups.kind != "none":
        theirs = set(run_data.index.groups)
        patients = np.array([g in theirs for g in index.groups], dtype=bool)
        ids = tuple(sorted({g for g, p in zip(index.groups, patients) if p}))
    else:  # without patient ids on both sides there is nothing to compare
        patients, ids = np.zeros(len(index), dtype=bool), ()
    return Overlap(shared_images, patients, ids)


@dataclass(frozen=True)
class _Decoded:
    """The external images at one model size: those scored, and what was left out."""

    images: np.ndarray  # rows of ``keep``
    keep: np.ndarray  # bool per indexed image: readable (and not shared with the run, with --drop-overlap)
    hashes: tuple[str, ...]  # digest of each indexed image's pixels
    overlap: Overlap
    skipped: list[tuple[str, str]]  # (path, reason) of unreadable files


def _decode(index: DatasetIndex, size: int, resize: str, run_data: Any, has_groups: bool,
            drop_overlap: bool) -> _Decoded:
    cached = image_cache.load_or_build(index, size, resize)
    keep = np.ones(len(index), dtype=bool)
    keep[list(cached.failed)] = False
    overlap = find_overlap(run_data, index, cached.row_hashes, has_groups)
    if drop_overlap:
        keep &= ~overlap.any
    return _Decoded(np.asarray(cached.array[np.flatnonzero(keep)]), keep, cached.row_hashes, overlap,
                    [(index.paths[i], r) for i, r in sorted(cached.failed.items())])


def evaluate_external(run_dir: Path, dataset: str, *, group_regex: str | None = None, registry: Path | None = None,
                      backbones: list[str] | None = None, n_boot: int = 1000, drop_overlap: bool = False,
                      tta: str = "none", console: Any = None) -> dict[str, Any]:
    from bench.deploy.export import load_model, verified_run_model
    from bench.training.experiment import prepare_data_from_manifest

    say = console.print if console is not None else (lambda *a, **k: None)
    transforms = tta_names(tta)  # a wrong name fails before any decoding or prediction
    run = RunDir.open(Path(run_dir))
    manifest = run.manifest()
    final = run.final().get("backbones") or {}
    if not final:
        raise DataError(f"{run.path} has no final models: run `bench final --run {run.path}` first.")
    if backbones:
        unknown = sorted(set(backbones) - set(final))
        if unknown:
            raise DataError(f"{run.path}: no final model for backbone(s) {unknown}; have {sorted(final)}.")
        final = {b: info for b, info in final.items() if b in backbones}
    facts = manifest.get("dataset") or {}
    run_classes = list(facts.get("classes") or [])
    # The manifest records the positive class of a binary run by name (None for multiclass).
    positive = run_classes.index(facts["positive"]) if facts.get("positive") in run_classes else None
    registry_path = Path(registry).expanduser().resolve() if registry else None
    spec, root = resolve(dataset, registry_path=registry_path, group_regex=group_regex)
    index = build_index(spec, root)
    to_run = class_map(index.classes, run_classes, f"--dataset {dataset}")
    resize = (manifest.get("cache") or {}).get("resize") or (manifest.get("data") or {}).get("resize") or "squash"
    has_groups = spec.groups.kind != "none"
    slug = dataset_slug(spec.name if dataset == spec.name else Path(dataset).expanduser().resolve().name)

    metric_rows: list[dict[str, Any]] = []
    prediction_frames: list[pd.DataFrame] = []
    confusions: dict[str, pd.DataFrame] = {}
    clinical: dict[str, list[pd.DataFrame]] = {"operating_points": [], "calibration": []}
    by_size: dict[int, _Decoded] = {}
    for key, info in final.items():
        entry = Entry.from_final(key, info)  # the identity `bench final` gave it, in every row below
        size = int(info.get("size") or (manifest.get("data") or {}).get("size"))
        if size not in by_size:
            run_data = prepare_data_from_manifest(manifest, size=size, registry=registry)
            by_size[size] = _decode(index, size, resize, run_data, has_groups, drop_overlap)
            _warn_overlap(say, by_size[size].overlap, dataset, drop_overlap)
        decoded = by_size[size]
        images, keep, hashes = decoded.images, decoded.keep, decoded.hashes
        rows = np.flatnonzero(keep)
        if not len(rows):
            raise DataError(f"--dataset {dataset}: no image left to score (all unreadable or shared with the run).")
        y = to_run[index.labels[rows]]
        groups = np.array([index.groups[i] if has_groups else hashes[i] for i in rows])
        model = load_model(verified_run_model(run, entry.key))  # the model final.json's scores describe
        proba = tta_proba(lambda x: np.asarray(model.predict(x, batch_size=64, verbose=0), dtype="float64"),
                          images, tta)
        trial = int(info["trial"])
        seed = int((info.get("config") or {}).get("seed", 0))
        unit = "patients" if has_groups else "images"
        cis = M.bootstrap_all(y, proba, n_boot=n_boot, seed=seed, positive=positive, groups=groups, unit=unit)
        if tta == "none":
            for name, rows_ in _clinical_rows(info, y, proba, groups, unit=unit, n_boot=n_boot, seed=seed,
                                              positive=positive).items():
                clinical[name].append(_with_entry(rows_, entry.columns, trial))
                for line in _clinical_lines(name, rows_, entry.label):
                    say(line)
        metric_rows += [{**entry.columns, "trial": trial, "split": SPLIT, "metric": name, "value": ci.value,
                         "low": ci.low, "high": ci.high, "n_images": len(rows), "n_boot": ci.n_boot,
                         "unit": ci.unit, "n_units": ci.n_units} for name, ci in cis.items()]
        frame = pd.DataFrame({**entry.columns, "trial": trial, "path": [index.paths[i] for i in rows],
                              "group": [index.groups[i] for i in rows], "truth": [run_classes[t] for t in y],
                              "target": y})
        for c, name in enumerate(run_classes):
            frame[f"p_{name}"] = proba[:, c]
        prediction_frames.append(frame)
        cm = M.confusion(y, proba, len(run_classes))
        confusions[entry.key] = pd.DataFrame(cm, index=[f"true {c}" for c in run_classes],
                                            columns=[f"predicted {c}" for c in run_classes])
        objective = (manifest.get("objective") or {}).get("metric", "balanced_accuracy")
        ci = cis.get(objective)
        if ci is not None:
            say(f"{entry.label}: external {objective} {ci.value:.3f} (95% CI {ci.low:.3f}-{ci.high:.3f}, {len(rows)} "
                f"images, {M.bootstrap_phrase(ci.n_units, ci.unit, len(rows))})")

    first = next(iter(by_size.values()))
    keep, overlap, skipped = first.keep, first.overlap, first.skipped
    summary = {
        "dataset": dataset, "name": spec.name, "title": spec.title, "source": spec.source.kind, "root": str(root),
        "classes": run_classes, "images_found": len(index), "n_images": int(keep.sum()),
        "n_patients": int(len({index.groups[i] for i in np.flatnonzero(keep)})) if has_groups else None,
        "group_rule": spec.groups.kind, "per_class": {c: int((to_run[index.labels[keep]] == k).sum())
                                                     for k, c in enumerate(run_classes)},
        "skipped": [list(s) for s in skipped], "resize": resize, "n_boot": n_boot,
        "overlap": overlap.summary(drop_overlap),
        "tta": {"set": tta, "transforms": list(transforms)},
        "operating_points": ("the run's thresholds and temperature (final.json, chosen on out-of-fold CV "
                             "predictions), applied unchanged" if tta == "none" else
                             f"not applied: they were chosen on plain predictions, these average over --tta {tta}"),
        "evaluated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    tables = {name: pd.concat(frames, ignore_index=True) for name, frames in clinical.items() if frames}
    folder = run.write_external(slug, summary, pd.DataFrame(metric_rows), pd.concat(prediction_frames,
                                                                                    ignore_index=True), confusions,
                                tables=tables)
    say(f"written to {folder}")
    return {"slug": slug, "folder": folder, "summary": summary, "metrics": pd.DataFrame(metric_rows)}


def _clinical_rows(info: dict[str, Any], y: np.ndarray, proba: np.ndarray, groups: np.ndarray, *, unit: str,
                   n_boot: int, seed: int, positive: int | None) -> dict[str, pd.DataFrame]:
    """The entry's CV-chosen thresholds and temperature (final.json) applied to the external predictions."""
    out = {}
    thresholds = info.get("operating_points") or []
    if thresholds:
        out["operating_points"] = apply_operating_points(thresholds, y, proba, groups, unit=unit, split=SPLIT,
                                                         n_boot=n_boot, seed=seed)
    calibration = info.get("calibration")
    if calibration is not None:  # recorded by every `bench final` that calibrates; T is None without OOF
        out["calibration"] = pd.DataFrame(calibration_rows(y, proba, calibration.get("temperature"), split=SPLIT,
                                                           groups=groups, unit=unit, n_boot=n_boot, seed=seed,
                                                           positive=positive))
    return out


def _with_entry(frame: pd.DataFrame, columns: dict[str, Any], trial: int) -> pd.DataFrame:
    """The held-out tables' column order (``RunDir.write_backbone_table``): identity first, trial last."""
    frame = frame.assign(trial=trial).assign(**columns)
    return frame[[*columns, *(c for c in frame if c not in columns)]]


def _clinical_lines(name: str, rows: pd.DataFrame, label: str) -> list[str]:
    def rate(r: Any, what: str) -> str:
        return f"{what} {r[what]:.3f} ({r[what + '_low']:.3f}-{r[what + '_high']:.3f})"

    if name == "operating_points":
        return [f"{label}: external at operating point {r['point']} on {r['class']} (threshold {r['threshold']:.4f}, "
                f"chosen on CV): {rate(r, 'sensitivity')}, {rate(r, 'specificity')}" for _, r in rows.iterrows()]
    ece = rows[rows.metric == "ece"].set_index("scaling")
    if "temperature" not in ece.index:
        return []
    return [f"{label}: external ECE {ece.loc['none', 'value']:.3f} -> {ece.loc['temperature', 'value']:.3f} "
            f"with the CV temperature {ece.loc['temperature', 'temperature']:.3f}"]


def _warn_overlap(say: Any, overlap: Overlap, dataset: str, dropped: bool) -> None:
    n_img, n_pat = int(overlap.images.sum()), len(overlap.patient_ids)
    if not (n_img or n_pat):
        return
    what = " and ".join(p for p in (f"{n_img} image(s) identical to the run's" if n_img else "",
                                    f"{n_pat} patient id(s) of the run ({int(overlap.patients.sum())} images; e.g. "
                                    f"{', '.join(overlap.patient_ids[:3])})" if n_pat else "") if p)
    if dropped:
        say(f"[yellow]--dataset {dataset} shares {what} with the run's data: left out (--drop-overlap).[/]")
    else:
        say(f"[bold red]WARNING: --dataset {dataset} shares {what} with the run's data: it is not an independent "
            f"external set and its scores are optimistic. Recorded in summary.json; pass --drop-overlap to leave "
            f"them out.[/]")
