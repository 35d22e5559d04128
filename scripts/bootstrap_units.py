"""Held-out CIs by image bootstrap against patient (cluster) bootstrap, on one quick real model.

Builds the dataset's held-out test set as ``bench`` does (``prepare_data``), trains a small
model on the other images (no search), predicts the test images and prints each metric's 95%
CI both ways, with the number of test images and patients. What ``bench final`` now reports is
the patient row (where the dataset has patient ids).

    python scripts/bootstrap_units.py [--dataset pneumonia-demo] [--epochs 5] [--boot 2000] [--train-seed 0]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from bench import metrics as M  # noqa: E402
from bench.training.experiment import prepare_data  # noqa: E402
from bench.training.train import FoldTrainer, TrainConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="pneumonia-demo")
    ap.add_argument("--folds", type=int, default=3, help="only shapes the split, as in the demo search")
    ap.add_argument("--seed", type=int, default=0, help="the split's seed (and the bootstrap's)")
    ap.add_argument("--train-seed", type=int, default=0, help="the model's seed")
    ap.add_argument("--backbone", default="simple_cnn")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--boot", type=int, default=2000)
    ap.add_argument("--metrics", nargs="+", default=["balanced_accuracy", "auc", "accuracy"])
    args = ap.parse_args()

    data = prepare_data(args.dataset, folds=args.folds, seed=args.seed, size=args.size)
    train, test = data.splits.cv, data.splits.test
    config = TrainConfig(backbone=args.backbone, size=args.size, epochs=args.epochs, early_stopping=0,
                         reduce_lr=0, inner_val=0.0, seed=args.train_seed)
    trainer = FoldTrainer(config, len(data.index.classes), n_train_hint=int(train.sum()))
    trainer.fit_full(data.images[train], data.index.labels[train])
    proba = trainer.predict(data.images[test])
    y, groups = data.index.labels[test], data.splits.groups[test]
    sizes = np.bincount(np.unique(groups, return_inverse=True)[1].ravel())
    print(f"{args.dataset}: {int(test.sum())} held-out test images from {sizes.size} groups "
          f"(largest {sizes.max()} images; group rule {data.spec.groups.kind}); {args.backbone} "
          f"{args.epochs} epochs on {int(train.sum())} images; {args.boot} resamples")
    unit = "patients" if data.spec.groups.kind != "none" else "images"
    by_image = M.bootstrap_all(y, proba, args.metrics, n_boot=args.boot, seed=args.seed, positive=data.positive)
    by_group = M.bootstrap_all(y, proba, args.metrics, n_boot=args.boot, seed=args.seed, positive=data.positive,
                               groups=groups, unit=unit)
    print(f"{'metric':<18} {'value':>6}  {'over images':<17} {'over ' + unit:<17} width ratio")
    for name in args.metrics:
        a, b = by_image[name], by_group[name]
        print(f"{name:<18} {a.value:6.3f}  [{a.low:.3f}, {a.high:.3f}]   [{b.low:.3f}, {b.high:.3f}]   "
              f"{(b.high - b.low) / (a.high - a.low):.2f}")


if __name__ == "__main__":
    main()
