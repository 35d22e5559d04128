"""Fixed per-fold overhead of k-fold CV: one compiled model reused vs a model rebuilt per fold.

Overhead per fold = (build + compile, when the strategy builds) + (reset, when it reuses) + the
first training step (which includes tracing for a new model). Prints both totals and the ratio.

    python scripts/bench_fold_overhead.py [--backbone mobilenet_v2] [--size 64] [--folds 5]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from bench.training.experiment import prepare_data  # noqa: E402
from bench.training.train import FoldTrainer, TrainConfig  # noqa: E402


class FirstStep(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.t0 = time.perf_counter()
        self.seconds = None

    def on_train_batch_end(self, batch, logs=None):
        if self.seconds is None:
            self.seconds = time.perf_counter() - self.t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="pneumonia-demo")
    ap.add_argument("--backbone", default="mobilenet_v2")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--folds", type=int, default=5)
    args = ap.parse_args()
    data = prepare_data(args.dataset, folds=args.folds, size=args.size)
    config = TrainConfig(backbone=args.backbone, size=args.size, epochs=1, augment="none", early_stopping=0,
                         reduce_lr=0)
    x, y = data.images, data.index.labels
    n_classes = len(data.index.classes)
    hint = int(data.splits.fold_masks(0)[0].sum())
    results = {}
    for strategy in ("rebuild per fold", "compile once"):
        overheads, walls = [], []
        trainer = None
        for k in range(args.folds):
            train, val = data.splits.fold_masks(k)
            t0 = time.perf_counter()
            if strategy == "rebuild per fold" or trainer is None:
                keras.backend.clear_session()
                trainer = FoldTrainer(config, n_classes, hint)
                setup = trainer.build_seconds
            else:
                t_reset = time.perf_counter()
                trainer.reset()
                setup = time.perf_counter() - t_reset
                trainer.folds_trained = 0  # reset done and timed here; fit_fold need not repeat it
            first = FirstStep()
            trainer.fit_fold(k, x[train], y[train], x[val], y[val], callbacks=[first])
            overheads.append(setup + first.seconds)
            walls.append(time.perf_counter() - t0)
            print(f"{strategy:>17}: fold {k + 1}: build/reset {setup:6.2f} s + first step {first.seconds:6.2f} s"
                  f" (fold wall {walls[-1]:6.2f} s)")
        results[strategy] = (sum(overheads), sum(walls))
    (ro, rw), (co, cw) = results["rebuild per fold"], results["compile once"]
    print(f"\n{args.backbone} {args.size}px, {args.folds} folds, 1 epoch each on {args.dataset}:")
    print(f"  fixed overhead: rebuild per fold {ro:.1f} s, compile once {co:.1f} s -> ratio {ro / co:.2f}x")
    print(f"  fold wall time: rebuild per fold {rw:.1f} s, compile once {cw:.1f} s -> ratio {rw / cw:.2f}x")


if __name__ == "__main__":
    main()
