"""feeding: how many 224 px images per second the input path alone can hand to ``model.fit``.

On a GPU, ResNet50 at 224 px trains at thousands of images/s; an input path slower than that leaves
the GPU idle, and no CPU test notices. Every row here fits the same trivial model (the image's
top-left pixel -> Dense), so the train step costs ~nothing and what is timed is the feeding
machinery ``fit`` runs: batching, shuffling, class weights, the uint8 -> float32 cast, augmentation.

Paths, all from a synthetic uint8 (n, 224, 224, 3) array like bench's image cache:
- today: ``fit(x_uint8, one_hot, batch_size, shuffle=True, class_weight)`` as ``FoldTrainer._fit``
  calls it, with and without the ``light`` policy's layers inside the model (as bench builds it:
  on a GPU they run on the device). Keras already turns a numpy array into a ``tf.data`` pipeline
  (shuffled indices, a parallel gather per batch, prefetch), after copying the whole array into a
  tensor once per ``fit`` call (timed apart, in the first row's note).
- its parts, each alone: fit's per-step loop (the same call on 8 px images), fit's batches iterated
  without fit, the uint8 -> float32 cast, numpy gathering shuffled batches (the host's ceiling).
- tf.data: ``from_tensor_slices`` + shuffle + batch + prefetch(AUTOTUNE) handed to ``fit``, with and
  without the ``light`` layers mapped over each batch (tensor ops; in a pipeline they run on the host).
- PyDataset: a ``keras.utils.PyDataset`` gathering batches from the array in 2 worker threads.

uint8 stays uint8 until the train step: the model's input layer casts it to float32 there, so a GPU
would receive 150 KB per image (3,000 img/s = 450 MB/s) and cast on the device (1.8 GB/s of float32).
Images/s are timed over the epochs after a warm-up epoch (tracing), from the epoch callbacks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.perf._registry import PerfOptions, PerfRow, register_perf

NAME = "feeding"
SIZE = 224
BATCH = 32  # TrainConfig's default batch size
TARGET = 3000.0  # img/s: what a GPU trains ResNet50 at 224 px at
CLASSES = 2


class _EpochClock:
    """Seconds of each epoch, as ``fit`` runs it (the first one, with tracing, is dropped later)."""

    def __init__(self) -> None:
        import keras

        clock = self

        class Callback(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
                clock.t0 = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                clock.seconds.append(time.perf_counter() - clock.t0)

        self.t0 = 0.0
        self.seconds: list[float] = []
        self.callback = Callback()


def _model(augment: str, seed: int, size: int = SIZE) -> Any:
    """The trivial model: [augmentation] -> top-left pixel -> softmax. Its input is float32, as
    the classifier's is, so the cast from uint8 happens where it does in bench: in the train step."""
    import keras

    from bench.training.augment import policy_layers

    inputs = keras.Input((size, size, 3))
    x = inputs
    for layer in policy_layers(augment, seed=seed):
        x = layer(x)
    x = keras.layers.Lambda(lambda t: t[:, 0, 0, :] / 255.0)(x)
    model = keras.Model(inputs, keras.layers.Dense(CLASSES, activation="softmax")(x))
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    return model


def _rate(fit: Callable[[Any, list], None], model: Any, n: int, epochs: int) -> float:
    """Images/s over the epochs after the first."""
    clock = _EpochClock()
    fit(model, [clock.callback])
    measured = clock.seconds[1:]
    if len(measured) != epochs - 1:
        raise RuntimeError(f"expected {epochs - 1} timed epochs, got {len(measured)}")
    return n * len(measured) / sum(measured)


