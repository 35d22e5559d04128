"""Explanation methods by name: Grad-CAM, LIME and occlusion behind one call.

Every method takes a saved bench classifier and uint8 RGB images at its input size and returns,
per image, a map in 0..1 of where the evidence for one class lies (``Attribution``); ``bench
explain --method`` and the held-out grid of ``bench final --explain`` draw any of them with the
same overlay. A method is a factory registered under its name (``@register``), like the backbones.

- ``gradcam``: gradients of the class logit at the backbone's last block (``bench.deploy.explain``).
- ``lime``: LIME (Ribeiro et al., KDD 2016, the ``lime`` package): superpixels (SLIC) switched off
  at random, a weighted linear model of the class probability on which were on; a superpixel's
  positive weight is its evidence. ``num_samples`` perturbed images per explanation.
- ``occlusion``: a patch of the image's mean colour slides over it (Zeiler & Fergus, ECCV 2014);
  the evidence at a pixel is the mean drop of the class probability when a patch covers it.

LIME and occlusion only call the model, so they work for any classifier; both batch their
predictions, which is what their time on a CPU is made of (LIME: ``num_samples`` predictions,
occlusion: about ``(1/stride)^2``, e.g. 225 at the defaults, per image).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.errors import ConfigError

PREDICT_BATCH = 64


@dataclass(frozen=True)
class Attribution:
    maps: np.ndarray  # (n, h, w) float32 in 0..1, at the method's own resolution
    proba: np.ndarray  # (n, k) class probabilities of the unchanged images
    explained: np.ndarray  # (n,) the class each map explains


@dataclass(frozen=True)
class Options:
    """Each method's settings; a method reads only its own."""

    block: int = -1  # gradcam: the backbone block explained (-1 = last)
    num_samples: int = 400  # lime: perturbed images per explanation
    segments: int = 50  # lime: SLIC superpixels per image (about)
    # lime: SLIC shape vs colour; at skimage's 10 a noisy image merges into 2-3 superpixels
    compactness: float = 30.0
    patch: float = 0.125  # occlusion: patch side as a fraction of the image side
    stride: float = 0.0625  # occlusion: step as a fraction of the image side
    seed: int = 0


Explainer = Callable[[np.ndarray, "int | Sequence[int] | None"], Attribution]


Factory = Callable[[Any, Options], Explainer]


@dataclass(frozen=True)
class Method:
    name: str  # as typed: --method NAME, and in file names
    title: str  # as shown on figures
    factory: Factory


METHODS: dict[str, Method] = {}


def register(name: str, title: str) -> Callable[[Factory], Factory]:
    def add(factory: Factory) -> Factory:
        METHODS[name] = Method(name, title, factory)
        return factory
    return add


def get_method(name: str) -> Method:
    if name not in METHODS:
        from bench.errors import close_matches

        raise ConfigError(f"Unknown explanation method {name!r}.{close_matches(name, METHODS)} "
                          f"Known: {', '.join(METHODS)}.")
    return METHODS[name]


def make_explainer(name: str, model: Any, options: Options | None = None) -> Explainer:
    return get_method(name).factory(model, options or Options())


# ---- shared by the model-agnostic methods -----------------------------------------------------------


