"""Grad-CAM: where in the image a saved classifier looked for the class it scored; and the overlays
of ``bench explain`` and of ``bench final``'s held-out grid for any method of ``bench.explainers``
(Grad-CAM, LIME, occlusion).

Grad-CAM (Selvaraju et al., ICCV 2017) weights each channel of a convolutional activation by
the spatial mean of the class score's gradient with respect to it, sums the channels and keeps
the positive part. The activation is the output of the backbone's *last block* (``block_outputs``
of the base model inside the classifier; the span ends at a merge or stage output, so it exists
for every registered backbone whatever its layer names), or an earlier block with ``block=-2``
and so on for a finer map. The class score is the logit, not the softmax probability: the
gradient of a saturated probability vanishes.

Keras 3 has no gradient-tape abstraction, so the one backend-specific piece, "gradient of a
scalar with respect to a tensor", is a small table (``GRADIENTS``); everything else is
``keras.ops``. Only TensorFlow is tested here.

The classifier is split into ``features`` (image -> target activation) and ``head`` (activation
-> logits) by re-calling its own layers, which share their weights; the split is checked against
the model's own output on a probe image before it is used.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bench.atomic import write_atomic
from bench.errors import ConfigError, DataError
from bench.explainers import Options, get_method, make_explainer

DEFAULT_ALPHA = 0.45  # weight of the heat colour over the image in an overlay
_PROBE_TOLERANCE = 1e-3  # max |probability difference| between the split model and the model itself


# ---- the target layer -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Where Grad-CAM looks: one block output of the backbone inside a classifier."""

    name: str  # the layer (or op) that ends the block
    backbone: str | None  # the nested base model's name; None for a flat model
    block: int  # index into the backbone's blocks (0-based, non-negative)
    n_blocks: int
    shape: tuple[int, int, int]  # (height, width, channels) of the activation
    tensor: Any  # the symbolic output inside the base model (or the flat model)


def _is_functional(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.Model) and bool(getattr(layer, "inputs", None))


def _shape_of(tensor: Any) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _base_index(model: Any) -> int | None:
    """Position in ``model.layers`` of the backbone: the last nested model with a 4-D output."""
    for i in range(len(model.layers) - 1, -1, -1):
        layer = model.layers[i]
        if _is_functional(layer) and len(layer.outputs) == 1 and len(_shape_of(layer.outputs[0])) == 4:
            return i
    return None


def find_target_layer(model: Any, block: int = -1) -> Target:
    """The Grad-CAM target of a bench classifier: the output of the backbone's last block.

    ``block`` counts blocks of the backbone like a Python index (-1 = last, -2 = the one
    before). A model without a nested backbone falls back to its last layer with a 4-D output
    (the one before global pooling); ``block`` must then be -1.
    """
    from bench.models.blocks import block_outputs

    i = _base_index(model)
    if i is None:
        four_d = [layer for layer in model.layers[1:] if len(_shape_of(layer.output)) == 4]
        if not four_d:
            raise ConfigError(f"Model {model.name!r} has no layer with a 4-D (image-like) output: Grad-CAM "
                              f"needs a convolutional classifier.")
        if block != -1:
            raise ConfigError(f"Model {model.name!r} has no nested backbone to count blocks in; "
                              f"only --block -1 (its last 4-D layer) is possible.")
        layer = four_d[-1]
        h, w, c = _shape_of(layer.output)[1:]
        return Target(layer.name, None, 0, 1, (int(h), int(w), int(c)), layer.output)
    base = model.layers[i]
    outputs = block_outputs(base)
    n = len(outputs)
    if not -n <= block < n:
        raise ConfigError(f"--block {block} is out of range: backbone {base.name!r} has {n} blocks "
                          f"(use -1 for the last, down to {-n}).")
    k = block % n
    tensor = outputs[k]
    if len(_shape_of(tensor)) != 4:
        # Never seen for the registered backbones (include_top=False, no pooling), but a
        # custom one could end in a flattening block: walk back to the last image-like one.
        if block != -1:
            raise ConfigError(f"Block {block} of {base.name!r} has no 4-D output; choose another --block.")
        k = max((j for j, t in enumerate(outputs) if len(_shape_of(t)) == 4), default=-1)
        if k < 0:
            raise ConfigError(f"Backbone {base.name!r} has no block with a 4-D output: Grad-CAM needs one.")
        tensor = outputs[k]
    h, w, c = _shape_of(tensor)[1:]
    name = tensor._keras_history.operation.name
    return Target(name, base.name, k, n, (int(h), int(w), int(c)), tensor)


