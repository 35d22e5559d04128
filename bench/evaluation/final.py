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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import metrics as M
from bench.deploy.binding import record_binding
from bench.errors import DataError
from bench.evaluation.grouping import DEFAULT_BY, Grouping, entries
from bench.evaluation.variants import VariantPlan, record_variants
from bench.metrics.operating import OperatingPoint
from bench.results import RunDir, trial_params


def finished_trials(run: RunDir, study: Any = None) -> tuple[pd.DataFrame, dict[int, dict[str, Any]]]:
    """The trials table and each trial's configuration: from the run directory, or from a shared
    study (every machine's trials) when ``study`` is given."""
    if study is None:
        return run.table("trials"), run.configs()
    from bench.results import trial_record

    done = [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]
    records = [trial_record(t) for t in done]
    configs = {t.number: t.user_attrs["config"] for t in done if t.user_attrs.get("config")}
    return pd.DataFrame(records), configs


def best_trials(run: RunDir, by: tuple[str, ...] = DEFAULT_BY, study: Any = None) -> dict[str, int]:
    """Best finished trial per entry (per backbone by default; per combination of the ``by``
    parameters otherwise), keyed by the entry's file name (``Grouping.slug``): from trials.csv (or
    the shared ``study``) for a search, trial 0 for a cv run."""
    grouping = Grouping(by)
    manifest = run.manifest()
    if manifest.get("kind") == "cv":
        config = run.configs().get(0)
        if config is None:
            raise DataError(f"{run.path} has no config.json: the cv run did not start.")
        grouping.check(config, str(run.path))
        return {grouping.slug(config): 0}
    trials, _ = finished_trials(run, study)
    if trials.empty or "state" not in trials:
        raise DataError(f"{run.path} has no finished trials (trials.csv is missing or empty): nothing to evaluate.")
    done = trials[(trials.state == "COMPLETE") & trials.value.notna()]
    if done.empty:
        raise DataError(f"{run.path}: no trial completed, so there is no configuration to evaluate on the test set.")
    maximize = (manifest.get("objective") or {}).get("direction", "maximize") == "maximize"
    done = done.sort_values(["value", "number"], ascending=[not maximize, True])
    configs = [(int(r.number), {**trial_params(r.params), "backbone": str(r.backbone)}) for r in done.itertuples()]
    grouping.check({k for _, c in configs for k in c}, str(run.path))
    return entries(grouping, configs)


