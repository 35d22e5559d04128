"""Grad-CAM: where in the image a saved classifier looked for the class it scored.

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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from bench.errors import ConfigError

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