# ---- gradients, one entry per backend -----------------------------------------------------------------

# fn(head, activations, onehot) -> (d score / d activations, logits), where
# score = sum(logits * onehot) and head(activations) -> logits.
GradientFn = Callable[[Callable[[Any], Any], Any, Any], tuple[Any, Any]]


def _grads_tensorflow(head: Callable[[Any], Any], a: Any, onehot: Any) -> tuple[Any, Any]:
    import tensorflow as tf

    a = tf.convert_to_tensor(a)
    with tf.GradientTape() as tape:
        tape.watch(a)
        logits = head(a)
        score = tf.reduce_sum(logits * tf.cast(onehot, logits.dtype))
    return tape.gradient(score, a), logits


def _grads_torch(head: Callable[[Any], Any], a: Any, onehot: Any) -> tuple[Any, Any]:
    import torch

    a = a.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = head(a)
        score = (logits * onehot.to(logits.dtype)).sum()
        (grads,) = torch.autograd.grad(score, a)
    return grads, logits.detach()


def _grads_jax(head: Callable[[Any], Any], a: Any, onehot: Any) -> tuple[Any, Any]:
    import jax

    def score(x: Any) -> tuple[Any, Any]:
        logits = head(x)
        return (logits * onehot.astype(logits.dtype)).sum(), logits

    grads, logits = jax.grad(score, has_aux=True)(a)
    return grads, logits


GRADIENTS: dict[str, GradientFn] = {
    "tensorflow": _grads_tensorflow,
    "torch": _grads_torch,
    "jax": _grads_jax,
}


def _gradient_fn() -> GradientFn:
    import keras

    backend = keras.backend.backend()
    if backend not in GRADIENTS:
        raise ConfigError(f"Grad-CAM has no gradient function for the Keras backend {backend!r}; "
                          f"supported: {', '.join(GRADIENTS)}.")
    return GRADIENTS[backend]


# ---- the split model --------------------------------------------------------------------------------


def _logits_of(layer: Any, x: Any) -> Any:
    """The pre-softmax output of the final Dense layer (its own weights, its activation skipped)."""
    from keras import ops

    kernel = layer.kernel
    x = ops.cast(x, kernel.dtype)
    z = ops.matmul(x, kernel)
    return z + layer.bias if layer.use_bias else z


def _is_softmax_dense(layer: Any) -> bool:
    import keras

    return isinstance(layer, keras.layers.Dense) and getattr(layer.activation, "__name__", "") == "softmax"


