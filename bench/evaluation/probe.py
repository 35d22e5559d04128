"""``bench probe``: every backbone at every size, scored in minutes on frozen, pooled features.

MedMNIST+ (Doerrich et al. 2024) finds a linear probe and kNN on a frozen backbone's features
strong, cheap baselines across resolutions. Each backbone x size here costs one forward pass
over the images (through the frozen-feature cache, so a later frozen search trial on the same
backbone, size and weights reads the same entry) and then seconds of scikit-learn:

* ``linear``: standardised features, logistic regression with balanced class weights (as the
  trainer weights classes by default); its regularisation C is chosen on the inner split of the
  training fold (the same split a trial's early stopping reads), then refit on the whole fold;
* ``knn``: the k = 11 nearest training images by cosine distance; nothing to choose.

The scores use the same folds and the same held-out test set as a search of the same data
settings: CV mean ± std over the folds, and the held-out test with bootstrap CIs over patients
(images where the dataset has no patient ids). A probe is fitted on the CV pool alone before it
sees the test set, which nothing here chooses on. The held-out scores are printed and written
for every probe: unlike a search, there is nothing being chosen that they could leak into.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import metrics as M
from bench.errors import ConfigError

KNN_NEIGHBOURS = 11
# Logistic regression's inverse regularisation strength, weakest last: the inner split picks one.
C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
INNER_FRACTION = 0.15  # of each training fold, whole groups, stratified (TrainConfig.inner_val's default)
MAX_ITER = 2000


def linear_model(c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=MAX_ITER))


def knn_model(n_train: int) -> Any:
    from sklearn.neighbors import KNeighborsClassifier

    return KNeighborsClassifier(n_neighbors=min(KNN_NEIGHBOURS, n_train), metric="cosine")


def _proba(model: Any, x: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities in class-index order, zero for a class the training fold lacked."""
    out = np.zeros((len(x), n_classes))
    out[:, model.classes_] = model.predict_proba(x)
    return out


