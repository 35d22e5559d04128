"""``bench audit``: near-duplicate clusters, and which of them conflict in label or straddle the split.

The hashing and clustering are the data room's (``bench.data.near``); this module adds what the
data room must not know: optionally, pairs of images whose pretrained features (ImageNet
EfficientNet-Lite0) are nearly parallel. It then reads the clusters against the same splits a
run would use (``prepare_data`` with the same data options): a cluster straddles when its images
sit in more than one of the test set and the CV folds, which is exactly where a near-copy
inflates a score. It writes one CSV row per clustered image and a contact sheet of the worst
clusters; it never changes the data (``--dedupe near`` on ``bench cv``/``run`` does).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.atomic import atomic_path, write_atomic
from bench.data.near import clusters_from_pairs
from bench.data.phash import HASH_BITS, shift_distance, shift_hashes, shift_pairs
from bench.training.experiment import PreparedData

FEATURE_BACKBONE = "efficientnet_lite0"
DEFAULT_MIN_COSINE = 0.95
CSV_COLUMNS = ("cluster", "path", "label", "group", "split", "fold", "distance", "cosine", "label_conflict",
               "straddles")


@dataclass(frozen=True)
class Cluster:
    """Near-duplicate images, the first (in path order) the one the others are measured against."""

    rows: np.ndarray  # image rows of the prepared data
    labels: tuple[str, ...]  # the distinct labels, sorted
    sides: tuple[str, ...]  # the distinct sides of the split they sit on ("test", "fold 2", ...)

    @property
    def conflict(self) -> bool:
        return len(self.labels) > 1

    @property
    def straddles(self) -> bool:
        return len([s for s in self.sides if s != "excluded"]) > 1  # excluded images are in neither


@dataclass(frozen=True)
class Audit:
    data: PreparedData
    threshold: int  # pHash bits
    min_cosine: float | None  # None: features not used
    clusters: list[Cluster]  # worst first: conflicting and straddling, then either, then larger
    distance: np.ndarray  # per image: pHash bits (closest shifted window) to its cluster's first image (-1 alone)
    cosine: np.ndarray | None  # per image: feature cosine to its cluster's first image
    notes: tuple[str, ...]  # e.g. why features were not used
    seconds: float

    def counts(self) -> dict[str, int | float | str]:
        sizes = [len(c.rows) for c in self.clusters]
        return {
            "images": len(self.data.index), "clusters": len(self.clusters), "images_in_clusters": sum(sizes),
            "largest_cluster": max(sizes, default=0),
            "conflicting_clusters": sum(c.conflict for c in self.clusters),
            "straddling_clusters": sum(c.straddles for c in self.clusters),
            "threshold": f"{self.threshold} of {HASH_BITS} pHash bits"
                         + (f"; feature cosine >= {self.min_cosine:g}" if self.min_cosine is not None else ""),
        }


def _sides(data: PreparedData) -> np.ndarray:
    s = data.splits
    return np.where(s.test, "test", np.where(s.fold >= 0, np.char.add("fold ", (s.fold + 1).astype(str)), "excluded"))


def lite0_weights() -> Path | None:
    from bench.models import get_backbone, imagenet_path

    return imagenet_path(get_backbone(FEATURE_BACKBONE))


def feature_embeddings(images: np.ndarray, weights: Path, batch_size: int = 64) -> np.ndarray:
    """Unit vectors of ImageNet Lite0's pooled features, centred on the dataset's mean.

    Centring matters on medical sets: every chest X-ray shares most of its ImageNet features, so
    raw cosines are all close to 1; what sets a copy apart is what it shares beyond the mean.
    """
    import keras

    from bench.models import Preprocess, get_backbone

    spec = get_backbone(FEATURE_BACKBONE)
    size = images.shape[1]
    inputs = keras.Input((size, size, 3))
    x = spec.build((size, size, 3), str(weights))(Preprocess(spec.preprocess)(inputs))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    features = np.concatenate([np.asarray(model.predict_on_batch(np.asarray(images[i:i + batch_size], np.float32)))
                               for i in range(0, len(images), batch_size)])
    features -= features.mean(axis=0)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def cosine_pairs(unit: np.ndarray, min_cosine: float, block: int = 512) -> tuple[np.ndarray, np.ndarray]:
    found_i, found_j = [], []
    for start in range(0, len(unit), block):
        i, j = np.nonzero(unit[start:start + block] @ unit.T >= min_cosine)
        i += start
        found_i.append(i[i < j])
        found_j.append(j[i < j])
    return np.concatenate(found_i), np.concatenate(found_j)


def run_audit(data: PreparedData, threshold: int, *, min_cosine: float | None = None) -> Audit:
    """Cluster ``data``'s images by pHash (and, with ``min_cosine``, by Lite0 features) and judge each cluster."""
    t0 = time.perf_counter()
    hashes = shift_hashes(data.images)
    pairs = [shift_pairs(hashes, threshold)]
    notes: list[str] = []
    unit = None
    if min_cosine is not None:
        weights = lite0_weights()
        if weights is None:
            notes.append(f"no ImageNet weights for {FEATURE_BACKBONE} on this machine (`bench weights list`; make "
                         f"them with `bench weights convert {FEATURE_BACKBONE}`): perceptual hashes only")
            min_cosine = None
        else:
            unit = feature_embeddings(data.images, weights)
            pairs.append(cosine_pairs(unit, min_cosine))
    cluster = clusters_from_pairs(len(hashes), pairs)
    labels = np.asarray(data.index.classes)[data.index.labels]
    sides = _sides(data)
    found = [Cluster(rows, tuple(sorted(set(labels[rows]))), tuple(sorted(set(sides[rows]))))
             for rows in (np.flatnonzero(cluster == c) for c in range(int(cluster.max(initial=-1)) + 1))]
    found.sort(key=lambda c: (not (c.conflict and c.straddles), not (c.conflict or c.straddles), -len(c.rows),
                              int(c.rows[0])))
    distance = np.full(len(hashes), -1, dtype=np.int64)
    cosine = np.full(len(hashes), np.nan) if unit is not None else None
    for c in found:
        distance[c.rows] = shift_distance(hashes, c.rows[:1], to=hashes[c.rows])[0]
        if cosine is not None:
            cosine[c.rows] = unit[c.rows] @ unit[c.rows[0]]
    return Audit(data, threshold, min_cosine, found, distance, cosine, tuple(notes), time.perf_counter() - t0)