class GradCam:
    """Grad-CAM for a bench classifier (``image 0..255 -> preprocess -> backbone -> head``).

    ``cam(images)`` takes uint8 RGB images at the model's input size and returns per-image
    heat maps at the target's resolution, scaled to 0..1, with the probabilities.
    """

    def __init__(self, model: Any, block: int = -1) -> None:
        import keras

        self.model = model
        self.target = find_target_layer(model, block)
        self.size = tuple(int(d) for d in model.inputs[0].shape[1:3])
        i = _base_index(model)
        if i is not None:
            base = model.layers[i]
            pre, post = model.layers[1:i], model.layers[i + 1:]
            if self.target.tensor is base.outputs[0]:
                lower, upper = base, None
            else:
                lower = keras.Model(base.inputs, self.target.tensor, name=f"{base.name}_to_target")
                upper = keras.Model(self.target.tensor, base.outputs, name=f"{base.name}_from_target")
            image = keras.Input(model.inputs[0].shape[1:], name="gradcam_image")
            x = image
            for layer in pre:
                x = layer(x)
            self._features = keras.Model(image, lower(x), name="gradcam_features")
        else:
            layers = model.layers[1:]  # after the input layer
            cut = [layer.name for layer in layers].index(self.target.name)
            upper, post = None, layers[cut + 1:]
            self._features = keras.Model(model.inputs[0], model.get_layer(self.target.name).output,
                                         name="gradcam_features")
        self._upper = upper
        self._post = list(post)
        self._softmax_head = bool(self._post) and _is_softmax_dense(self._post[-1])
        self._grads = _gradient_fn()
        self._check_split()

    def _head(self, a: Any) -> Any:
        from keras import ops

        x = self._upper(a, training=False) if self._upper is not None else a
        last = len(self._post) - 1
        for j, layer in enumerate(self._post):
            if j == last and self._softmax_head:
                return _logits_of(layer, x)
            x = layer(x, training=False)
        # Not a softmax Dense at the end: the log-probability is the next best class score.
        return ops.log(ops.maximum(ops.cast(x, "float32"), 1e-12))

    def _check_split(self) -> None:
        """The re-assembled features + head must reproduce the model, or the maps mean nothing."""
        from keras import ops

        probe = np.random.default_rng(0).integers(0, 256, (1, *self.size, 3)).astype("float32")
        want = ops.convert_to_numpy(self.model(probe, training=False))
        logits = self._head(self._features(probe, training=False))
        got = ops.convert_to_numpy(ops.softmax(ops.cast(logits, "float32"), axis=-1))
        if got.shape != want.shape or not np.allclose(got, want, atol=_PROBE_TOLERANCE):
            raise ConfigError(
                f"Cannot split {self.model.name!r} into backbone features and head for Grad-CAM: its layers "
                f"are not a chain image -> preprocessing -> backbone -> pooling -> dense. Use a model saved by bench."
            )

    def __call__(self, images: np.ndarray, classes: int | Sequence[int] | None = None) -> GradCamResult:
        """Heat maps for ``images`` ((n, H, W, 3) uint8 RGB at the model's size).

        ``classes``: the class to explain per image (one index for all, or one per image);
        ``None`` explains each image's predicted class.
        """
        from keras import ops

        images = np.asarray(images)
        if images.ndim != 4 or tuple(images.shape[1:3]) != self.size:
            raise ConfigError(f"Grad-CAM needs images of shape (n, {self.size[0]}, {self.size[1]}, 3), "
                              f"got {images.shape}.")
        x = ops.convert_to_tensor(images.astype("float32"))
        a = self._features(x, training=False)
        if classes is None:
            logits = self._head(a)
            explained = np.asarray(ops.convert_to_numpy(ops.argmax(logits, axis=-1)), dtype=int)
        else:
            explained = np.broadcast_to(np.asarray(classes, dtype=int), (len(images),)).copy()
        n_classes = int(self.model.outputs[0].shape[-1])
        if explained.size and (explained.min() < 0 or explained.max() >= n_classes):
            raise ConfigError(f"Class index out of range 0..{n_classes - 1}: {sorted(set(explained.tolist()))}.")
        onehot = ops.one_hot(ops.convert_to_tensor(explained), n_classes)
        grads, logits = self._grads(self._head, a, onehot)
        a32 = ops.cast(a, "float32")
        weights = ops.mean(ops.cast(grads, "float32"), axis=(1, 2), keepdims=True)  # (n, 1, 1, c)
        cam = ops.relu(ops.sum(a32 * weights, axis=-1))  # (n, h, w)
        peak = ops.max(cam, axis=(1, 2), keepdims=True)
        cam = ops.where(peak > 0, cam / ops.maximum(peak, 1e-12), ops.zeros_like(cam))
        proba = ops.softmax(ops.cast(logits, "float32"), axis=-1) if self._softmax_head else ops.exp(logits)
        return GradCamResult(
            cams=np.asarray(ops.convert_to_numpy(cam), dtype="float32"),
            proba=np.asarray(ops.convert_to_numpy(proba), dtype="float64"),
            explained=explained,
        )


