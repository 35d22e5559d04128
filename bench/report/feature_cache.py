"""The report's line on the frozen-feature cache: how many folds used it, and the time it saved.

Reads folds.csv's ``features``, ``seconds_fit``, ``seconds_features`` and ``seconds_saved_est``
columns (written by ``bench.training.features.fold_info``); runs made before the cache have none of them
and get no line.
"""

from __future__ import annotations

import pandas as pd

from bench.results import FEATURES_CACHED


def saved_time_line(folds: pd.DataFrame) -> str | None:
    """One sentence for a study's search section, or None when no fold used the cache."""
    if folds.empty or "features" not in folds:
        return None
    cached = folds[folds["features"] == FEATURES_CACHED]
    if cached.empty:
        return None
    spent = float(cached["seconds_fit"].fillna(0).sum() + cached["seconds_features"].fillna(0).sum())
    saved = float(cached["seconds_saved_est"].fillna(0).sum())
    return (f"Frozen-feature cache: {len(cached)} of {len(folds)} folds (fully frozen backbone, no augmentation) "
            f"trained their head on cached backbone outputs, in {spent:.0f} s including building or loading the "
            f"cache; running the backbone every epoch would have taken an estimated {saved:.0f} s more "
            f"(estimate: one forward pass per image, timed when the cache was built, for every image the ordinary "
            f"path sends through the backbone: training and inner-validation images each epoch, the validation "
            f"fold once; minus the cache's own cost).")