def _inner_log_loss(model: Any, x: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    p = np.clip(_proba(model, x, n_classes)[np.arange(len(y)), y], 1e-15, 1.0)
    return float(-np.mean(np.log(p)))


def fit_linear(x_fit: np.ndarray, y_fit: np.ndarray, x_stop: np.ndarray, y_stop: np.ndarray,
               n_classes: int) -> tuple[Any, dict[str, Any]]:
    """Choose C by the inner split's log loss, then refit on fit + stop.

    Log loss, not accuracy: on an inner split of a few dozen images accuracy ties across most
    strengths, while a proper score still ranks them. Ties go to the stronger regularisation."""
    losses = {c: _inner_log_loss(linear_model(c).fit(x_fit, y_fit), x_stop, y_stop, n_classes) for c in C_GRID}
    best = min(C_GRID, key=lambda c: (losses[c], c))
    model = linear_model(best).fit(np.concatenate([x_fit, x_stop]), np.concatenate([y_fit, y_stop]))
    return model, {"C": best}


def fit_knn(x_fit: np.ndarray, y_fit: np.ndarray, x_stop: np.ndarray, y_stop: np.ndarray,
            n_classes: int) -> tuple[Any, dict[str, Any]]:
    x, y = np.concatenate([x_fit, x_stop]), np.concatenate([y_fit, y_stop])
    return knn_model(len(y)).fit(x, y), {"k": min(KNN_NEIGHBOURS, len(y))}


# The probes, by name: fit(x_fit, y_fit, x_stop, y_stop, n_classes) -> (model, what it chose).
PROBES: dict[str, Callable[..., tuple[Any, dict[str, Any]]]] = {"linear": fit_linear, "knn": fit_knn}


@dataclass(frozen=True)
class PooledFeatures:
    array: np.ndarray  # (n, channels) float32: the backbone's output averaged over its positions
    seconds: float  # building the backbone and building or loading its cached feature maps
    cached: str  # "built", "loaded" or "not cached" (over BENCH_FEATURE_CACHE_GB)


def pooled_features(data: Any, backbone: str, weights: str | None, *, seed: int = 0,
                    cache_dir: Path | None = None) -> PooledFeatures:
    """Global average pooling of the frozen backbone's output for every image of ``data``.

    The maps come from the frozen-feature cache under the very key a frozen trial of this
    backbone, size and weights uses (its extractor is the same image -> backbone output graph,
    built after the same seed), so a probe and a later search share one forward pass."""
    import keras

    from bench.models import build_classifier, get_backbone, resolve_weights
    from bench.training import features as F

    t0 = time.perf_counter()
    keras.backend.clear_session()  # one model per pair: a long list must not keep every earlier backbone
    keras.utils.set_random_seed(seed)  # what FoldTrainer does before building: equal random inits
    parts = build_classifier(backbone, len(data.index.classes), data.size, weights=weights, unfrozen=0)
    extractor, _ = F.split_at_backbone(parts.model, parts.base)
    weights_file = resolve_weights(get_backbone(backbone), weights)
    key = F.feature_key(F.images_id(data), data.size, data.resize, backbone,
                        F.weights_identity(weights_file, parts.base))
    found = F.load_or_build(extractor, data.images, key, cache_dir=cache_dir)
    if found is not None:
        maps, cached = found.array, "built" if found.built else "loaded"
    else:  # larger than the whole cache budget: run the backbone once, pooling chunk by chunk
        maps, cached = None, "not cached"
    pooled = pool(maps) if maps is not None else np.concatenate([
        pool(np.asarray(extractor.predict_on_batch(np.asarray(data.images[i:i + 256], "float32"))))
        for i in range(0, len(data.images), 256)])
    return PooledFeatures(pooled, time.perf_counter() - t0, cached)


def pool(maps: np.ndarray) -> np.ndarray:
    """(n, h, w, c) -> (n, c) float32, the head's GlobalAveragePooling2D, in blocks (maps may be memory-mapped)."""
    return np.concatenate([np.asarray(maps[i:i + 1024], np.float32).mean(axis=(1, 2))
                           for i in range(0, len(maps), 1024)]) if len(maps) else np.zeros((0, maps.shape[-1]))


@dataclass
class ProbeResult:
    """One probe on one backbone x size: per-fold scores, the held-out CIs, what it chose, its time."""

    probe: str
    fold_metrics: list[dict[str, float]]
    test: dict[str, M.CI]
    chosen: list[dict[str, Any]]  # per fold, then the held-out fit last
    seconds: float
    n_test: int
    test_proba: np.ndarray = field(repr=False, default_factory=lambda: np.zeros((0, 0)))


def run_probe(name: str, x: np.ndarray, data: Any, *, n_boot: int = 1000, seed: int = 0) -> ProbeResult:
    """Probe ``name`` on features ``x`` (rows aligned with ``data.images``): k folds, then held-out."""
    from bench.training.experiment import REFIT_SPLIT, inner_split

    if name not in PROBES:
        raise ConfigError(f"Unknown probe {name!r}; known: {', '.join(PROBES)}.")
    fit_probe = PROBES[name]
    s, y = data.splits, data.index.labels
    n_classes = len(data.index.classes)
    t0 = time.perf_counter()
    folds, chosen = [], []
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        # lbfgs on the weakest strengths may stop at max_iter: that C then loses on the inner split.
        warnings.simplefilter("ignore", category=ConvergenceWarning)
        for k in range(s.folds):
            train, val = s.fold_masks(k)
            fit, stop = inner_split(data, train, INNER_FRACTION, key=k)
            model, picked = fit_probe(x[fit], y[fit], x[stop], y[stop], n_classes)
            folds.append(M.compute_metrics(y[val], _proba(model, x[val], n_classes), positive=data.positive))
            chosen.append(picked)
        # The held-out fit: the CV pool (never the images excluded for sharing a patient with the test set).
        fit, stop = inner_split(data, s.cv, INNER_FRACTION, key=REFIT_SPLIT)
        model, picked = fit_probe(x[fit], y[fit], x[stop], y[stop], n_classes)
        chosen.append(picked)
        proba = _proba(model, x[s.test], n_classes)
    seconds = time.perf_counter() - t0
    test: dict[str, M.CI] = {}
    if s.test.any():
        unit = "patients" if data.spec.groups.kind != "none" else "images"
        test = M.bootstrap_all(y[s.test], proba, n_boot=n_boot, seed=seed, positive=data.positive,
                               groups=s.groups[s.test], unit=unit)
    return ProbeResult(name, folds, test, chosen, seconds, int(s.test.sum()), proba)


def result_rows(result: ProbeResult, *, backbone: str, size: int, weights: str, features: PooledFeatures,
                n_cv: int) -> list[dict[str, Any]]:
    """probes.csv rows of one result: one per metric, CV mean ± std beside the held-out CI."""
    folds = pd.DataFrame(result.fold_metrics)
    rows = []
    for metric in folds.columns:
        values = folds[metric].dropna()
        ci = result.test.get(metric)
        rows.append({
            "backbone": backbone, "size": size, "weights": weights, "probe": result.probe, "metric": metric,
            "cv_mean": float(values.mean()) if len(values) else np.nan,
            "cv_std": float(values.std(ddof=1)) if len(values) > 1 else np.nan,
            "folds": len(values), "n_cv": n_cv,
            "test": ci.value if ci else np.nan, "test_low": ci.low if ci else np.nan,
            "test_high": ci.high if ci else np.nan, "n_test": result.n_test,
            "n_boot": ci.n_boot if ci else 0, "unit": ci.unit if ci else "", "n_units": ci.n_units if ci else 0,
            "feature_dim": int(features.array.shape[1]), "features": features.cached,
            "seconds_features": round(features.seconds, 3), "seconds_probe": round(result.seconds, 3),
            "chosen": "; ".join(",".join(f"{k}={v:g}" for k, v in c.items()) for c in result.chosen),
        })
    return rows


# ---- which backbones can be probed -------------------------------------------------------------------


@dataclass(frozen=True)
class Skip:
    backbone: str
    size: int | None  # None: at every size
    reason: str

    def line(self) -> str:
        return f"skipped {self.backbone}" + (f" at {self.size} px" if self.size else "") + f": {self.reason}"


def plan(backbones: Sequence[str], sizes: Sequence[int], weights: str | None) -> tuple[list[tuple[str, int]], list[Skip]]:
    """The (backbone, size) pairs to probe, in size-major order, and the ones skipped with the fix.

    ImageNet weights must already be on this machine: a probe run never downloads (it may run
    offline, and a download that fails half-way through a list would lose the list's time)."""
    from bench.models import check_size, get_backbone, imagenet_path

    pairs, skips = [], []
    usable = []
    for name in backbones:
        spec = get_backbone(name)  # an unknown name is a ConfigError naming the known ones
        if weights == "imagenet" and not spec.has_imagenet:
            skips.append(Skip(name, None, "it has no ImageNet weights (probe it with --weights none --allow-random, "
                                          "which measures an untrained network)"))
        elif weights == "imagenet" and imagenet_path(spec) is None:
            get = (f"`bench weights convert {name}`" if spec.imagenet_convert else f"`bench weights pull {name}`")
            skips.append(Skip(name, None, f"its ImageNet weights are not on this machine; get them with {get} "
                                          f"(or `bench weights import` on a machine without internet)"))
        else:
            usable.append(spec)
    for size in sizes:
        for spec in usable:
            try:
                check_size(spec, size)
            except ConfigError as err:
                skips.append(Skip(spec.name, size, str(err)))
                continue
            pairs.append((spec.name, size))
    return pairs, skips


# ---- the whole run ------------------------------------------------------------------------------------


def probe_all(data_by_size: Callable[[int], Any], pairs: Sequence[tuple[str, int]], run: Any, *, weights: str | None,
              probes: Sequence[str] = tuple(PROBES), n_boot: int = 1000, seed: int = 0,
              say: Callable[[str], None] = lambda text: None) -> pd.DataFrame:
    """Probe every (backbone, size) pair, writing each pair's rows to ``run``'s probes.csv as soon as
    they exist (an interrupted run keeps every finished pair); returns all rows."""
    frames = []
    for backbone, size in pairs:
        data = data_by_size(size)
        found = pooled_features(data, backbone, weights, seed=seed)
        say(f"{backbone} at {size} px: {found.array.shape[1]} features per image ({found.cached}, "
            f"{found.seconds:.1f} s)")
        rows = []
        for name in probes:
            result = run_probe(name, found.array, data, n_boot=n_boot, seed=seed)
            rows += result_rows(result, backbone=backbone, size=size, weights=weights or "none", features=found,
                                n_cv=int(data.splits.cv.sum()))
        frame = pd.DataFrame(rows)
        run.append_probes(frame)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
