"""Class probabilities for new images from an exported model, preprocessed exactly as in training.

Training never saw image files, only the cache's arrays; those come from
``bench.data.images.decode_image(path, size, resize)``. Prediction calls the same function with
the size and resize mode from the model card, and the backbone's input scaling is inside the
saved model, so an image gets the same array and the same probabilities as in ``bench final``.

An unreadable file is listed with its reason and skipped. Images under a folder named like one
of the model's classes (``folder/<class>/...``, or the folder itself) carry that class as their
truth, and the labelled ones are scored with the usual metrics.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import metrics as M
from bench.atomic import write_atomic
from bench.data.walk import NOT_UTF8, is_utf8, printable, walk_files
from bench.deploy.export import ENSEMBLE_NO_POINTS, ModelCard, load_model, read_card, verify_card
from bench.deploy.tta import tta_names, tta_proba
from bench.errors import ConfigError, DataError
from bench.metrics.operating import Threshold, decide, parse_point

CHUNK = 256  # images decoded and predicted at a time: memory stays flat on big folders


@dataclass(frozen=True)
class ImageItem:
    path: Path
    rel: str | None  # POSIX path relative to the folder it was found in; None for a file given directly
    truth: str | None  # class from the nearest enclosing folder named like a class


def _truth(root: Path, rel: Path, classes: set[str]) -> str | None:
    for part in reversed((root.resolve().name, *rel.parts[:-1])):
        if part in classes:
            return part
    return None


def collect_images(inputs: Sequence[Path], classes: Sequence[str]) -> tuple[list[ImageItem], list[tuple[str, str]]]:
    """Image files from files and folders (walked recursively, hidden entries skipped).

    Returns (images, missing): paths that do not exist are listed as unreadable, not fatal, and so
    are the links and names a folder walk passes over (``bench.data.walk``: links leaving the
    folder or leading somewhere already listed, names that are not UTF-8). A file named directly
    is always tried, whatever its suffix; in folders only image suffixes count.
    """
    from bench.data.images import is_image_file

    wanted = set(classes)
    items: list[ImageItem] = []
    missing: list[tuple[str, str]] = []
    for given in inputs:
        given = Path(given)
        if not is_utf8(str(given)):
            missing.append((printable(str(given)), NOT_UTF8))
        elif given.is_dir():
            files, passed_over = walk_files(given)
            missing.extend((str(given / rel), reason) for rel, reason in passed_over)
            for rel in map(Path, files):
                if is_image_file(rel):
                    items.append(ImageItem(given / rel, rel.as_posix(), _truth(given, rel, wanted)))
        elif given.exists():
            items.append(ImageItem(given, None, None))
        else:
            missing.append((str(given), "no such file or folder"))
    return items, missing


@dataclass
class Predictor:
    """A loaded model and its card: uint8 images in, class probabilities out."""

    path: Path
    model: Any
    card: ModelCard

    @property
    def classes(self) -> list[str]:
        return list(self.card.classes)

    def predict(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        if not len(images):
            return np.zeros((0, len(self.classes)))
        return np.asarray(self.model.predict(images, batch_size=batch_size, verbose=0), dtype="float64")


def load_predictor(model_path: Path, *, verify: bool = True) -> Predictor:
    """Load ``MODEL.keras`` and its card, and check that they agree.

    ``verify`` checks the card's sha256 and binding digest (``bench.deploy.export.verify_card``): the
    file is the exported one and the card's classes, size and backbone were not edited since.
    Whatever ``verify`` says, the model's input size, number of outputs and backbone must be the
    card's: predictions from a model read with another model's card would be meaningless.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise DataError(f"No model file {model_path}. Export one with `bench export --run DIR`.")
    card = read_card(model_path)
    if verify:
        verify_card(model_path, card)
    model = load_model(model_path)
    side = tuple(int(d) for d in model.inputs[0].shape[1:3])
    n_out = int(model.outputs[0].shape[-1])
    # bench.models.head names every classifier "<backbone>_classifier".
    backbone = model.name.removesuffix("_classifier")
    if side != (card.size, card.size) or n_out != len(card.classes) or backbone != card.backbone:
        raise DataError(f"{model_path} is a {backbone} model taking {side[0]} x {side[1]} px images with {n_out} "
                        f"outputs, but its card {card.source} describes a {card.backbone} model at {card.size} px "
                        f"with {len(card.classes)} classes: the card belongs to another model. Put the model "
                        f"beside its own card (re-export with `bench export --run DIR`).")
    return Predictor(model_path, model, card)


@dataclass
class Predictions:
    frame: pd.DataFrame  # path, [truth], predicted, confidence, p_<class>...; readable images only
    unreadable: list[tuple[str, str]]  # (path, reason)
    classes: list[str]
    metrics: dict[str, float] | None  # over the labelled images, when there are any
    n_labelled: int
    confusion: np.ndarray | None  # rows = truth, columns = predicted
    tta: str = "none"  # the TTA set the probabilities were averaged over

    def write_csv(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, lambda f: self.frame.to_csv(f, index=False))


def card_tta(card: ModelCard) -> str:
    """The TTA set the card was exported with (``bench export --tta``), "none" if it has none."""
    return str((card.data.get("tta") or {}).get("set") or "none")