def evaluate_run(run_dir: Path, *, backbones: list[str] | None = None, n_boot: int = 1000,
                 console: Any = None, registry: Path | None = None, study: Any = None,
                 operating_points: Sequence[OperatingPoint] = (), by: tuple[str, ...] = DEFAULT_BY,
                 explain: str = "gradcam", variants: VariantPlan | None = None) -> dict[str, Any]:
    from bench.evaluation.clinical import evaluate_clinical, require_oof
    from bench.training.experiment import (
        REFIT_SPLIT,
        epoch_scorer,
        inner_split,
        prepare_data_from_manifest,
    )
    from bench.training.route import trainer_for
    from bench.training.train import TrainConfig

    run = RunDir.open(run_dir)
    manifest = run.manifest()
    grouping = Grouping(by)
    chosen = best_trials(run, by, study)
    configs = finished_trials(run, study)[1] if study is not None else run.configs()
    if backbones:
        have = {str(configs[n]["backbone"]) for n in chosen.values()}
        unknown = sorted(set(backbones) - have)
        if unknown:
            raise DataError(f"{run.path}: no completed trial for backbone(s) {unknown}; have {sorted(have)}.")
        chosen = {k: n for k, n in chosen.items() if configs[n]["backbone"] in backbones}
    require_oof(run, chosen, operating_points)
    objective = (manifest.get("objective") or {}).get("metric", "balanced_accuracy")
    say = console.print if console is not None else (lambda *a, **k: None)
    if study is not None:
        hosts = {(t.user_attrs.get("worker") or {}).get("host") for t in study.get_trials(deepcopy=False)}
        say(f"Shared study '{study.study_name}': best trials chosen among every machine's trials "
            f"({len(configs)} finished, from {len(hosts - {None})} host(s)).")
    results: dict[str, Any] = {}
    for key, trial in chosen.items():
        config = TrainConfig(**configs[trial])
        # One identity for the entry in every file written below (and by the variants and external
        # sets later): its key names files and the `entry` column, `backbone` stays the backbone's name.
        entry = grouping.entry(configs[trial])
        shown = entry.label
        data = prepare_data_from_manifest(manifest, size=config.size, registry=registry)
        # The CV pool, not "everything but the test set": images excluded for sharing a patient
        # with the test set must not reach the refit either.
        train, test = data.splits.cv, data.splits.test
        fit, stop = inner_split(data, train, config.inner_val, key=REFIT_SPLIT)
        say(f"{shown}: refitting trial {trial} on {int(fit.sum())} of the {int(train.sum())} cross-validation "
            f"images (up to {config.epochs} epochs; early stopping and LR reduction read the other "
            f"{int(stop.sum())}), then scoring {int(test.sum())} held-out test images")
        t0 = time.perf_counter()
        # On cached features the refit trains the classifier's own head: the saved model is whole.
        trainer, inputs, _ = trainer_for(config, data, n_train_hint=int(fit.sum()))
        labels = data.index.labels
        history = trainer.fit_full(inputs[fit], labels[fit], inputs[stop], labels[stop],
                                   scorer=epoch_scorer(data, (objective,)))
        epochs = len(history.get("loss", []))
        proba = trainer.predict(inputs[test])
        seconds = time.perf_counter() - t0
        y = data.index.labels[test]
        # Resample whole patients (cluster bootstrap); without patient ids, images (exact duplicates together).
        unit = "patients" if data.spec.groups.kind != "none" else "images"
        def score(p: np.ndarray) -> dict[str, M.CI]:
            return M.bootstrap_all(y, p, n_boot=n_boot, seed=config.seed, positive=data.positive,
                                   groups=data.splits.groups[test], unit=unit)

        cis = score(proba)
        n_test = int(test.sum())
        metric_rows = [{**entry.columns, "trial": trial, "split": "test", "metric": name,
                        "value": ci.value, "low": ci.low, "high": ci.high, "n_images": n_test, "n_boot": ci.n_boot,
                        "unit": ci.unit, "n_units": ci.n_units}
                       for name, ci in cis.items()]
        rows = np.flatnonzero(test)
        idx = data.index
        predictions = pd.DataFrame({
            **entry.columns, "trial": trial, "path": [idx.paths[i] for i in rows],
            "group": [idx.groups[i] for i in rows], "truth": [idx.classes[idx.labels[i]] for i in rows],
            "target": idx.labels[rows],
        })
        for c, name in enumerate(idx.classes):
            predictions[f"p_{name}"] = proba[:, c]
        model_path = run.model_path(key)
        info = {"variant": "refit", "trial": trial, "refit_epochs": epochs, "n_train": int(fit.sum()),
                "n_inner_val": int(stop.sum()), "n_test": n_test,
                "seconds": round(seconds, 1), "model": str(model_path.relative_to(run.path)),
                "config": config.to_dict(), "history": history, "classes": list(idx.classes),
                "size": config.size, "preprocessing": "uint8 RGB resized by bench's cache (" + data.resize + ")"}
        info.update(entry.record())
        info.update(evaluate_clinical(run, entry, trial, idx.classes, data.positive, y, proba,
                                      data.splits.groups[test], unit=unit, points=operating_points,
                                      n_boot=n_boot, seed=config.seed, say=say))
        if not grouping.is_default:  # a refit of the search's own entries has no "by" (see _final_is_current)
            info["by"] = list(grouping.by)
        # The model and its record are committed together; the record's binding ties the classes,
        # size and resize mode a prediction depends on to the model's sha256 (bench.deploy.binding).
        run.write_final_backbone(key, info, metric_rows, predictions, save_model=trainer.classifier.save,
                                 seal=lambda sha, info=info, key=key: {
                                     "model_binding": record_binding(manifest, key, info, sha)})
        _draw_explanation(run, key, {idx.paths[i]: data.images[i] for i in rows}, say, explain)
        ci = cis.get(objective)
        if ci is not None and not math.isnan(ci.value):
            say(f"  held-out test {objective} {ci.value:.3f} (95% CI {ci.low:.3f}-{ci.high:.3f}, {n_test} images, "
                f"{M.bootstrap_phrase(ci.n_units, ci.unit, n_test)})")
        results[key] = {"trial": trial, "metrics": {k: v.value for k, v in cis.items()}}
        if variants is not None and variants.any:  # TTA and fold ensembles beside the refit (bench.evaluation.variants)
            results[key]["variants"] = record_variants(
                variants, run=run, entry=entry, refit_predictions=predictions, data=data, config=config,
                trial=trial, test=test, refit_predict=trainer.predict_images, refit_proba=proba, score=score,
                objective=objective, n_boot=n_boot, say=say)
    return results


def _draw_explanation(run: RunDir, key: str, images: dict[str, np.ndarray], say: Any, method: str) -> None:
    """The report's grid of one explanation method (Grad-CAM by default) over this entry's held-out
    predictions, drawn here (the report never loads a model). A failure to draw costs the figure,
    never the evaluation just written."""
    from bench.deploy.explain import explanation_grid

    try:
        explanation_grid(run.path, run.explanation_path(key, method), backbone=key, images=images, method=method)
    except Exception as err:  # noqa: BLE001 - any drawing error: report it and keep the results
        say(f"  {method} grid not drawn for {key}: {type(err).__name__}: {err}")