@dataclass(frozen=True)
class GradCamResult:
    cams: np.ndarray  # (n, h, w) float32 in 0..1 at the target's resolution
    proba: np.ndarray  # (n, k) class probabilities
    explained: np.ndarray  # (n,) the class each map explains

    def heat(self, size: int | tuple[int, int]) -> np.ndarray:
        """The maps resized (bilinear) to ``size`` pixels: (n, H, W) float32 in 0..1."""
        return np.stack([upsample(c, size) for c in self.cams]) if len(self.cams) else np.zeros((0, 0, 0), "float32")


def upsample(cam: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """One (h, w) map resized bilinearly to ``size`` ((H, W) or a square side), values kept in 0..1."""
    h, w = (size, size) if isinstance(size, int) else size
    im = Image.fromarray(np.asarray(cam, dtype="float32"), mode="F")
    return np.clip(np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype="float32"), 0.0, 1.0)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """Blend a 0..1 heat map (any size; resized to the image) as a jet colour map over a uint8 RGB image."""
    import matplotlib

    if heat.shape != image.shape[:2]:
        heat = upsample(heat, image.shape[:2])
    colour = matplotlib.colormaps["jet"](heat)[..., :3] * 255.0
    # The colour is weighted by the heat too, so cold regions show the image, not a blue wash.
    weight = alpha * (0.25 + 0.75 * heat[..., None])
    out = image.astype("float32") * (1.0 - weight) + colour * weight
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ---- bench explain -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExplainResult:
    rows: list[dict[str, Any]]  # one per explained image: path, overlay, predicted, explained, p_<class>
    unreadable: list[tuple[str, str]]  # (path, reason)
    csv: Path
    target: Target | None  # where Grad-CAM looked; None for the model-agnostic methods
    method: str = "gradcam"


def _overlay_name(path: Path, rel: str | None, taken: set[str], method: str = "gradcam") -> str:
    stem = (rel.rsplit(".", 1)[0].replace("/", "__") if rel else path.stem) or "image"
    name, n = f"{stem}.{method}.png", 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}.{method}.png"
    taken.add(name)
    return name


def explain_paths(model_path: Path, inputs: Sequence[Path], out_dir: Path, *, class_name: str | None = None,
                  block: int = -1, display_size: int | None = None, batch_size: int = 16,
                  alpha: float = DEFAULT_ALPHA, verify: bool = True, method: str = "gradcam",
                  options: Options | None = None) -> ExplainResult:
    """Overlays of one explanation method (``gradcam``, ``lime``, ``occlusion``) for image files and
    folders, written to ``out_dir`` as ``<name>.<method>.png`` with ``<method>.csv``.

    Each image is decoded exactly as for training (``bench predict``'s rules, from the model
    card); the overlay is drawn on the same image decoded at ``display_size`` (default: the
    model's size, at least 224 px) so the map lines up whatever the resize mode.
    """
    from bench.data.images import decode_image, decode_many
    from bench.predict import collect_images, load_predictor

    get_method(method)  # an unknown name fails before the model loads
    predictor = load_predictor(model_path, verify=verify)
    card = predictor.card
    classes = list(card.classes)
    explained: int | None = None
    if class_name is not None:
        if class_name not in classes:
            from bench.errors import close_matches

            raise ConfigError(f"Class {class_name!r} is not one of the model's classes {classes}."
                              f"{close_matches(class_name, classes)}")
        explained = classes.index(class_name)
    explain = make_explainer(method, predictor.model, replace(options or Options(), block=block))
    items, unreadable = collect_images(inputs, classes)
    if not items and not unreadable:
        raise DataError("No image files found in " + ", ".join(str(p) for p in inputs) + ".")
    show = display_size or max(card.size, 224)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    taken: set[str] = set()
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        failed_here: dict[int, str] = {}
        x, failed = decode_many([it.path for it in chunk], card.size, card.resize, workers=1,
                                on_error=lambda i, err: failed_here.__setitem__(i, err.reason))
        good = [i for i in range(len(chunk)) if i not in failed_here]
        unreadable.extend((str(chunk[i].path), failed_here[i]) for i in sorted(failed_here))
        if not good:
            continue
        result = explain(x[good], explained)
        for j, i in enumerate(good):
            item = chunk[i]
            big = decode_image(item.path, show, card.resize)
            name = _overlay_name(item.path, item.rel, taken, method)
            _save_png(overlay(big, result.maps[j], alpha), out_dir / name)
            p = result.proba[j]
            row = {"path": str(item.path), "overlay": name, "predicted": classes[int(np.argmax(p))],
                   "explained": classes[int(result.explained[j])], "confidence": float(np.max(p))}
            if item.truth is not None:
                row["truth"] = item.truth
            row.update({f"p_{c}": float(p[k]) for k, c in enumerate(classes)})
            rows.append(row)
    if not rows:
        listing = "\n".join(f"  {p}: {r}" for p, r in unreadable[:20])
        raise DataError(f"None of the {len(unreadable)} image file(s) could be read:\n{listing}")
    csv_path = out_dir / f"{method}.csv"
    _write_rows(csv_path, rows, classes)
    target = find_target_layer(predictor.model, block) if method == "gradcam" else None
    return ExplainResult(rows, unreadable, csv_path, target, method)