def _predictor(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    def predict(images: np.ndarray) -> np.ndarray:
        from keras import ops

        out = [ops.convert_to_numpy(model(np.asarray(images[i:i + PREDICT_BATCH], dtype="float32"), training=False))
               for i in range(0, len(images), PREDICT_BATCH)]
        return np.concatenate(out).astype("float64") if out else np.zeros((0, 0))
    return predict


def _classes(proba: np.ndarray, classes: int | Sequence[int] | None) -> np.ndarray:
    if classes is None:
        return proba.argmax(axis=1)
    explained = np.broadcast_to(np.asarray(classes, dtype=int), (len(proba),)).copy()
    k = proba.shape[1]
    if explained.size and (explained.min() < 0 or explained.max() >= k):
        raise ConfigError(f"Class index out of range 0..{k - 1}: {sorted(set(explained.tolist()))}.")
    return explained


def _unit(heat: np.ndarray) -> np.ndarray:
    """Positive evidence only, scaled so the strongest is 1 (all zero when there is none)."""
    heat = np.clip(np.asarray(heat, dtype="float32"), 0.0, None)
    peak = float(heat.max()) if heat.size else 0.0
    return heat / peak if peak > 0 else np.zeros_like(heat)


def _model_agnostic(per_image: Callable[[Callable, np.ndarray, int, float, Options], np.ndarray]) -> Factory:
    """A method that explains one image at a time from predictions only."""
    def factory(model: Any, options: Options) -> Explainer:
        predict = _predictor(model)

        def explain(images: np.ndarray, classes: int | Sequence[int] | None = None) -> Attribution:
            images = np.asarray(images)
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ConfigError(f"Explanations need RGB images of shape (n, H, W, 3), got {images.shape}.")
            proba = predict(images)
            explained = _classes(proba, classes)
            maps = [_unit(per_image(predict, images[i], int(explained[i]), float(proba[i, explained[i]]), options))
                    for i in range(len(images))]
            return Attribution(np.stack(maps) if maps else np.zeros((0, *images.shape[1:3]), "float32"),
                               proba, explained)
        return explain
    return factory


# ---- the methods --------------------------------------------------------------------------------------


@register("gradcam", "Grad-CAM")
def _gradcam(model: Any, options: Options) -> Explainer:
    from bench.deploy.gradcam import GradCam

    cam = GradCam(model, options.block)

    def explain(images: np.ndarray, classes: int | Sequence[int] | None = None) -> Attribution:
        result = cam(images, classes)
        return Attribution(result.cams, result.proba, result.explained)
    return explain


def _positions(side: int, patch: int, stride: int) -> list[int]:
    """Patch starts along one side; the last patch ends at the edge so every pixel is covered."""
    return sorted(set(range(0, side - patch + 1, stride)) | {side - patch})


def _occlusion(predict: Callable, image: np.ndarray, c: int, base: float, options: Options) -> np.ndarray:
    h, w = image.shape[:2]
    ph, pw = max(1, round(options.patch * h)), max(1, round(options.patch * w))
    sh, sw = max(1, round(options.stride * h)), max(1, round(options.stride * w))
    boxes = [(r, q) for r in _positions(h, ph, sh) for q in _positions(w, pw, sw)]
    fill = image.reshape(-1, 3).mean(axis=0)
    drops = []
    for start in range(0, len(boxes), PREDICT_BATCH):  # never hold all occluded copies at once
        chunk = boxes[start:start + PREDICT_BATCH]
        batch = np.repeat(image[None].astype("float32"), len(chunk), axis=0)
        for k, (r, q) in enumerate(chunk):
            batch[k, r:r + ph, q:q + pw] = fill
        drops.append(base - predict(batch)[:, c])
    drop = np.concatenate(drops)
    heat, cover = np.zeros((h, w)), np.zeros((h, w))
    for d, (r, q) in zip(drop, boxes):
        heat[r:r + ph, q:q + pw] += d
        cover[r:r + ph, q:q + pw] += 1
    return heat / np.maximum(cover, 1)


def _lime(predict: Callable, image: np.ndarray, c: int, base: float, options: Options) -> np.ndarray:
    from lime import lime_image
    from skimage.segmentation import slic

    def segment(x: np.ndarray) -> np.ndarray:
        # LIME numbers features 0..n-1 by segment label, so labels must start at 0.
        return slic(np.clip(x, 0, 255).astype(np.uint8), n_segments=options.segments,
                    compactness=options.compactness, start_label=0)

    explainer = lime_image.LimeImageExplainer(random_state=options.seed)
    # A switched-off superpixel takes the image's mean colour: LIME's default (each superpixel's own
    # mean) leaves a uniform region, such as a bright lesion, unchanged when it is "removed".
    with contextlib.redirect_stderr(io.StringIO()):  # lime 0.2 always draws a tqdm progress bar
        exp = explainer.explain_instance(image.astype("float64"), predict, labels=(c,), top_labels=None,
                                         hide_color=image.reshape(-1, 3).mean(axis=0),
                                         num_samples=options.num_samples, batch_size=PREDICT_BATCH,
                                         segmentation_fn=segment, random_seed=options.seed)
    weights = np.zeros(int(exp.segments.max()) + 1)
    for segment_id, weight in exp.local_exp[c]:
        weights[segment_id] = weight
    return weights[exp.segments]


register("lime", "LIME")(_model_agnostic(_lime))
register("occlusion", "occlusion")(_model_agnostic(_occlusion))
