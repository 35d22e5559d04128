"""Per-trial build-and-trace cost per backbone and Keras backend, and one fold's score on each.

Each (backend, backbone) runs in its own process with KERAS_BACKEND set before keras is imported:
build + compile, then fold 1 of a 3-fold split for ``--epochs`` epochs (first epoch = the trace,
later epochs = the steady cost), balanced accuracy of that fold.

    python scripts/bench_backends.py [--backbones simple_cnn mobilenet_v2 efficientnet_lite0] [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import json, sys, time
import numpy as np
from bench import metrics as M
from bench.training.experiment import inner_split, prepare_data
from bench.training.train import FoldTrainer, TrainConfig
backbone, epochs, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = prepare_data("pneumonia-demo", folds=3, size=size)
config = TrainConfig(backbone=backbone, size=size, epochs=epochs, augment="none", early_stopping=0, reduce_lr=0)
train, val = data.splits.fold_masks(0)
fit, stop = inner_split(data, train, config.inner_val, key=0)
x, y = data.images, data.index.labels
t0 = time.perf_counter()
trainer = FoldTrainer(config, len(data.index.classes), int(fit.sum()))
epoch_s = []
import keras
class Epochs(keras.callbacks.Callback):
    def on_epoch_begin(self, e, logs=None): self.t = time.perf_counter()
    def on_epoch_end(self, e, logs=None): epoch_s.append(time.perf_counter() - self.t)
r = trainer.fit_fold(0, x[fit], y[fit], x[val], y[val], x[stop], y[stop], callbacks=[Epochs()])
score = M.compute_metrics(y[val], r.proba, positive=data.positive)["balanced_accuracy"] if r.ok else float("nan")
print("RESULT " + json.dumps({"build_s": trainer.build_seconds, "first_epoch_s": epoch_s[0],
      "later_epoch_s": float(np.mean(epoch_s[1:])), "trial_s": time.perf_counter() - t0, "balanced_accuracy": score}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=["simple_cnn", "mobilenet_v2", "efficientnet_lite0"])
    ap.add_argument("--backends", nargs="+", default=["tensorflow", "torch"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    print("| backbone | backend | build s | build + first epoch s | later epoch s | balanced acc. (fold 1) |")
    print("|---|---|---|---|---|---|")
    for backbone in args.backbones:
        for backend in args.backends:
            env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
            done = subprocess.run([sys.executable, "-c", CHILD, backbone, str(args.epochs), str(args.size)],
                                  env=env, capture_output=True, text=True)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if not lines:
                tail = (done.stderr.strip().splitlines() or ["?"])[-1]
                print(f"| {backbone} | {backend} | failed: {tail[:120]} | | | |", flush=True)
                continue
            r = json.loads(lines[-1][7:])
            print(f"| {backbone} | {backend} | {r['build_s']:.1f} | {r['build_s'] + r['first_epoch_s']:.1f} | "
                  f"{r['later_epoch_s']:.2f} | {r['balanced_accuracy']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
