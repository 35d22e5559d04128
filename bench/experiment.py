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
from bench.config import DatasetSpec
from bench.data import cache as image_cache
from bench.data.index import DatasetIndex, build_index
from bench.data.registry import binary_positive, resolve
from bench.data.splits import Splits, build_splits
from bench.errors import DataError
from bench.results import RunDir


@dataclass(frozen=True)
class PreparedData:
    spec: DatasetSpec
    index: DatasetIndex  # usable images only (unreadable ones dropped)
    images: np.ndarray  # (n, size, size, 3) uint8, rows aligned with index
    splits: Splits
    cache: image_cache.ImageCache
    skipped: tuple[tuple[str, str], ...]  # (path, reason) of unreadable files
    size: int
    resize: str

    @property
    def splits_digest(self) -> str:
        """Digest of which image is in which fold or the test set: a resumed study must match it."""
        h = hashlib.sha256()
        for path, test, fold in zip(self.index.paths, self.splits.test, self.splits.fold):
            h.update(f"{path}\0{int(test)}\0{int(fold)}\n".encode())
        return h.hexdigest()

    @property
    def positive(self) -> int | None:
        return binary_positive(self.spec, self.index.classes)

    def summary(self) -> dict[str, Any]:
        """The dataset and split facts a manifest or report needs."""
        s, idx = self.splits, self.index
        cv = ~s.test
        return {
            "dataset": {
                "name": self.spec.name, "title": self.spec.title, "root": str(idx.root),
                "license": self.spec.license, "citation": self.spec.citation,
                "classes": list(idx.classes), "images": len(idx), "per_class": idx.counts(),
                "groups": int(len(np.unique(s.groups))), "group_rule": self.spec.groups.kind,
                "fingerprint": self.cache.fingerprint, "skipped": [list(p) for p in self.skipped],
                "ignored_non_images": len(idx.ignored), "duplicates": s.duplicates,
                "duplicate_groups_merged": s.duplicate_groups_merged,
                "positive": None if self.positive is None else idx.classes[self.positive],
                "source": self.spec.source.kind,
                # Published results the report sets beside the held-out ones (bench/baselines/).
                "baselines": asdict(self.spec.baselines) if self.spec.baselines is not None else None,
            },
            "split": {
                "rule": s.rule, "folds": s.folds, "seed": s.seed,
                "cv_images": int(cv.sum()), "test_images": int(s.test.sum()),
                "cv_groups": int(len(np.unique(s.groups[cv]))),
                "test_groups": int(len(np.unique(s.groups[s.test]))),
                "fold_sizes": [int((s.fold == k).sum()) for k in range(s.folds)],
                "digest": self.splits_digest,
            },
            "cache": {"key": self.cache.key, "path": str(self.cache.path), "bytes": self.cache.nbytes,
                      "built": self.cache.built, "size": self.size, "resize": self.resize,
                      "source": self.cache.source},
        }


def prepare_data(
    dataset: str,
    *,
    folds: int,
    seed: int = 0,
    size: int | None = None,
    resize: str | None = None,
    strict: bool = False,
    group_regex: str | None = None,
    registry_path: Path | None = None,
    cache_dir: Path | None = None,
    test_fraction: float | None = None,
) -> PreparedData:
    spec, root = resolve(dataset, registry_path=registry_path, group_regex=group_regex)
    index = build_index(spec, root)
    size = size if size is not None else spec.image_size  # 0 is an error, never "the default"
    resize = resize or spec.resize
    cached = image_cache.load_or_build(index, size, resize, cache_dir=cache_dir)
    skipped = tuple((index.paths[i], reason) for i, reason in sorted(cached.failed.items()))
    if skipped and strict:
        listing = "\n".join(f"  {index.root / p}: {r}" for p, r in skipped[:20])
        more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
        raise DataError(
            f"{len(skipped)} unreadable image file(s) in {index.root} (--strict):\n{listing}{more}\n"
            f"Remove or replace them, or run without --strict to skip them."
        )
    keep = np.ones(len(index), dtype=bool)
    keep[list(cached.failed)] = False
    usable = index.subset(keep) if skipped else index
    if skipped:
        for path, reason in skipped:
            print(f"warning: skipped unreadable image {index.root / path}: {reason}", file=sys.stderr)
    hashes = tuple(h for h, k in zip(cached.row_hashes, keep) if k)
    group_word = "patient" if spec.groups.kind != "none" else "image group"
    splits = build_splits(
        usable.labels, usable.groups, hashes, usable.classes,
        folds=folds, seed=seed, official_test=usable.official_test,
        test_fraction=test_fraction if test_fraction is not None else spec.test.fraction,
        group_word=group_word,
    )
    rows = np.flatnonzero(keep)
    images = np.asarray(cached.array[rows]) if skipped else np.asarray(cached.array)
    return PreparedData(spec, usable, images, splits, cached, skipped, size, resize)


class DataBySize:
    """The prepared data at every image size a search asks for, with one set of splits.

    A space may search the image size; each size has its own cache, but every size must use the
    splits chosen at the reference size, or trials at different sizes would not be comparable.
    """

    def __init__(self, reference: PreparedData, **prepare_kwargs: Any) -> None:
        self.reference = reference
        self.kwargs = prepare_kwargs
        self._by_size = {reference.size: reference}

    def __call__(self, size: int | None) -> PreparedData:
        size = size or self.reference.size
        if size not in self._by_size:
            data = prepare_data(**{**self.kwargs, "size": size})
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
    on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
    stop_after_fold: Callable[[FoldScore], bool] | None = None,
) -> list[FoldScore]:
    """Train ``config`` on every fold (model built once); returns per-fold scores."""
    from bench.train import FoldTrainer  # imports keras: keep `bench datasets` fast

    s = data.splits
    labels = data.index.labels
    first_train, _ = s.fold_masks(0)
    trainer = FoldTrainer(config, len(data.index.classes), n_train_hint=int(first_train.sum()))
    scores: list[FoldScore] = []
    for k in range(s.folds):
        train, val = s.fold_masks(k)
        result = trainer.fit_fold(
            k, data.images[train], labels[train], data.images[val], labels[val],
            on_epoch=(lambda e, logs, k=k: on_epoch(k, e, logs)) if on_epoch else None,
        )
        n_epochs = max(result.epochs_run, 1)
        info = {
            "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
            "n_train": result.n_train, "n_val": result.n_val,
            "seconds_fit": round(result.seconds.get("fit", 0.0), 3),
            "seconds_first_epoch": round(result.seconds.get("first_epoch", 0.0), 3),
            "seconds_build": round(result.seconds.get("build", 0.0), 3),
            "seconds_bn_reestimate": round(result.seconds.get("bn_reestimate", 0.0), 3),
            "seconds_predict": round(result.seconds.get("predict", 0.0), 3),
            "seconds_per_epoch": round(result.seconds.get("fit", 0.0) / n_epochs, 3),
            "images_per_second": round(result.n_train * n_epochs / max(result.seconds.get("fit", 1e-9), 1e-9), 2),
            "learning_rate_final": trainer.learning_rate,
            "trainable_params": trainer.parts.trainable_params,
            "total_params": trainer.parts.total_params,
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
        if stop_after_fold and stop_after_fold(score):
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
