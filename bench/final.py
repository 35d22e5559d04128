"""The held-out evaluation: each backbone's best configuration, refit on all training data,
scored once on the test set with bootstrap confidence intervals over patients (over images
where the dataset has no patient ids).

This is the only code that touches the held-out test images, and it runs after the search:
nothing it computes flows back into choosing a configuration. The refit follows the recipe that
cross-validation scored, not a replay of it: the same epoch budget, with early stopping and LR
reduction reading an inner split of the training images carved exactly as each fold carved its
own. (A replay, "the folds' median best epoch at a constant rate", would be a recipe no fold ran:
the folds' LR reductions came at different epochs.)
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import metrics as M
from bench.errors import DataError
from bench.results import RunDir
from bench.variants import VariantPlan, record_variants


def best_trials(run: RunDir) -> dict[str, int]:
    """Best finished trial per backbone: from trials.csv for a search, trial 0 for a cv run."""
    manifest = run.manifest()
    if manifest.get("kind") == "cv":
        config = run.configs().get(0)
        if config is None:
            raise DataError(f"{run.path} has no config.json: the cv run did not start.")
        return {config["backbone"]: 0}
    trials = run.table("trials")
    if trials.empty or "state" not in trials:
        raise DataError(f"{run.path} has no finished trials (trials.csv is missing or empty): nothing to evaluate.")
    done = trials[(trials.state == "COMPLETE") & trials.value.notna()]
    if done.empty:
        raise DataError(f"{run.path}: no trial completed, so there is no configuration to evaluate on the test set.")
    maximize = (manifest.get("objective") or {}).get("direction", "maximize") == "maximize"
    done = done.sort_values(["value", "number"], ascending=[not maximize, True])
    return {str(b): int(rows.iloc[0].number) for b, rows in done.groupby("backbone", sort=False)}


def evaluate_run(run_dir: Path, *, backbones: list[str] | None = None, n_boot: int = 1000,
                 console: Any = None, registry: Path | None = None,
                 variants: VariantPlan | None = None) -> dict[str, Any]:
    from bench.experiment import REFIT_SPLIT, epoch_scorer, inner_split, prepare_data_from_manifest
    from bench.train import FoldTrainer, TrainConfig

    run = RunDir.open(run_dir)
    manifest = run.manifest()
    chosen = best_trials(run)
    if backbones:
        unknown = sorted(set(backbones) - set(chosen))
        if unknown:
            raise DataError(f"{run.path}: no completed trial for backbone(s) {unknown}; have {sorted(chosen)}.")
        chosen = {b: n for b, n in chosen.items() if b in backbones}
    configs = run.configs()
    objective = (manifest.get("objective") or {}).get("metric", "balanced_accuracy")
    say = console.print if console is not None else (lambda *a, **k: None)
    results: dict[str, Any] = {}
    for backbone, trial in chosen.items():
        config = TrainConfig(**configs[trial])
        data = prepare_data_from_manifest(manifest, size=config.size, registry=registry)
        # The CV pool, not "everything but the test set": images excluded for sharing a patient
        # with the test set must not reach the refit either.
        train, test = data.splits.cv, data.splits.test
        fit, stop = inner_split(data, train, config.inner_val, key=REFIT_SPLIT)
        say(f"{backbone}: refitting trial {trial} on {int(fit.sum())} of the {int(train.sum())} cross-validation "
            f"images (up to {config.epochs} epochs; early stopping and LR reduction read the other "
            f"{int(stop.sum())}), then scoring {int(test.sum())} held-out test images")
        t0 = time.perf_counter()
        trainer = FoldTrainer(config, len(data.index.classes), n_train_hint=int(fit.sum()))
        labels = data.index.labels
        history = trainer.fit_full(data.images[fit], labels[fit], data.images[stop], labels[stop],
                                   scorer=epoch_scorer(data, (objective,)))
        epochs = len(history.get("loss", []))
        proba = trainer.predict(data.images[test])
        seconds = time.perf_counter() - t0
        y = data.index.labels[test]
        # Resample whole patients (cluster bootstrap); without patient ids, images (exact duplicates together).
        unit = "patients" if data.spec.groups.kind != "none" else "images"
        def score(p: np.ndarray) -> dict[str, M.CI]:
            return M.bootstrap_all(y, p, n_boot=n_boot, seed=config.seed, positive=data.positive,
                                   groups=data.splits.groups[test], unit=unit)

        cis = score(proba)
        n_test = int(test.sum())
        metric_rows = [{"backbone": backbone, "trial": trial, "split": "test", "metric": name, "value": ci.value,
                        "low": ci.low, "high": ci.high, "n_images": n_test, "n_boot": ci.n_boot,
                        "unit": ci.unit, "n_units": ci.n_units}
                       for name, ci in cis.items()]
        rows = np.flatnonzero(test)
        idx = data.index
        predictions = pd.DataFrame({
            "backbone": backbone, "trial": trial, "path": [idx.paths[i] for i in rows],
            "group": [idx.groups[i] for i in rows], "truth": [idx.classes[idx.labels[i]] for i in rows],
            "target": idx.labels[rows],
        })
        for c, name in enumerate(idx.classes):
            predictions[f"p_{name}"] = proba[:, c]
        model_path = run.model_path(backbone)
        model_path.parent.mkdir(parents=True, exist_ok=True)
        trainer.classifier.save(model_path)
        info = {"variant": "refit", "trial": trial, "refit_epochs": epochs, "n_train": int(fit.sum()),
                "n_inner_val": int(stop.sum()), "n_test": n_test,
                "seconds": round(seconds, 1), "model": str(model_path.relative_to(run.path)),
                "config": config.to_dict(), "history": history, "classes": list(idx.classes),
                "size": config.size, "preprocessing": "uint8 RGB resized by bench's cache (" + data.resize + ")"}
        run.write_final_backbone(backbone, info, metric_rows, predictions)
        _draw_gradcam(run, backbone, {idx.paths[i]: data.images[i] for i in rows}, say)
        ci = cis.get(objective)
        if ci is not None and not math.isnan(ci.value):
            say(f"  held-out test {objective} {ci.value:.3f} (95% CI {ci.low:.3f}-{ci.high:.3f}, {n_test} images, "
                f"{M.bootstrap_phrase(ci.n_units, ci.unit, n_test)})")
        results[backbone] = {"trial": trial, "metrics": {k: v.value for k, v in cis.items()}}
        if variants is not None and variants.any:  # TTA and fold ensembles beside the refit (bench.variants)
            results[backbone]["variants"] = record_variants(
                variants, run=run, backbone=backbone, refit_predictions=predictions, data=data, config=config,
                trial=trial, test=test, refit_predict=trainer.predict, refit_proba=proba, score=score,
                objective=objective, n_boot=n_boot, say=say)
    return results


def _draw_gradcam(run: RunDir, backbone: str, images: dict[str, np.ndarray], say: Any) -> None:
    """The report's Grad-CAM grid of this backbone's held-out predictions, drawn here (the report
    never loads a model). A failure to draw costs the figure, never the evaluation just written."""
    from bench.explain import gradcam_grid

    try:
        gradcam_grid(run.path, run.gradcam_path(backbone), backbone=backbone, images=images)
    except Exception as err:  # noqa: BLE001 - any drawing error: report it and keep the results
        say(f"  Grad-CAM grid not drawn for {backbone}: {type(err).__name__}: {err}")