def write_csv(audit: Audit, path: Path) -> Path:
    """One row per image in a cluster of two or more, clusters numbered worst first (1, 2, ...)."""
    idx, s = audit.data.index, audit.data.splits
    sides = _sides(audit.data)

    def write(f) -> None:
        out = csv.writer(f)
        out.writerow(CSV_COLUMNS)
        for number, c in enumerate(audit.clusters, start=1):
            for r in c.rows:
                cos = "" if audit.cosine is None else f"{audit.cosine[r]:.4f}"
                out.writerow([number, idx.paths[r], idx.classes[idx.labels[r]], idx.groups[r],
                              "test" if s.test[r] else ("cv" if s.fold[r] >= 0 else "excluded"),
                              sides[r].removeprefix("fold ") if s.fold[r] >= 0 else "", int(audit.distance[r]), cos,
                              int(c.conflict), int(c.straddles)])

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, write)


def contact_sheet(audit: Audit, path: Path, *, clusters: int = 12, per_cluster: int = 8) -> Path | None:
    """A PNG: one row per cluster (the worst ``clusters``), its first ``per_cluster`` images captioned."""
    shown = audit.clusters[:clusters]
    if not shown:
        return None
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    idx, images = audit.data.index, audit.data.images
    sides = _sides(audit.data)
    cols = min(per_cluster, max(len(c.rows) for c in shown))
    fig = Figure(figsize=(1.9 * max(cols, 4) + 1.2, 2.1 * len(shown) + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(shown), cols, squeeze=False)
    for r, c in enumerate(shown):
        flags = ", ".join(f for f, on in (("label conflict", c.conflict), ("straddles", c.straddles)) if on)
        colour = "#b42318" if c.conflict or c.straddles else "#333333"
        for k in range(cols):
            ax = axes[r, k]
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(c.rows):
                ax.set_axis_off()
                continue
            row = c.rows[k]
            ax.imshow(images[row])
            ax.set_title(f"{idx.classes[idx.labels[row]]}, {sides[row]}\nd={audit.distance[row]} "
                         f"{Path(idx.paths[row]).name[:22]}", fontsize=6, color=colour)
            if k == 0:
                ax.set_ylabel(f"#{r + 1} ({len(c.rows)})" + (f"\n{flags}" if flags else ""), fontsize=7,
                              color=colour)
    fig.suptitle(f"Near-duplicate clusters of {audit.data.spec.name}, worst first\n(d = pHash bits of {HASH_BITS} "
                 f"to the row's first image)", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png", metadata={"Software": None})
    return path