def _write_rows(path: Path, rows: list[dict[str, Any]], classes: Sequence[str]) -> None:
    lead = ["path", "overlay", "truth", "predicted", "explained", "confidence"]
    columns = [c for c in lead if any(c in r for r in rows)] + [f"p_{c}" for c in classes]

    def write(f: Any) -> None:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    write_atomic(path, write)


def _save_png(array: np.ndarray, path: Path) -> None:
    write_atomic(path, lambda f: Image.fromarray(array).save(f, format="PNG"), binary=True)


# ---- the report's grid ---------------------------------------------------------------------------------


def _pick(frame: Any, classes: Sequence[str], per_class: int) -> list[tuple[int, str, list[int]]]:
    """Per class: the most confidently correct and the most confidently wrong test images."""
    proba = frame[[f"p_{c}" for c in classes]].to_numpy(dtype="float64")
    pred = proba.argmax(axis=1)
    conf = proba.max(axis=1)
    target = frame["target"].to_numpy(dtype=int)
    picks = []
    for c in range(len(classes)):
        for kind, mask in (("correct", (target == c) & (pred == c)), ("wrong", (target == c) & (pred != c))):
            rows = np.flatnonzero(mask)
            rows = rows[np.argsort(-conf[rows], kind="stable")][:per_class]
            picks.append((c, kind, rows.tolist()))
    return picks


