"""Exact duplicates filed under different classes: the same pixels cannot be two diagnoses.

The splits keep identical images in one group (``bench.data.splits.merge_duplicates``), so such
a pair never straddles a fold; but the model is still taught both labels for one input, and the
metrics count one of them wrong whatever it predicts. Usually it is a filing mistake (a copy
dropped in the wrong folder, a manifest row with the wrong label). It is reported, never fixed
silently: which label is right is for the user to decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LabelConflict:
    """Images with identical decoded pixels whose labels differ."""

    paths: tuple[str, ...]
    labels: tuple[str, ...]  # one per path

    def describe(self) -> str:
        return ", ".join(f"{p} ({c})" for p, c in zip(self.paths, self.labels))

    def as_dict(self) -> dict[str, list[str]]:
        return {"paths": list(self.paths), "labels": list(self.labels)}


def label_conflicts(paths: Sequence[str], labels: np.ndarray, classes: Sequence[str],
                    row_hashes: Sequence[str]) -> list[LabelConflict]:
    """Every set of identical images (same ``row_hashes``) carrying more than one label, in path order."""
    rows_by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(row_hashes):
        rows_by_hash.setdefault(h, []).append(i)
    conflicts = [
        LabelConflict(tuple(paths[i] for i in rows), tuple(classes[int(labels[i])] for i in rows))
        for rows in rows_by_hash.values()
        if len({int(labels[i]) for i in rows}) > 1
    ]
    return sorted(conflicts, key=lambda c: c.paths)
