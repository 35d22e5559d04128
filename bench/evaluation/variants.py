"""What a model could be besides the single refit: test-time augmentation and fold ensembles.

``bench final --tta flip --ensemble folds`` scores, beside the refit (variant ``refit``), the refit
with its probabilities averaged over a set of flips (``refit+tta``), the mean of the k models that
cross-validation trains for the best trial (``fold-ensemble``) and that mean under the same flips
(``fold-ensemble+tta``). Every variant is scored on the same held-out images with the same
bootstrap as the refit, and against the refit by a paired bootstrap (the same patients drawn for
both), so the report can say what each one buys.

The fold members are trained exactly as cross-validation trained them (each fold's training part,
its own inner split for early stopping and LR reduction, the fold's seed): the ensemble is the
models CV scored, not a new recipe. They are saved (``RunDir.member_path``) so ``bench export
--ensemble folds`` can join them into one Keras model (``ensemble_model``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.deploy.tta import TRANSFORMS, TTA_SETS, Transform, tta_names, tta_proba, variant_name  # noqa: F401 (re-exported)
from bench.errors import ConfigError, DataError

if TYPE_CHECKING:  # `bench --help` reads this module's constants: keep numpy, pandas, scikit-learn out of it
    import numpy as np
    import pandas as pd

    from bench.evaluation.grouping import Entry
    from bench.metrics import CI
    from bench.results import RunDir

ENSEMBLES = ("none", "folds")
REFIT, FOLD_ENSEMBLE = "refit", "fold-ensemble"


@dataclass(frozen=True)
class VariantPlan:
    """What ``bench final`` scores beside the refit."""

    tta: str = "none"
    ensemble: str = "none"

    def __post_init__(self) -> None:
        tta_names(self.tta)
        if self.ensemble not in ENSEMBLES:
            raise ConfigError(f"--ensemble {self.ensemble!r}: choose one of {', '.join(ENSEMBLES)}.")

    @property
    def any(self) -> bool:
        return self.tta != "none" or self.ensemble != "none"


@dataclass
class Scored:
    """One variant's held-out result, in the rows ``RunDir.write_final_variants`` takes."""

    entry: dict[str, Any]  # final.json
    metrics: list[dict[str, Any]]  # test_variants.csv
    proba: np.ndarray


def paired_rows(y: np.ndarray, proba: np.ndarray, reference: np.ndarray, names: tuple[str, ...], *,
                positive: int | None, groups: np.ndarray, unit: str, n_boot: int,
                seed: int) -> dict[str, dict[str, float]]:
    """Per metric of ``names``, the difference to the refit and its paired-bootstrap 95% CI."""
    from bench.metrics import bootstrap_paired_difference

    out = {}
    for name, ci in bootstrap_paired_difference(y, proba, reference, names, n_boot=n_boot, seed=seed,
                                                   positive=positive, groups=groups, unit=unit).items():
        out[name] = {"vs_refit": ci.value, "vs_refit_low": ci.low, "vs_refit_high": ci.high}
    return out


def train_fold_members(data: Any, config: Any, run: RunDir, backbone: str, objective: str,
                       say: Callable[..., None]) -> list[Path]:
    """Train the best trial's model on every CV fold as ``cross_validate`` did and save each one."""
    from bench.training.experiment import epoch_scorer, inner_split
    from bench.training.train import FoldTrainer

    s, labels = data.splits, data.index.labels
    first_train, _ = s.fold_masks(0)
    trainer = FoldTrainer(config, len(data.index.classes), n_train_hint=int(first_train.sum()))
    scorer = epoch_scorer(data, (objective,))
    paths = []
    for k in range(s.folds):
        train, val = s.fold_masks(k)
        fit, stop = inner_split(data, train, config.inner_val, key=k)
        result = trainer.fit_fold(k, data.images[fit], labels[fit], data.images[val], labels[val],
                                  data.images[stop], labels[stop], scorer=scorer)
        if not result.ok:
            raise DataError(f"{backbone}: fold {k} of the fold ensemble did not finish ({result.status}); "
                            f"run `bench final` without --ensemble folds for this backbone.")
        path = run.member_path(backbone, k)
        run.save_model(path, trainer.classifier.save)
        say(f"  fold model {k + 1}/{s.folds}: {result.epochs_run} epoch(s) on {result.n_train} images")
        paths.append(path)
    return paths


