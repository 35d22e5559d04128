"""Frozen features, computed once: a frozen backbone's output for every image, cached on disk.

A trial whose backbone is entirely frozen (``unfrozen = 0``) and whose augmentation is ``none``
runs the same backbone forward pass on the same images every epoch of every fold. Its output
cannot change, so it is computed once per (images, size, resize mode, backbone, weights) and the
head trains on it. What is cached is the backbone's output feature map *before* pooling: that is
what the head's first layer reads, so the head trained on it is the very head of the ordinary
path, whatever pooling or dense layers it has (measured: EfficientNet-Lite0 at 128 px is
4x4x1280 per image, 40 KiB in float16; 1,000 images are 40 MiB).

Each entry is a float16 ``.npy`` under ``BENCH_CACHE/features``, memory-mapped, written to a
temporary file and renamed into place under a file lock: among the worker processes of a study
one computes it, the others wait for the lock and then read it. Its ``.json`` beside it records
the shape and a digest of the array; an entry whose file is truncated or whose digest differs is
rebuilt, never trained on. ``BENCH_FEATURE_CACHE_GB`` (default 4) bounds the folder: older
entries are removed to make room, and an entry larger than the whole budget is not cached (the
trial then runs the backbone every epoch, as it would without this module).

Weights identity: the sha256 of the weights file; a randomly initialised backbone has no file and
its weights follow from the trial's seed through Keras' random generators, so its identity is the
digest of the initial weight values themselves (``random:<digest>``): two trials share an entry
exactly when their frozen weights are equal, whatever the seed-to-weights path of a Keras version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from filelock import FileLock

from bench import paths
from bench.atomic import atomic_path, remove_stale_temporaries, write_text_atomic
from bench.errors import ConfigError
from bench.models import get_backbone
from bench.models.preprocess import preprocessing_identity
from bench.results import FEATURES_CACHED, FEATURES_COMPUTED

log = logging.getLogger(__name__)

BUDGET_ENV = "BENCH_FEATURE_CACHE_GB"
DEFAULT_BUDGET_GB = 4.0
# Bump when what a feature array holds changes in a way the key cannot see (which layer is cached,
# a backbone builder's own code), so old entries are not reused. The key itself reads the dtype
# policy, the Keras backend and what the backbone's preprocessing computes.
FEATURES_VERSION = 1
_CHUNK = 256  # images per forward call while building: large calls amortise dispatch


def eligible(config: Any) -> bool:
    """Whether a configuration's backbone output is the same every epoch: fully frozen, no
    augmentation. (Two-phase fine-tuning with nothing to unfreeze keeps the ordinary path: its
    second phase restarts the optimizer, which the one-phase head on features does not.)"""
    return config.unfrozen == 0 and config.augment == "none" and not getattr(config, "head_epochs", 0)


def budget_bytes() -> int:
    raw = os.environ.get(BUDGET_ENV, "").strip()
    try:
        gb = float(raw) if raw else DEFAULT_BUDGET_GB
    except ValueError:
        gb = -1.0
    if not gb >= 0:
        raise ConfigError(f"{BUDGET_ENV}={raw!r} must be a number of GiB (0 or more), e.g. {DEFAULT_BUDGET_GB:g}.")
    return int(gb * 2**30)


def features_dir() -> Path:
    return paths.cache_dir() / "features"


@dataclass(frozen=True)
class Features:
    """The cached feature maps of a set of images, row i = image i."""

    array: np.ndarray  # (n, h, w, c) float16, memory-mapped read-only
    key: str
    path: Path
    built: bool  # True when this call computed them
    seconds: float  # what this call spent: computing (built) or loading and checking
    backbone_seconds_per_image: float  # measured when the entry was built: one forward pass

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


def _sha256_file(path: str | Path) -> str:
    """sha256 of a weights file, or of a keras-hub preset folder (its files' names and bytes)."""
    path = Path(path)
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            h.update(file.relative_to(path).as_posix().encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def weights_identity(weights_file: str | None, base: keras.Model | None) -> str:
    """sha256 of the weights file (or preset folder), or ``random:<digest of the initial values>``
    (then ``base``, the built backbone, is needed)."""
    if weights_file is not None:
        return _sha256_file(weights_file)
    if base is None:
        raise ValueError("a randomly initialised backbone is identified by its built weights: pass it")
    h = hashlib.sha256()
    for v in base.weights:
        h.update(np.ascontiguousarray(keras.ops.convert_to_numpy(v)).tobytes())
    return "random:" + h.hexdigest()


def feature_key(images_id: str, size: int, resize: str, backbone: str, weights_id: str) -> str:
    """The entry's file stem: readable at a glance, unique by a digest of every part.

    Besides the arguments, what else changes the features: the dtype policy (``--precision``
    mixed_float16 computes them in float16), the Keras backend (kernels differ), and the
    backbone's preprocessing (by what it computes, so an edited mode makes new entries)."""
    parts = "\0".join(str(p) for p in (
        images_id, size, resize, backbone, weights_id, keras.__version__, FEATURES_VERSION,
        keras.config.dtype_policy().name, keras.backend.backend(),
        preprocessing_identity(get_backbone(backbone).preprocess)))
    digest = hashlib.sha256(parts.encode()).hexdigest()[:20]
    return f"{backbone}-{size}px-{resize}-{digest}"


def _array_digest(array: np.ndarray) -> str:
    h = hashlib.blake2b(digest_size=16)
    for start in range(0, len(array), 1024):
        h.update(np.ascontiguousarray(array[start : start + 1024]).tobytes())
    return h.hexdigest()


def _load(npy: Path, meta_path: Path) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The entry if it is whole and unchanged, else None (missing, truncated, corrupt)."""
    try:
        meta = json.loads(meta_path.read_text())
        array = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if list(array.shape) != meta.get("shape") or array.dtype != np.float16 or _array_digest(array) != meta.get("digest"):
        return None
    return array, meta


@dataclass(frozen=True)
class Entry:
    """What a cached entry's record says, read without the array: enough to build a head alone."""

    feature_shape: tuple[int, ...]  # one image's feature map
    base_params: int  # the backbone's parameters (the classifier's count is these plus the head's)


def peek(key: str, *, cache_dir: Path | None = None) -> Entry | None:
    """The record of entry ``key`` when it has one that says the backbone's size (older entries
    do not: the caller then builds the backbone as before). The array itself is checked by
    ``load_or_build``."""
    root = cache_dir or features_dir()
    try:
        meta = json.loads((root / f"{key}.json").read_text())
        return Entry(tuple(int(d) for d in meta["shape"][1:]), int(meta["base_params"]))
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None


def _make_room(root: Path, need: int, budget: int, keep: tuple[Path, ...]) -> None:
    """Remove the least recently used entries until ``need`` more bytes fit in the budget.

    A process that has an entry memory-mapped keeps reading it after the unlink (POSIX)."""
    entries = sorted(root.glob("*.npy"), key=lambda p: p.stat().st_atime)
    used = sum(p.stat().st_size for p in entries)
    for old in entries:
        if used + need <= budget:
            break
        if old in keep:
            continue
        used -= old.stat().st_size
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
        log.info("removed feature cache %s to stay within %s", old, BUDGET_ENV)


def _compute(extractor: keras.Model, images: np.ndarray, out: np.ndarray) -> float:
    """Fill ``out`` with the extractor's outputs; returns the seconds of one forward pass per
    image, timed on the chunks after the first (the first pays the tracing, which the ordinary
    path pays once per trial, not per epoch). Every call has the same shape (the last chunk is
    padded), so the extractor is traced once. Only a set of one chunk is passed through again
    to be timed: timing it a second time on a larger set cost a third of the build (measured:
    2.4 of 7.3 s for 976 X-rays at 128 px on Lite0)."""
    chunk = min(_CHUNK, len(images))
    timed, timed_images = 0.0, 0
    for start in range(0, len(images), chunk):
        batch = np.asarray(images[start : start + chunk], "float32")
        real = len(batch)
        if real < chunk:
            batch = np.concatenate([batch, np.zeros((chunk - real, *batch.shape[1:]), "float32")])
        t0 = time.perf_counter()
        result = extractor.predict_on_batch(batch)
        if start:
            timed, timed_images = timed + time.perf_counter() - t0, timed_images + chunk
        out[start : start + real] = np.asarray(result)[:real]
    if not timed_images:  # one chunk: its only call was the traced one
        t0 = time.perf_counter()
        extractor.predict_on_batch(np.asarray(images[:chunk], "float32"))
        timed, timed_images = time.perf_counter() - t0, chunk
    return timed / max(timed_images, 1)


def load_or_build(
    extractor: keras.Model | Callable[[], keras.Model], images: np.ndarray, key: str, *,
    cache_dir: Path | None = None, feature_shape: tuple[int, ...] | None = None,
) -> Features | None:
    """The features of ``images`` under ``key``; computed only when no whole entry exists.

    ``extractor`` may be a function that builds it: with ``feature_shape`` given, it is called
    only when the entry has to be computed. None when the entry alone is larger than the budget:
    the caller then runs the backbone."""
    t0 = time.perf_counter()
    root = cache_dir or features_dir()
    root.mkdir(parents=True, exist_ok=True)
    npy, meta_path = root / f"{key}.npy", root / f"{key}.json"
    if feature_shape is None:
        extractor = _model(extractor)
        feature_shape = tuple(int(d) for d in extractor.output.shape[1:])
    shape = (len(images), *feature_shape)
    need = int(np.prod(shape)) * 2
    budget = budget_bytes()
    if need > budget:
        log.info("features of %s need %d bytes, more than %s allows: not cached", key, need, BUDGET_ENV)
        return None
    found = _load(npy, meta_path)
    if found is None:
        with FileLock(str(root / f"{key}.lock")):
            found = _load(npy, meta_path)  # another process may have built it while we waited
            if found is None:
                for stale in remove_stale_temporaries(root):
                    log.info("removed %s, left by a killed writer", stale)
                meta_path.unlink(missing_ok=True)  # a broken entry: its meta must not outlive the rebuild
                _make_room(root, need, budget, keep=(npy,))
                _build(_model(extractor), images, shape, npy, meta_path)
                found = _load(npy, meta_path)
                if found is None:
                    raise OSError(f"the feature cache {npy} just written does not read back whole")
                array, meta = found
                return Features(array, key, npy, True, time.perf_counter() - t0, meta["seconds_per_image"])
    os.utime(npy)  # least recently used goes first when the budget is full
    array, meta = found
    if "base_params" not in meta and isinstance(extractor, keras.Model):
        # An entry written before records kept it: with it, later trials build the head alone (peek).
        write_text_atomic(meta_path, json.dumps({**meta, "base_params": int(extractor.count_params())}))
    return Features(array, key, npy, False, time.perf_counter() - t0, meta["seconds_per_image"])


def _build(extractor: keras.Model, images: np.ndarray, shape: tuple[int, ...], npy: Path, meta_path: Path) -> None:
    with atomic_path(npy) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        t0 = time.perf_counter()
        per_image = _compute(extractor, images, out)
        seconds = time.perf_counter() - t0
        out.flush()
        digest = _array_digest(out)
        del out
    # The meta is the commit point: an entry without it (or not matching it) is rebuilt.
    write_text_atomic(meta_path, json.dumps({
        "shape": list(shape), "digest": digest, "seconds": round(seconds, 4),
        "seconds_per_image": per_image, "keras": keras.__version__, "backend": keras.backend.backend(),
        "dtype_policy": keras.config.dtype_policy().name, "base_params": int(extractor.count_params()),
    }))


def _model(extractor: keras.Model | Callable[[], keras.Model]) -> keras.Model:
    return extractor if isinstance(extractor, keras.Model) else extractor()


def split_at_backbone(classifier: keras.Model, base: keras.Model) -> tuple[keras.Model, keras.Model]:
    """``(extractor, head)`` of a built classifier: image -> feature map, feature map -> probabilities.

    Both reuse the classifier's own layers (Keras 3 rebuilds a functional graph between any two
    of its tensors), so training the head trains the classifier's head: the classifier stays the
    full image -> probabilities model that is exported, and the head is whatever
    ``build_classifier`` built, with no second copy of the head's code.
    """
    # The base is called once, inside the classifier: that call's output is the feature map.
    (node,) = base._inbound_nodes
    maps = node.output_tensors[0]
    return (keras.Model(classifier.input, maps, name=f"{base.name}_features"),
            keras.Model(maps, classifier.output, name=f"{base.name}_head"))



def predict_head(head: keras.Model, x: np.ndarray) -> np.ndarray:
    """The head's probabilities for feature maps ``x``, in fixed-size padded batches.

    ``model.predict`` sets up a data pipeline per call (measured: 0.3 s of a 0.4 s epoch of a
    head on 170 feature maps, most of it the inner split's per-epoch prediction); one traced call
    per batch of a fixed shape costs milliseconds and never retraces. Rows are independent in
    inference mode, so the padding changes no prediction."""
    out = []
    for start in range(0, len(x), _CHUNK):
        chunk = np.asarray(x[start : start + _CHUNK])
        padded = np.zeros((_CHUNK, *chunk.shape[1:]), chunk.dtype)
        padded[: len(chunk)] = chunk
        out.append(np.asarray(head.predict_on_batch(padded))[: len(chunk)])
    return np.concatenate(out) if out else np.zeros((0, head.output.shape[-1]))


def images_id(data: Any) -> str:
    """Which images, decoded how: the image cache's key (fingerprint, size, resize, decoder) and
    the rows a prepared dataset kept of it (unreadable files and dropped classes left out)."""
    h = hashlib.sha256(data.cache.key.encode())
    for path in data.index.paths:
        h.update(b"\0" + path.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def fold_info(found: Features | None, first_fold: bool, *, epochs_run: int, n_train: int, n_stop: int,
              n_val: int) -> dict[str, Any]:
    """folds.csv's columns on the feature cache: which path the fold took, the seconds it spent
    on the cache (the first fold of a trial carries the building or loading) and an estimate of
    the seconds the cache saved: one backbone forward pass per image (timed when the entry was
    built, in large batches, so the estimate errs low) for every image the ordinary path would
    have sent through the backbone (training and inner-validation images each epoch, the
    validation fold once), minus what this fold spent on the cache."""
    if found is None:
        return {"features": FEATURES_COMPUTED, "seconds_features": 0.0, "seconds_saved_est": 0.0}
    spent = found.seconds if first_fold else 0.0
    forward = found.backbone_seconds_per_image * (epochs_run * (n_train + n_stop) + n_val)
    return {"features": FEATURES_CACHED, "seconds_features": round(spent, 3), "seconds_saved_est": round(forward - spent, 3)}
