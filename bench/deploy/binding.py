"""A run's model and the record that describes it: the binding digest that ties a model file's
sha256 to what a prediction depends on (classes, positive class, backbone, size, resize mode,
operating points), and the check readers make before trusting ``<run>/models/<entry>.keras``.

``bench final`` records ``model_sha256`` and ``model_binding`` in final.json when it commits a
model (``bench.results.RunDir.write_final_backbone``); ``verified_run_model`` refuses a file
whose sha256 is not the recorded one, and a card built from an edited record no longer matches
the recorded binding. An exported card carries the same two fields (``bench.deploy.export``).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from bench.download import sha256_file
from bench.errors import DataError
from bench.results import RunDir, entry_keys


def clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def prediction_facts(manifest: dict[str, Any], backbone: str, info: dict[str, Any],
                     config: dict[str, Any]) -> tuple[list[str], int, str, Any]:
    """(classes, size, resize mode, backbone spec) of an entry: what a prediction depends on, read the
    same way for the card and for the binding ``bench final`` records."""
    from bench.models import get_backbone

    ds = manifest.get("dataset") or {}
    classes = list(info.get("classes") or ds.get("classes") or [])
    size = int(info.get("size") or config.get("size"))
    resize = (manifest.get("cache") or {}).get("resize", "squash")
    spec = get_backbone(info.get("backbone", backbone))  # an entry of `bench final --by ...` names its backbone
    return classes, size, resize, spec


def record_binding(manifest: dict[str, Any], backbone: str, info: dict[str, Any], sha256: str) -> str:
    """The binding digest (``card_binding``) of the model ``bench final`` is about to commit with the
    final.json entry ``info``: a reader recomputes it from the record and refuses an edited one."""
    info = json.loads(json.dumps(info, sort_keys=True, default=str))  # as final.json will read back
    classes, size, resize, spec = prediction_facts(manifest, backbone, info, dict(info.get("config") or {}))
    card = clean({"model": {"sha256": sha256, "backbone": spec.name}, "classes": classes,
                  "positive_class": (manifest.get("dataset") or {}).get("positive"),
                  "preprocessing": {"size": size, "resize": resize},
                  "operating_points": info.get("operating_points") or []})
    return card_binding(card)


def verified_run_model(run: RunDir, backbone: str) -> Path:
    """``<run>/models/<backbone>.keras``, refused unless it is the model final.json's entry records.

    ``bench final`` commits the two together; a kill between them, or a file copied over since,
    leaves a model that the record (its trial, configuration, held-out scores) does not describe.
    """
    info = (run.final().get("backbones") or {})[backbone]
    path = run.model_path(backbone)
    again = f"Re-run `bench final --run {run.path}{'' if 'by' in info else f' --backbone {backbone}'}`"
    if not path.is_file():
        raise DataError(f"{path} is missing although {run.file('final')} lists it. {again}.")
    recorded = info.get("model_sha256")
    if not recorded:
        raise DataError(f"{run.file('final')} records no sha256 for {path.name} (written by an older bench), so "
                        f"nothing shows that the file is the model its entry describes. {again} to record it.")
    actual = sha256_file(path)
    if actual != recorded:
        raise DataError(f"{path} is not the model {run.file('final')} describes: its entry {backbone!r} (trial "
                        f"{info.get('trial')}) records sha256 {recorded[:16]}..., the file has {actual[:16]}.... A "
                        f"`bench final` was interrupted between the two, or the file was replaced. {again}.")
    rows = run.table("test_metrics")
    trials = set(rows[entry_keys(rows) == backbone].trial.astype(int)) if len(rows) and "trial" in rows else set()
    if trials and trials != {int(info["trial"])}:
        raise DataError(f"{run.file('test_metrics')} holds held-out scores of trial(s) {sorted(trials)} for "
                        f"{backbone!r}, but {run.file('final')} and {path.name} are trial {info['trial']}: a "
                        f"`bench final` was interrupted. {again}.")
    return path


def card_binding(card: dict[str, Any]) -> str:
    """A digest of the model file's sha256 together with every card field a prediction depends on.

    The sha256 alone proves the model file is the exported one, but not that the card beside it
    still describes it: reversed ``classes`` would flip every prediction with the sha256 intact.
    Hashing those fields with the sha256 ties them to this model file, so an edited card, or a
    card moved next to another model, no longer matches.
    """
    bound = {"sha256": card["model"]["sha256"], "backbone": card["model"]["backbone"], "classes": card["classes"],
             "positive_class": card.get("positive_class"), "size": card["preprocessing"]["size"],
             "resize": card["preprocessing"]["resize"]}
    if card.get("operating_points"):  # they change predictions when asked for; cards without them keep their digest
        bound["operating_points"] = card["operating_points"]
    if card.get("tta"):  # the flips `bench predict` averages over by default: they change every prediction
        bound["tta"] = card["tta"]
    return hashlib.sha256(json.dumps(bound, sort_keys=True).encode()).hexdigest()