def card_thresholds(card: ModelCard, name: str | None) -> list[Threshold]:
    """The card's thresholds of operating point ``name`` (None or "default": none, argmax)."""
    if name is None or name == "default":
        return []
    ensemble = (card.data.get("model") or {}).get("ensemble")
    if ensemble:
        raise ConfigError(f"--operating-point {name!r}: {card.source} is an ensemble of {ensemble.get('members')} "
                          f"fold models and has no operating points: {ENSEMBLE_NO_POINTS}. Leave out "
                          f"--operating-point (argmax), or export the refit (`bench export --run DIR` without "
                          f"--ensemble), whose thresholds were chosen for it.")
    try:
        name = parse_point(name).name  # "spec=0.90" is stored as "spec=0.9"
    except ValueError:
        pass  # not a well-formed point: reported below with the names the card has
    stored = [Threshold.from_dict(t) for t in card.data.get("operating_points") or []]
    chosen = [t for t in stored if t.point == name]
    if not chosen:
        known = sorted({t.point for t in stored})
        raise ConfigError(f"--operating-point {name!r}: the model card {card.source} has "
                          + (f"the operating points {', '.join(known)} (or 'default' for argmax)." if known else
                             "no operating points. Run `bench final --run DIR --operating-point sens=0.95` and "
                             "export again, or leave out --operating-point (argmax)."))
    return chosen


def predict_paths(model_path: Path, inputs: Sequence[Path], *, batch_size: int = 64,
                  predictor: Predictor | None = None, verify: bool = True,
                  operating_point: str | None = None, tta: str | None = None) -> Predictions:
    """Probabilities and predicted classes; ``operating_point`` (a name in the card, e.g. "sens=0.95")
    replaces argmax: binary sets predict the positive class when its probability reaches the
    threshold, multiclass sets add one ``<point>:<class>`` yes/no column per class (one-vs-rest).

    ``tta``: average over the flips of this TTA set (``bench.deploy.tta``, those ``bench final --tta``
    scores); None: the set the card records (``bench export --tta``), else none.
    """
    predictor = predictor or load_predictor(model_path, verify=verify)
    card, classes = predictor.card, predictor.classes
    tta = card_tta(card) if tta is None else tta
    tta_names(tta)
    thresholds = card_thresholds(card, operating_point)
    if thresholds and tta != "none":
        raise ConfigError(f"--operating-point {operating_point!r} with test-time augmentation ({tta}): the card's "
                          f"thresholds were chosen on plain out-of-fold predictions, not on ones averaged over "
                          f"flips, which are smoother. Add --tta none to predict at the operating point, or leave "
                          f"out --operating-point.")
    from bench.data.images import decode_many

    items, unreadable = collect_images(inputs, classes)
    if not items and not unreadable:
        raise DataError("No image files found in " + ", ".join(str(p) for p in inputs)
                        + " (JPEG, PNG, BMP or TIFF; hidden files are ignored).")
    kept: list[ImageItem] = []
    probas: list[np.ndarray] = []
    for start in range(0, len(items), CHUNK):
        chunk = items[start:start + CHUNK]
        reasons: dict[int, str] = {}
        x, _ = decode_many([it.path for it in chunk], card.size, card.resize,
                           on_error=lambda i, err: reasons.__setitem__(i, err.reason))
        good = [i for i in range(len(chunk)) if i not in reasons]
        unreadable.extend((str(chunk[i].path), reasons[i]) for i in sorted(reasons))
        if good:
            kept.extend(chunk[i] for i in good)
            probas.append(tta_proba(lambda images: predictor.predict(images, batch_size), x[good], tta))
    if not kept:
        listing = "\n".join(f"  {p}: {r}" for p, r in unreadable[:20])
        more = f"\n  ... and {len(unreadable) - 20} more" if len(unreadable) > 20 else ""
        raise DataError(f"None of the {len(unreadable)} image file(s) could be read:\n{listing}{more}")
    proba = np.concatenate(probas)
    pred = proba.argmax(axis=1)
    frame = pd.DataFrame({"path": [str(it.path) for it in kept]})
    truths = [it.truth for it in kept]
    labelled = np.array([t is not None for t in truths])
    if labelled.any():
        frame["truth"] = [t if t is not None else "" for t in truths]
    binary_point = bool(thresholds) and len(classes) == 2
    if binary_point:  # the threshold on the positive class decides the label
        (t,) = thresholds
        pred = np.where(decide(t, proba), t.class_index, 1 - t.class_index)
    frame["predicted"] = [classes[i] for i in pred]
    frame["confidence"] = proba.max(axis=1)
    for t in thresholds if not binary_point else ():
        frame[f"{t.point}:{t.cls}"] = np.where(decide(t, proba), "yes", "no")
    for c, name in enumerate(classes):
        frame[f"p_{name}"] = proba[:, c]
    metrics = cm = None
    if labelled.any():
        y = np.array([classes.index(t) for t in truths if t is not None])
        p = proba[labelled]
        positive = classes.index(card.positive) if len(classes) == 2 and card.positive in classes else None
        # Metrics of the labels use the labels predicted (argmax, or the operating point's threshold).
        hard = np.eye(len(classes))[pred[labelled]]
        metrics = {m.name: m(y, p if m.needs_proba else hard, positive=positive) for m in M.METRICS.values()}
        cm = M.confusion(y, pred[labelled], len(classes))
    return Predictions(frame, unreadable, classes, metrics, int(labelled.sum()), cm, tta)
