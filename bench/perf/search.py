"""smoke_search: the whole smoke search against the naive loop seed notebooks use, same work.

bench's way is ``bench run --space smoke --trials 6 --folds 3`` as a user runs it (a child
process in empty runs and cache folders: start-up, decoding the images once, building each model
once per trial, pruning), without the held-out refit (``--no-final``), which the naive loop has
no counterpart for. The naive way then trains the SAME trial configurations, read back from the
run directory, on the same folds for exactly the epochs each fold ran in the search (a pruned
fold's epochs too; folds the search never started are skipped): so the ratio compares two ways of
doing one amount of work. Naive means: images decoded from disk every epoch (tf.data without a
cache, as ``image_dataset_from_directory`` does, decoding in parallel), the model rebuilt and
recompiled for every fold, Keras validating on the validation fold each epoch.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.perf._child import run_bench
from bench.perf._registry import PerfOptions, PerfRow, register_perf

TARGET = 5.0
# Quick: two 1-epoch simple_cnn trials on 2 folds (same code paths, not the figure).
QUICK_SPACE = """\
name = "perf-quick"
[objective]
metric = "balanced_accuracy"
[params.backbone]
type = "fixed"
value = "simple_cnn"
[params.size]
type = "fixed"
value = 64
[params.epochs]
type = "fixed"
value = 1
[params.lr]
type = "float"
low = 1e-4
high = 3e-3
log = true
"""


def _dataset(paths: list[str], labels: np.ndarray, n_classes: int, size: int, batch: int, shuffle: bool,
             seed: int) -> Any:
    """Decoded from disk every time it is iterated: no ``cache()``, as in the notebooks."""
    import tensorflow as tf

    def load(path: Any, target: Any) -> tuple[Any, Any]:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return tf.image.resize(image, (size, size)), target

    ds = tf.data.Dataset.from_tensor_slices((paths, np.eye(n_classes, dtype="float32")[labels]))
    if shuffle:
        ds = ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch)


def naive_fold(config: Any, n_classes: int, train: tuple[list[str], np.ndarray], val: tuple[list[str], np.ndarray],
               epochs: int) -> None:
    """One fold the notebook way: a fresh model, compiled, fit on images read from disk."""
    import keras

    from bench.models import build_classifier
    from bench.training.augment import policy_layers
    from bench.training.train import OPTIMIZERS

    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    parts = build_classifier(config.backbone, n_classes, config.size, weights=config.weights,
                             unfrozen=config.unfrozen, dropout=config.dropout)
    inputs = keras.Input((config.size, config.size, 3))
    x = inputs
    for layer in policy_layers(config.augment, seed=config.seed):
        x = layer(x)
    model = keras.Model(inputs, parts.model(x))
    model.compile(optimizer=OPTIMIZERS[config.optimizer](config),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing),
                  metrics=["accuracy"])
    size, batch = config.size, config.batch_size
    model.fit(_dataset(*train, n_classes, size, batch, True, config.seed), epochs=epochs, verbose=0, shuffle=False,
              validation_data=_dataset(*val, n_classes, size, batch, False, config.seed))


def naive_replay(run_path: Path) -> tuple[float, int, int]:
    """Train every (trial, fold) of the search run the naive way: (seconds, folds, epochs)."""
    from bench.results import RunDir
    from bench.training.train import TrainConfig

    run = RunDir.open(run_path)
    root = Path(run.manifest()["dataset"]["root"])
    splits = run.table("splits")
    classes = sorted(splits.label.unique())
    cv = splits[splits.split == "cv"]
    configs = run.configs()
    folds = run.table("folds")
    done = folds[folds.epochs_run > 0]
    t0 = time.perf_counter()
    for row in done.itertuples():
        config = TrainConfig(**configs[int(row.trial)])
        sides = [cv[cv.fold != row.fold], cv[cv.fold == row.fold]]
        train, val = ((
            [str(root / p) for p in side.path], np.array([classes.index(c) for c in side.label])) for side in sides)
        naive_fold(config, len(classes), train, val, int(row.epochs_run))
    return time.perf_counter() - t0, len(done), int(done.epochs_run.sum())


@register_perf("smoke_search")
def smoke_search(options: PerfOptions) -> list[PerfRow]:
    trials, folds = (2, 2) if options.quick else (6, 3)
    with tempfile.TemporaryDirectory(prefix="bench-perf-search-") as tmp:
        work = Path(tmp)
        space = "smoke"
        if options.quick:
            space = str(work / "quick.toml")
            Path(space).write_text(QUICK_SPACE)
        run_path = work / "run"
        args = ["run", "--dataset", options.dataset, "--space", space, "--trials", str(trials), "--folds",
                str(folds), "--seed", str(options.seed), "--no-final", "--out", str(run_path)]
        search = run_bench(args, work)
        naive_seconds, n_folds, n_epochs = naive_replay(run_path)
    ratio = naive_seconds / search.seconds
    return [PerfRow(
        measurement="smoke_search",
        what=f"bench run --space {'smoke' if not options.quick else 'quick'} --trials {trials} --folds {folds} "
             f"--no-final on {options.dataset}, vs the same {n_folds} trial x fold fits ({n_epochs} epochs, as "
             f"run by the search) done the naive way",
        baseline="naive: decode every epoch, rebuild per fold",
        bench="bench run (child process, cold cache)",
        baseline_value=naive_seconds,
        bench_value=search.seconds,
        target=f">= {TARGET:g}x",
        met=ratio >= TARGET,
        note="naive side in-process (no start-up, no data preparation counted)",
    )]