def load_members(paths: Sequence[Path]) -> list[Any]:
    from bench.deploy.export import load_model

    return [load_model(p) for p in paths]


def ensemble_model(members: Sequence[Any], name: str) -> Any:
    """One Keras model whose output is the mean of ``members``' class probabilities.

    Each member keeps its own Preprocess layer, so the ensemble takes the same uint8 images as a
    single model; ``name`` should be the members' (``<backbone>_classifier``), which ``bench
    predict`` reads the backbone from.
    """
    import keras

    for k, member in enumerate(members):
        member.name = f"member_{k}"  # nested models need distinct names
    inputs = keras.Input(tuple(members[0].inputs[0].shape[1:]), name="image")
    outputs = keras.layers.Average(name="member_mean")([m(inputs) for m in members])
    return keras.Model(inputs, outputs, name=name)


def ensemble_proba(members: Sequence[Any], images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    import numpy as np

    return np.mean([np.asarray(m.predict(images, batch_size=batch_size, verbose=0), dtype="float64")
                    for m in members], axis=0)


def score_variants(plan: VariantPlan, *, data: Any, config: Any, run: RunDir, entry: Entry, trial: int,
                   test: np.ndarray, refit_predict: Callable[[np.ndarray], np.ndarray], refit_proba: np.ndarray,
                   score: Callable[[np.ndarray], dict[str, CI]], objective: str, n_boot: int,
                   say: Callable[..., None]) -> list[Scored]:
    """Score every variant of ``plan`` on the held-out images ``test``.

    ``refit_predict`` is the refit model's prediction (the refit TTA needs it before the fold
    training reuses the trainer); ``score`` is the bootstrap ``bench final`` scores the refit with.
    """
    images = data.images[test]
    y = data.index.labels[test]
    unit = "patients" if data.spec.groups.kind != "none" else "images"
    groups = data.splits.groups[test]
    made: list[tuple[str, dict[str, Any], np.ndarray, float]] = []
    if plan.tta != "none":
        t0 = time.perf_counter()
        made.append((variant_name(REFIT, plan.tta), {"members": 1}, tta_proba(refit_predict, images, plan.tta),
                     time.perf_counter() - t0))
    if plan.ensemble == "folds":
        say(f"{entry.label}: training the {data.splits.folds} fold models of trial {trial} for the fold ensemble")
        t0 = time.perf_counter()
        paths = train_fold_members(data, config, run, entry.key, objective, say)
        members = load_members(paths)
        facts = {"members": len(paths), "member_models": [str(p.relative_to(run.path)) for p in paths]}
        made.append((FOLD_ENSEMBLE, facts, ensemble_proba(members, images), time.perf_counter() - t0))
        if plan.tta != "none":
            t0 = time.perf_counter()
            made.append((variant_name(FOLD_ENSEMBLE, plan.tta), facts,
                         tta_proba(lambda x: ensemble_proba(members, x), images, plan.tta), time.perf_counter() - t0))
    out = []
    for name, facts, proba, seconds in made:
        cis = score(proba)
        # Paired with the refit on the objective only: one resample loop, not one per metric.
        diffs = paired_rows(y, proba, refit_proba, (objective,), positive=data.positive, groups=groups, unit=unit,
                            n_boot=n_boot, seed=config.seed)
        tta = plan.tta if name.endswith("+tta") else "none"
        record = {"variant": name, "tta": tta, "tta_transforms": list(TTA_SETS[tta]), **facts,
                  "seconds": round(seconds, 1), "n_test": int(test.sum()),
                  "metrics": {k: v.value for k, v in cis.items()}}
        rows = [{**entry.columns, "trial": trial, "variant": name, "tta": tta, "split": "test", "metric": m,
                 "value": ci.value, "low": ci.low, "high": ci.high, "n_images": ci.n, "n_boot": ci.n_boot,
                 "unit": ci.unit, "n_units": ci.n_units, **diffs.get(m, {})}
                for m, ci in cis.items()]
        ci = cis.get(objective)
        if ci is not None:
            d = diffs.get(objective, {})
            say(f"  {name}: held-out {objective} {ci.value:.3f} (95% CI {ci.low:.3f}-{ci.high:.3f}); "
                f"vs refit {d.get('vs_refit', float('nan')):+.3f} ({d.get('vs_refit_low', float('nan')):+.3f} to "
                f"{d.get('vs_refit_high', float('nan')):+.3f}, paired)")
        out.append(Scored(record, rows, proba))
    return out


def record_variants(plan: VariantPlan, *, run: RunDir, entry: Entry, refit_predictions: pd.DataFrame,
                    **kw: Any) -> dict[str, dict[str, float]]:
    """``score_variants``, written to the run directory; ``refit_predictions`` are the refit's
    test_predictions.csv rows, whose columns the variants' rows repeat."""
    scored = score_variants(plan, run=run, entry=entry, **kw)
    base = refit_predictions[[c for c in refit_predictions if not c.startswith("p_")]]
    run.write_final_variants(entry.key, [s.entry for s in scored], [r for s in scored for r in s.metrics],
                             predictions_frame(base, scored, kw["data"].index.classes))
    return {s.entry["variant"]: s.entry["metrics"] for s in scored}


def predictions_frame(base: pd.DataFrame, scored: Sequence[Scored], classes: Sequence[str]) -> pd.DataFrame:
    """The refit's held-out prediction rows repeated per variant with that variant's probabilities."""
    import pandas as pd

    frames = []
    for s in scored:
        frame = base.copy()
        frame.insert(list(frame.columns).index("trial") + 1 if "trial" in frame else 0, "variant",
                     s.entry["variant"])
        for c, name in enumerate(classes):
            frame[f"p_{name}"] = s.proba[:, c]
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else base.iloc[:0]


def export_ensemble(run_dir: Path, *, backbone: str | None = None, out: Path | None = None,
                    tta: str = "none") -> Any:
    """``bench export --ensemble folds``: the fold models of ``bench final --ensemble folds`` joined
    into one Keras model (``ensemble_model``) with a card that says so and gives its held-out numbers.

    The card drops the refit's operating points, temperature and operating-point rates
    (``ENSEMBLE_NO_POINTS``) and says why; ``bench predict --operating-point`` refuses it.
    """
    import os
    import tempfile

    from bench.deploy.export import (
        ENSEMBLE_NO_POINTS,
        ExportResult,
        build_card,
        card_binding,
        export_path,
        heldout_summary,
        select_backbone,
        with_tta,
        write_card,
    )
    from bench.results import RunDir

    run = RunDir.open(Path(run_dir))
    chosen = select_backbone(run, backbone)
    tta_names(tta)  # a wrong name fails before the models are joined
    info = (run.final().get("backbones") or {}).get(chosen, {})
    entries = info.get("variants") or []
    entry = next((e for e in entries if e.get("variant") == FOLD_ENSEMBLE), None)
    if entry is None:
        raise DataError(f"{run.path}: {chosen} has no fold ensemble. Run `bench final --run {run.path} --backbone "
                        f"{chosen} --ensemble folds` first.")
    paths = [run.path / p for p in entry["member_models"]]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"Fold models {missing} are missing although final.json lists them: run `bench final --run "
                        f"{run.path} --backbone {chosen} --ensemble folds` again.")
    out = export_path(run, f"{chosen}-{FOLD_ENSEMBLE}", out)
    # Named after the backbone, as every bench classifier is (`bench predict` checks it against the card),
    # not after the entry: under `bench final --by` the entry is a combination's slug.
    model = ensemble_model(load_members(paths), name=f"{info.get('backbone', chosen)}_classifier")
    # Keras saves only to a name ending in .keras: write in a scratch folder beside it, then rename.
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        tmp = Path(scratch) / out.name
        model.save(tmp)
        os.replace(tmp, out)
    card = build_card(run, chosen, out, model)
    card["model"]["ensemble"] = {
        "kind": "folds", "members": len(paths), "member_models": entry["member_models"],
        "description": f"the mean of the class probabilities of the {len(paths)} cross-validation fold models of "
                       f"trial {card['training']['trial']}, each trained as cross-validation trained it",
    }
    card["training"]["refit"] = f"no refit: the {len(paths)} fold models, averaged"
    card["evaluation"]["test"] = heldout_summary(run, chosen, FOLD_ENSEMBLE)
    card["operating_points"] = []
    card["evaluation"]["operating_points"] = []
    card["evaluation"]["calibration"] = {"temperature": None, "fitted_on": "nothing", "note": ENSEMBLE_NO_POINTS}
    card = with_tta(card, run, chosen, FOLD_ENSEMBLE, tta)
    card["model"]["binding"] = card_binding(card)  # the refit's operating points are no longer bound
    json_path, md_path = write_card(card, out)
    return ExportResult(chosen, out, json_path, md_path, card)
