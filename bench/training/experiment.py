"""From a dataset name to scored folds: the path ``bench cv`` (and later each search trial) takes.

``prepare_data`` does everything that is the same for every configuration: resolve the dataset,
index it, decode it once into the cache, drop unreadable files, merge duplicates, choose the
held-out test set and the folds. ``cross_validate`` trains one configuration on those folds and
writes each finished fold to the run directory. The held-out test images are never touched here.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import metrics as M
from bench.data import cache as image_cache
from bench.data.conflicts import LabelConflict, label_conflicts
from bench.data.index import DatasetIndex
from bench.data.near import (
    DEFAULT_THRESHOLD,
    NearMerge,
    check_dedupe,
    check_threshold,
    merge_groups,
    stored_near_clusters,
)
from bench.data.registry import binary_positive, resolve
from bench.data.sources import build_index
from bench.data.spec import DatasetSpec
from bench.data.splits import (
    EXCLUDED_BECAUSE,
    EXCLUDED_FOR_VALIDATION,
    Protocol,
    Splits,
    build_splits,
    classes_below,
    stratified_group_fraction,
)
from bench.errors import DataError
from bench.results import RunDir

DEFAULT_FOLDS = 5
FOLDS_FROM = ("--folds", "datasets.toml", "default")  # where a run's number of folds came from


@dataclass(frozen=True)
class DataSettings:
    """Every choice that decides which images a run uses and how they are split.

    The manifest records them (its ``data`` section, with defaults resolved), and every command
    that re-opens a run (``bench final``, ``bench cv --from-trial``) rebuilds the data from that
    record through ``prepare_data_from_manifest``: a setting cannot be lost between commands.
    The field names are ``prepare_data``'s keywords.
    """

    dataset: str
    folds: int | None = None  # None: the registry entry's `folds`, else DEFAULT_FOLDS
    seed: int = 0
    resize: str | None = None
    strict: bool = False
    group_regex: str | None = None
    group_column: str | None = None  # the manifest column of patient ids (--group-column)
    registry: str | None = None  # another datasets.toml
    test_fraction: float | None = None
    official_test: str = "clean"  # OFFICIAL_TEST_POLICIES
    min_class_images: int = 0
    dedupe: str = "exact"  # bench.data.near.DEDUPE_MODES: "near" also keeps near-copies on one side
    near_threshold: int = DEFAULT_THRESHOLD  # pHash bits, with dedupe "near"
    validation: str = "kfold"  # str(Protocol): kfold, holdout:FRACTION or official


@dataclass(frozen=True)
class PreparedData:
    spec: DatasetSpec
    index: DatasetIndex  # usable images only (unreadable ones and dropped classes left out)
    images: np.ndarray  # (n, size, size, 3) uint8, rows aligned with index
    splits: Splits
    cache: image_cache.ImageCache
    skipped: tuple[tuple[str, str], ...]  # (path, reason) of unreadable files
    size: int
    resize: str
    settings: DataSettings  # as resolved: folds, resize, test fraction and registry filled in
    folds_from: str = "--folds"  # where the number of folds came from (FOLDS_FROM)
    conflicts: tuple[LabelConflict, ...] = ()  # identical images under different labels
    near: NearMerge | None = None  # what --dedupe near merged into one group before splitting

    @property
    def splits_digest(self) -> str:
        """Digest of which image is in which fold, the test set or neither: a resumed study must match it."""
        h = hashlib.sha256()
        for path, split, fold in zip(self.index.paths, self.splits.split_names(), self.splits.fold):
            h.update(f"{path}\0{split}\0{int(fold)}\n".encode("utf-8", "surrogateescape"))
        return h.hexdigest()

    @property
    def protocol_phrase(self) -> str:
        """How the CV pool is scored, for what commands print: "5-fold CV (--folds)" or "hold-out 20% (...)"."""
        s = self.splits
        return s.describe(self.group_word) if s.single_split else f"{s.folds}-fold CV ({self.folds_from})"

    @property
    def group_word(self) -> str:
        return "patient" if self.spec.groups.kind != "none" else "image group"

    @property
    def positive(self) -> int | None:
        return binary_positive(self.spec, self.index.classes)

    def summary(self) -> dict[str, Any]:
        """The dataset, split and data-setting facts a manifest or report needs."""
        s, idx = self.splits, self.index
        cv = s.cv
        return {
            "dataset": {
                "name": self.spec.name, "title": self.spec.title, "root": str(idx.root),
                "license": self.spec.license, "citation": self.spec.citation,
                "classes": list(idx.classes), "images": len(idx), "per_class": idx.counts(),
                "groups": int(len(np.unique(s.groups))), "group_rule": self.spec.groups.kind,
                "fingerprint": self.cache.fingerprint, "skipped": [list(p) for p in self.skipped],
                "ignored_non_images": len(idx.ignored), "duplicates": s.duplicates,
                "duplicate_groups_merged": s.duplicate_groups_merged,
                "label_conflicts": [c.as_dict() for c in self.conflicts],
                "passed_over": [list(p) for p in idx.passed_over],
                "warnings": list(idx.warnings),
                "positive": None if self.positive is None else idx.classes[self.positive],
                "source": self.spec.source.kind,
                # Published results the report sets beside the held-out ones (bench/data/baselines/).
                "baselines": asdict(self.spec.baselines) if self.spec.baselines is not None else None,
            },
            "split": {
                "rule": s.rule, "folds": s.folds, "protocol": s.protocol,
                "protocol_label": s.describe(self.group_word), "folds_from": self.folds_from, "seed": s.seed,
                "cv_images": int(cv.sum()), "test_images": int(s.test.sum()),
                "cv_groups": int(len(np.unique(s.groups[cv]))),
                "test_groups": int(len(np.unique(s.groups[s.test]))),
                "fold_sizes": [int((s.fold == k).sum()) for k in range(s.folds)],
                # Groups with images on both sides of the test split: their other images are
                # excluded (policy "clean") or stay in CV (policy "as-published").
                "official_test": s.official_test, "shared_groups": s.shared_groups,
                "shared_images": s.shared_images, "excluded_images": int(s.excluded.sum()),
                "dropped_classes": s.dropped_classes, "min_class_images": self.settings.min_class_images,
                "near_duplicates": self.near.as_dict() if self.near else None,
                "digest": self.splits_digest,
            },
            "data": {**asdict(self.settings), "size": self.size},
            "cache": {"key": self.cache.key, "path": str(self.cache.path), "bytes": self.cache.nbytes,
                      "built": self.cache.built, "size": self.size, "resize": self.resize,
                      "source": self.cache.source},
        }

    def split_lines(self) -> list[str]:
        """What the split took out of the data, in words, for ``bench cv`` and ``bench run``."""
        s, lines, word = self.splits, [], self.group_word
        because = s.excluded_because()
        if (because == EXCLUDED_BECAUSE).any():
            lines.append(f"removed {int((because == EXCLUDED_BECAUSE).sum())} images of {s.shared_groups} {word}s "
                         f"from the CV pool: they also have images in the official test set")
        elif s.shared_groups:
            lines.append(f"warning: CV and test share {s.shared_groups} {word}s ({s.shared_images} CV images; "
                         f"--official-test {s.official_test}): held-out scores are optimistic")
        if (because == EXCLUDED_FOR_VALIDATION).any():
            lines.append(f"removed {int((because == EXCLUDED_FOR_VALIDATION).sum())} training images: their {word}s "
                         f"also have images in the official validation split")
        for name, n in s.dropped_classes.items():
            lines.append(f"left out class '{name}' (--min-class-images {self.settings.min_class_images}): "
                         f"{n['cv_images']} CV and {n['test_images']} test images")
        if self.near is not None:
            lines.append(self.near.describe())
        return lines

    def write_splits(self, run: RunDir) -> None:
        idx, s = self.index, self.splits
        run.write_splits(idx.paths, [idx.classes[i] for i in idx.labels], s.groups, s.split_names(), s.fold,
                         s.excluded_because())


def prepare_data(
    dataset: str,
    *,
    folds: int | None = None,
    seed: int = 0,
    size: int | None = None,
    resize: str | None = None,
    strict: bool = False,
    group_regex: str | None = None,
    group_column: str | None = None,
    registry: Path | str | None = None,
    cache_dir: Path | None = None,
    test_fraction: float | None = None,
    official_test: str = "clean",
    min_class_images: int = 0,
    dedupe: str = "exact",
    near_threshold: int = DEFAULT_THRESHOLD,
    validation: str = "kfold",
    before_decoding: Callable[[int], None] | None = None,
) -> PreparedData:
    """The dataset indexed, decoded once, split. ``before_decoding(size)`` is called once the image size
    is known and before the cache is built: checks of the size (a backbone's limits) fail there, cheaply."""
    check_dedupe(dedupe)
    check_threshold(near_threshold)  # before anything is decoded
    registry_path = Path(registry).expanduser().resolve() if registry else None
    spec, root = resolve(dataset, registry_path=registry_path, group_regex=group_regex, group_column=group_column)
    folds_from = FOLDS_FROM[0] if folds is not None else FOLDS_FROM[1] if spec.folds is not None else FOLDS_FROM[2]
    folds = folds if folds is not None else spec.folds or DEFAULT_FOLDS
    protocol = Protocol.parse(validation)
    test_fraction = test_fraction if test_fraction is not None else spec.test.fraction
    index = build_index(spec, root)
    if protocol.kind == "official" and index.official_validation is None:
        raise DataError(f"--validation official: the dataset entry '{spec.name}' names no published validation "
                        f"split. Add one to its datasets.toml entry (e.g. validation = {{ kind = \"folder\", "
                        f"folder = \"val\" }} or {{ kind = \"column\", column = \"split\", value = \"val\" }}), "
                        f"or use --validation holdout or kfold.")
    size = size if size is not None else spec.image_size  # 0 is an error, never "the default"
    resize = resize or spec.resize
    for line in index.warnings:
        print(f"warning: {line}", file=sys.stderr)
    for path, reason in index.passed_over[:_SHOWN]:
        print(f"warning: passed over {index.root / path}: {reason}", file=sys.stderr)
    if len(index.passed_over) > _SHOWN:
        print(f"warning: ... and {len(index.passed_over) - _SHOWN} more passed over (all in the run's "
              f"manifest.json)", file=sys.stderr)
    if before_decoding is not None:
        before_decoding(size)
    cached = image_cache.load_or_build(index, size, resize, cache_dir=cache_dir)
    skipped = tuple((index.paths[i], reason) for i, reason in sorted(cached.failed.items()))
    if skipped and strict:
        raise DataError(
            f"{len(skipped)} unreadable image file(s) in {index.root} (--strict):\n"
            f"{_listing([f'{index.root / p}: {r}' for p, r in skipped])}\n"
            f"Remove or replace them, or run without --strict to skip them."
        )
    keep = np.ones(len(index), dtype=bool)
    keep[list(cached.failed)] = False
    usable = index.subset(keep) if skipped else index
    if skipped:
        for path, reason in skipped:
            print(f"warning: skipped unreadable image {index.root / path}: {reason}", file=sys.stderr)
    hashes = tuple(h for h, k in zip(cached.row_hashes, keep) if k)
    conflicts = tuple(label_conflicts(usable.paths, usable.labels, usable.classes, hashes))
    if conflicts and strict:
        raise DataError(
            f"{len(conflicts)} set(s) of identical images in {index.root} carry different labels (--strict):\n"
            f"{_listing([c.describe() for c in conflicts])}\n"
            f"Keep each image once, under its right class, or run without --strict to be warned only."
        )
    for c in conflicts:
        print(f"warning: identical images with different labels: {c.describe()}", file=sys.stderr)
    group_word = "patient" if spec.groups.kind != "none" else "image group"
    # The index keeps the patients; only the split (and the bootstrap over its groups) sees the merge.
    split_groups, near = usable.groups, None
    if dedupe == "near":
        cluster = stored_near_clusters(cached.array[np.flatnonzero(keep)], near_threshold, cached.path)
        split_groups, near = merge_groups(usable.groups, cluster, near_threshold)
    held_out = dict(seed=seed, official_test=usable.official_test, test_fraction=test_fraction)
    dropped = classes_below(usable.labels, split_groups, hashes, usable.classes, min_class_images,
                            policy=official_test, **held_out)
    if dropped:  # split as if these classes had never been there (their test images go too)
        usable, kept = usable.without_classes(set(dropped))
        keep[np.flatnonzero(keep)[~kept]] = False
        hashes = tuple(h for h, k in zip(hashes, kept) if k)
        split_groups = tuple(g for g, k in zip(split_groups, kept) if k)
        held_out["official_test"] = usable.official_test
    splits = build_splits(
        usable.labels, split_groups, hashes, usable.classes, folds=folds, group_word=group_word,
        policy=official_test, dropped_classes=dropped, protocol=protocol,
        official_validation=usable.official_validation, **held_out,
    )
    images = np.asarray(cached.array[np.flatnonzero(keep)]) if not keep.all() else np.asarray(cached.array)
    settings = DataSettings(
        dataset=dataset, folds=folds, seed=seed, resize=resize, strict=strict, group_regex=group_regex,
        group_column=group_column, registry=str(registry_path) if registry_path else None, test_fraction=test_fraction,
        official_test=official_test, min_class_images=min_class_images, dedupe=dedupe,
        near_threshold=near_threshold, validation=str(protocol),
    )
    return PreparedData(spec, usable, images, splits, cached, skipped, size, resize, settings, folds_from,
                        conflicts, near)


def prepare_data_from_manifest(manifest: dict[str, Any], *, size: int | None = None,
                               registry: Path | str | None = None) -> PreparedData:
    """The data of a recorded run, rebuilt from its manifest's settings, checked against its splits.

    ``registry`` replaces the recorded datasets.toml (moved since); ``size`` the recorded size
    (a search's trial may have chosen another). Runs recorded before the ``data`` section had
    only the dataset, folds, seed and resize.
    """
    recorded = manifest.get("data")
    if recorded is None:
        recorded = {"dataset": manifest.get("dataset_arg", manifest["dataset"]["name"]),
                    "folds": manifest["split"]["folds"], "seed": manifest["split"]["seed"],
                    "resize": manifest["cache"]["resize"]}
    settings = {k: v for k, v in recorded.items() if k in DataSettings.__dataclass_fields__}
    if registry is not None:
        settings["registry"] = registry
    data = prepare_data(**settings, size=size or recorded.get("size"))
    expected = manifest["split"].get("digest")
    if expected is not None and data.splits_digest != expected:
        raise DataError(f"The dataset changed since this run was made (its splits differ from the recorded ones, "
                        f"settings {settings}): results on it would not match the run's. Re-run the search.")
    return data


_SHOWN = 20  # lines of a long listing printed; the manifest keeps them all


def _listing(lines: list[str]) -> str:
    more = f"\n  ... and {len(lines) - _SHOWN} more" if len(lines) > _SHOWN else ""
    return "\n".join(f"  {line}" for line in lines[:_SHOWN]) + more


class DataBySize:
    """The prepared data at every image size a search asks for, with one set of splits.

    A space may search the image size; each size has its own cache, but every size must use the
    splits chosen at the reference size, or trials at different sizes would not be comparable.
    """

    def __init__(self, reference: PreparedData, cache_dir: Path | None = None) -> None:
        self.reference = reference
        self.cache_dir = cache_dir
        self._by_size = {reference.size: reference}

    def __call__(self, size: int | None) -> PreparedData:
        size = size or self.reference.size
        if size not in self._by_size:
            data = prepare_data(**asdict(self.reference.settings), size=size, cache_dir=self.cache_dir)
            if data.index.paths != self.reference.index.paths:
                raise DataError(f"The images usable at {size} px differ from those at {self.reference.size} px.")
            self._by_size[size] = replace(data, splits=self.reference.splits)
        return self._by_size[size]


@dataclass
class FoldScore:
    fold: int
    status: str
    metrics: dict[str, float]
    info: dict[str, Any]


# Seed offset of the refit's inner split, apart from the folds' (0..k-1).
REFIT_SPLIT = 1000


def inner_split(data: PreparedData, train: np.ndarray, fraction: float, key: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit, stop)`` masks: ``stop`` holds about ``fraction`` of each class of ``train``, in whole
    groups (patients, duplicates); early stopping, LR reduction and epoch-level pruning read it,
    the model trains on ``fit``.

    The split depends on the dataset's split seed and ``key`` (the fold, or ``REFIT_SPLIT``), not
    on the trial: every trial of a search stops on the same images, so their epoch curves are
    comparable and a pruner compares like with like.
    """
    stop = np.zeros_like(train)
    if fraction > 0:
        rows = np.flatnonzero(train)
        picked = stratified_group_fraction(data.index.labels[rows], data.splits.groups[rows], fraction,
                                           seed=data.splits.seed * 7919 + key)
        stop[rows[picked]] = True
    return train & ~stop, stop


def epoch_scorer(data: PreparedData, metrics: tuple[str, ...]) -> Callable[[np.ndarray, np.ndarray], dict[str, float]]:
    """Scores the inner split's predictions each epoch with metrics of the registry."""
    def score(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
        return M.compute_metrics(y, proba, names=metrics, positive=data.positive)

    return score


def _fold_predictions(data: PreparedData, val: np.ndarray, proba: np.ndarray) -> pd.DataFrame:
    idx = data.index
    rows = np.flatnonzero(val)
    frame = pd.DataFrame({
        "path": [idx.paths[i] for i in rows],
        "group": [idx.groups[i] for i in rows],
        "truth": [idx.classes[idx.labels[i]] for i in rows],
        "target": idx.labels[rows],  # class index of truth
    })
    for c, name in enumerate(idx.classes):
        frame[f"p_{name}"] = proba[:, c]
    return frame


def cross_validate(
    data: PreparedData,
    config: Any,
    run: RunDir,
    *,
    trial: int = 0,
    on_fold: Callable[[FoldScore], None] | None = None,
    on_epoch: Callable[[int, int, dict[str, float]], str | None] | None = None,
    stop_after_fold: Callable[[FoldScore], bool] | None = None,
    epoch_metrics: tuple[str, ...] = ("balanced_accuracy",),
) -> list[FoldScore]:
    """Train ``config`` on every fold (model built once); returns per-fold scores.

    Each training fold gives up an inner split (``config.inner_val``) that early stopping, LR
    reduction and ``on_epoch`` read (its ``val_*`` logs, with ``epoch_metrics``); the outer fold
    is predicted once, after training, and only that prediction is scored. ``on_epoch`` may
    return a reason to stop the fold (a pruned trial): the fold is recorded with that status.
    """
    from bench.training import features  # imports keras: keep `bench datasets` fast
    from bench.training.route import trainer_for

    s = data.splits
    labels = data.index.labels
    first_train, _ = s.fold_masks(0)
    # `inputs` are the images, or the frozen backbone's cached outputs for them (same rows).
    trainer, inputs, cached = trainer_for(config, data, n_train_hint=int(first_train.sum()))
    scorer = epoch_scorer(data, epoch_metrics)
    scores: list[FoldScore] = []
    for k in range(s.folds):
        train, val = s.fold_masks(k)
        fit, stop = inner_split(data, train, config.inner_val, key=k)
        result = trainer.fit_fold(
            k, inputs[fit], labels[fit], inputs[val], labels[val],
            inputs[stop], labels[stop], scorer=scorer,
            on_epoch=(lambda e, logs, k=k: on_epoch(k, e, logs)) if on_epoch else None,
        )
        n_epochs = max(result.epochs_run, 1)
        info = {
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "n_train": result.n_train, "n_val": result.n_val, "n_inner_val": result.n_stop,
            "seconds_fit": round(result.seconds.get("fit", 0.0), 3),
            "seconds_first_epoch": round(result.seconds.get("first_epoch", 0.0), 3),
            # How the fold's compiled model came to be (built, reused from the trial's earlier fold,
            # restored from an earlier trial's in this worker) and what each step cost.
            "model": result.origin,
            "seconds_build": round(result.seconds.get("build", 0.0), 3),
            "seconds_restore": round(result.seconds.get("restore", 0.0), 3),
            "seconds_trace": round(result.seconds.get("trace", 0.0), 3),
            "seconds_bn_reestimate": round(result.seconds.get("bn_reestimate", 0.0), 3),
            "seconds_predict": round(result.seconds.get("predict", 0.0), 3),
            "seconds_per_epoch": round(result.seconds.get("fit", 0.0) / n_epochs, 3),
            "images_per_second": round(result.n_train * n_epochs / max(result.seconds.get("fit", 1e-9), 1e-9), 2),
            "learning_rate_final": trainer.learning_rate,
            "trainable_params": trainer.trainable_params,
            "total_params": trainer.total_params,
            **features.fold_info(cached, k == 0, epochs_run=result.epochs_run, n_train=result.n_train,
                                 n_stop=result.n_stop, n_val=result.n_val),
        }
        metric_values: dict[str, float] = {}
        predictions = None
        if result.ok:
            metric_values = M.compute_metrics(labels[val], result.proba, positive=data.positive)
            predictions = _fold_predictions(data, val, result.proba)
        run.append_fold(
            trial=trial, fold=k, backbone=config.backbone, status=result.status, info=info,
            metrics=metric_values, predictions=predictions, history=result.history,
        )
        score = FoldScore(k, result.status, metric_values, info)
        scores.append(score)
        if on_fold:
            on_fold(score)
        if result.pruned or (stop_after_fold and stop_after_fold(score)):
            break
    return scores


def summarize(scores: list[FoldScore]) -> pd.DataFrame:
    """Per-metric mean and standard deviation (ddof=1) over the folds that finished."""
    frame = pd.DataFrame([s.metrics for s in scores if s.status == "ok"])
    if frame.empty:
        return pd.DataFrame(columns=["metric", "mean", "std", "folds"])
    out = pd.DataFrame({"metric": frame.columns, "mean": frame.mean().values,
                        "std": frame.std(ddof=1).values, "folds": frame.count().values})
    return out