def explanation_grid(run_dir: Path, out_png: Path, per_class: int = 2, *, backbone: str | None = None,
                     images: Mapping[str, np.ndarray] | None = None, method: str = "gradcam") -> Path | None:
    """A labelled grid of one method's overlays (Grad-CAM by default) of held-out test predictions,
    for the report; the method is named in its title.

    One row per true class; ``per_class`` columns of correct predictions (most confident first),
    then ``per_class`` of wrong ones (most confidently wrong first). The model is the run's
    winner (``bench.export.select_backbone``: best cross-validation score, not test score)
    unless ``backbone`` (a final entry: a backbone, or a combination's key) is given. Returns None
    when the run has no final model (``bench final`` not run) or none of its test images can be
    read any more. ``images`` maps a test path to its
    cached uint8 pixels at the model's size (``bench final`` passes them: no second decode, and
    sources with no image files, such as npz arrays, work too).
    """
    from bench.export import select_backbone
    from bench.predict import load_predictor
    from bench.results import RunDir, entry_keys

    explainer = get_method(method)
    if per_class < 1:
        raise ValueError(f"per_class must be at least 1, got {per_class}")
    run = RunDir.open(Path(run_dir))
    final = run.final().get("backbones") or {}
    try:
        chosen = select_backbone(run, backbone)
    except DataError:
        return None
    info = final.get(chosen)
    model_path = run.model_path(chosen)
    if info is None or not model_path.is_file():
        return None
    frame = run.table("test_predictions")
    if frame.empty:
        return None
    frame = frame[entry_keys(frame) == chosen].reset_index(drop=True)
    classes = list(info["classes"])
    if frame.empty or any(f"p_{c}" not in frame for c in classes):
        return None
    predictor = load_predictor(model_path)
    card = predictor.card
    dataset = run.manifest().get("dataset") or {}
    root = Path(dataset.get("root", ""))
    explain = make_explainer(method, predictor.model)
    picks = _pick(frame, classes, per_class)
    show = max(card.size, 160)

    from bench.data.images import UnreadableImage, decode_image

    cells: dict[tuple[int, int], tuple[np.ndarray, str, bool]] = {}
    for c, kind, rows in picks:
        col0 = 0 if kind == "correct" else per_class
        for j, r in enumerate(rows):
            if images is not None:
                if (x := images.get(frame.path[r])) is None:
                    continue
                big = np.asarray(Image.fromarray(np.asarray(x, dtype=np.uint8)).resize((show, show), Image.Resampling.BILINEAR))
            else:
                path = root / frame.path[r]
                try:
                    x = decode_image(path, card.size, card.resize)
                    big = decode_image(path, show, card.resize)
                except UnreadableImage:
                    continue
            # Explain the predicted class: for a wrong prediction, what the model mistook.
            pred = int(np.argmax(frame.loc[r, [f"p_{k}" for k in classes]].to_numpy(dtype="float64")))
            result = explain(x[None], pred)
            p = float(frame.loc[r, f"p_{classes[pred]}"])
            label = f"→ {classes[pred]} {p:.2f}" if kind == "wrong" else f"{classes[pred]} {p:.2f}"
            caption = f"{label}\n{Path(frame.path[r]).name}"
            cells[(c, col0 + j)] = (overlay(big, result.maps[0]), caption, kind == "correct")
    if not cells:
        return None
    _draw_grid(cells, classes, per_class, out_png,
               f"{explainer.title} of {info.get('label', chosen)} (trial {info.get('trial')}) on the held-out "
               f"test set of {dataset.get('name', '?')}; each title: predicted class and its probability")
    return out_png


def _draw_grid(cells: dict[tuple[int, int], tuple[np.ndarray, str, bool]], classes: Sequence[str], per_class: int,
               out_png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows = len(classes)
    fig = Figure(figsize=(2.0 * 2 * per_class + 0.9, 2.2 * n_rows + 0.8), layout="constrained")
    FigureCanvasAgg(fig)
    halves = fig.subfigures(1, 2, wspace=0.04)
    for h, (sub, heading, colour) in enumerate(zip(halves, ("correct", "wrong"), ("#1a7f37", "#b42318"))):
        sub.suptitle(heading, fontsize=10, fontweight="bold", color=colour)
        axes = sub.subplots(n_rows, per_class, squeeze=False)
        for r in range(n_rows):
            for c in range(per_class):
                ax = axes[r, c]
                ax.set_xticks([])
                ax.set_yticks([])
                cell = cells.get((r, h * per_class + c))
                if cell is None:
                    ax.text(0.5, 0.5, "none", ha="center", va="center", color="#888888", fontsize=9,
                            transform=ax.transAxes)
                    for spine in ax.spines.values():
                        spine.set_visible(False)
                else:
                    image, label, _ = cell
                    ax.imshow(image)
                    ax.set_title(label, fontsize=7, color=colour)
                    for spine in ax.spines.values():
                        spine.set_edgecolor(colour)
                        spine.set_linewidth(2)
                if c == 0:
                    ax.set_ylabel(f"true {classes[r]}", fontsize=9)
    fig.suptitle(title, fontsize=9)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100, metadata={"Software": None})