def _tf_dataset(x: np.ndarray, one_hot: np.ndarray, seed: int, augment: str) -> Any:
    import tensorflow as tf

    from bench.training.augment import policy_layers

    ds = tf.data.Dataset.from_tensor_slices((x, one_hot)).shuffle(len(x), seed=seed).batch(BATCH)
    layers = policy_layers(augment, seed=seed)
    if layers:
        def augmented(images: Any, labels: Any) -> tuple[Any, Any]:
            images = tf.cast(images, tf.float32)
            for layer in layers:
                images = layer(images, training=True)
            return images, labels

        ds = ds.map(augmented, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _py_dataset(x: np.ndarray, one_hot: np.ndarray, seed: int) -> Any:
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self) -> None:
            super().__init__(workers=2, use_multiprocessing=False)
            self.rng = np.random.default_rng(seed)
            self.order = self.rng.permutation(len(x))

        def __len__(self) -> int:
            return -(-len(x) // BATCH)

        def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
            rows = np.sort(self.order[i * BATCH:(i + 1) * BATCH])  # sorted: a forward sweep through memory
            return x[rows], one_hot[rows]

        def on_epoch_end(self) -> None:
            self.order = self.rng.permutation(len(x))

    return Batches()


def _gather_rate(x: np.ndarray, seed: int) -> float:
    """Images/s of numpy alone copying shuffled batches out of the array: the host's memory ceiling."""
    order = np.random.default_rng(seed).permutation(len(x))
    t0 = time.perf_counter()
    for start in range(0, len(x), BATCH):
        _ = x[order[start:start + BATCH]]
    return len(x) / (time.perf_counter() - t0)


def _cast_rate(x: np.ndarray) -> float:
    """Images/s of the uint8 -> float32 cast alone, batch by batch, as the train step does it."""
    import tensorflow as tf

    batches = [tf.constant(x[start:start + BATCH]) for start in range(0, len(x), BATCH)]
    t0 = time.perf_counter()
    for batch in batches:
        tf.cast(batch, tf.float32).numpy()
    return len(x) / (time.perf_counter() - t0)


def _fit_batches(x: np.ndarray, one_hot: np.ndarray, weights: dict[int, float]) -> Any:
    """The ``tf.data`` pipeline ``fit`` builds for these arguments (Keras' own data adapter)."""
    from keras.src.trainers.data_adapters import get_data_adapter

    return get_data_adapter(x, one_hot, batch_size=BATCH, shuffle=True, class_weight=weights).get_tf_dataset()


def _adapter_rate(x: np.ndarray, one_hot: np.ndarray, weights: dict[int, float], epochs: int) -> float:
    """Images/s of the batches ``fit`` makes from numpy, iterated without ``fit``, after a warm-up epoch."""
    dataset = _fit_batches(x, one_hot, weights)
    seconds = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for _batch in dataset:
            pass
        seconds.append(time.perf_counter() - t0)
    return len(x) * (epochs - 1) / sum(seconds[1:])


def _setup_seconds(x: np.ndarray, one_hot: np.ndarray, weights: dict[int, float]) -> float:
    """What ``fit`` pays once per call before its first batch: its pipeline built (the whole array
    copied into a tensor) and the first batch out."""
    t0 = time.perf_counter()
    next(iter(_fit_batches(x, one_hot, weights)))
    return time.perf_counter() - t0


def _row(label: str, bench: str, rate: float, note: str, what: str,
         baseline: tuple[str, float] = ("target", TARGET)) -> PerfRow:
    return PerfRow(measurement=NAME, what=f"{label}; {what}", baseline=baseline[0], bench=bench,
                   baseline_value=baseline[1], bench_value=rate, unit="img/s", target=f">= {TARGET:.0f} img/s",
                   met=rate >= TARGET, note=note)


@register_perf(NAME)
def feeding(options: PerfOptions) -> list[PerfRow]:
    from bench.training.train import balanced_class_weights

    # Quick: the same paths at 224 px on two batches an epoch, for tests; not the figures.
    n, epochs = (2 * BATCH, 2) if options.quick else (2048, 3)
    seed = options.seed
    x = np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)
    y = np.arange(n) % CLASSES
    one_hot = np.eye(CLASSES, dtype="float32")[y]
    weights = balanced_class_weights(y, CLASSES)  # as FoldTrainer._fit passes them by default
    tiny = np.zeros((n, 8, 8, 3), np.uint8)

    def from_numpy(images: np.ndarray) -> Callable[[Any, list], None]:  # FoldTrainer._fit's call
        def fit(model: Any, callbacks: list) -> None:
            model.fit(images, one_hot, batch_size=BATCH, epochs=epochs, shuffle=True, class_weight=weights,
                      callbacks=callbacks, verbose=0)
        return fit

    def from_dataset(make: Callable[[], Any]) -> Callable[[Any, list], None]:
        def fit(model: Any, callbacks: list) -> None:  # the dataset shuffles itself
            model.fit(make(), epochs=epochs, shuffle=False, class_weight=weights, callbacks=callbacks, verbose=0)
        return fit

    what = f"{n:,} random uint8 images {SIZE} px, batch {BATCH}"
    today = {aug: _rate(from_numpy(x), _model(aug, seed), n, epochs) for aug in ("none", "light")}
    mb = SIZE * SIZE * 3 * TARGET / 1e6
    rows = [
        _row("today: fit from numpy, augment none", "fit(x_uint8, ...)", today["none"], what=what, note=(
            f"before its first batch each fit call copies the whole array into a tensor: "
            f"{_setup_seconds(x, one_hot, weights):.2f} s for {x.nbytes / 1e6:.0f} MB, not in the rate; "
            f"{TARGET:.0f} img/s is {mb:.0f} MB/s of uint8, {4 * mb:.0f} MB/s as float32")),
        _row("today: fit from numpy, augment light in the model", "fit(x_uint8, ...), light layers",
             today["light"], what=what, note="on a GPU these layers run on the device; here on the 2 cores"),
        # What bounds today's path, piece by piece.
        _row("its parts: fit's step loop alone (8 px images)", "fit(8 px uint8, ...)",
             _rate(from_numpy(tiny), _model("none", seed, size=8), n, epochs), what=what,
             note="the same fit call, batch and class weights on 192-byte images: the per-step cost of fit"),
        _row("its parts: fit's batches alone, no fit", "fit's data adapter, iterated",
             _adapter_rate(x, one_hot, weights, epochs), what=what,
             note="Keras' shuffled-index gather + prefetch pipeline that fit builds from numpy"),
        _row("its parts: uint8 -> float32 cast alone", "tf.cast per batch", _cast_rate(x), what=what,
             note="in the train step (the model's input layer casts); a GPU does it on the device"),
        _row("its parts: numpy gather alone", "numpy fancy indexing per batch", _gather_rate(x, seed), what=what,
             note="host memory copying shuffled batches: a ceiling for any host-side path"),
    ]
    ways = {
        "tf.data, no augmentation": (
            "none", lambda: _tf_dataset(x, one_hot, seed, "none"),
            "from_tensor_slices + shuffle + batch + prefetch(AUTOTUNE)"),
        "tf.data, light augmentation in the pipeline": (
            "light", lambda: _tf_dataset(x, one_hot, seed, "light"),
            "the light layers mapped over each batch (parallel calls); in a pipeline they run on the host"),
        "PyDataset, 2 worker threads": (
            "none", lambda: _py_dataset(x, one_hot, seed), "numpy gathers of shuffled rows per batch"),
    }
    for label, (aug, make, how) in ways.items():
        rate = _rate(from_dataset(make), _model("none", seed), n, epochs)
        rows.append(_row(label, label, rate, what=what, baseline=(f"today's path, augment {aug}", today[aug]),
                         note=f"{how}; {rate / today[aug]:.2f}x today's path"))
    return rows
