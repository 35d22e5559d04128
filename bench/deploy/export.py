"""Export the refit best model of a run with a model card beside it.

The exported file is a byte copy of ``<run>/models/<backbone>.keras``, the very model ``bench
final`` scored on the held-out test set, so the card's test numbers belong to it (its sha256 is
in the card). ``FILE.keras`` gets ``FILE.card.json`` (what ``bench predict`` and ``bench
explain`` read: classes, image size and resize mode) and ``FILE.card.md`` (the same for people:
dataset, licence and citation, preprocessing, training configuration, CV and test metrics with
CIs, package versions).

Which backbone is "the winner" is decided by the cross-validation objective, never by the test
score: choosing by the held-out test would make its numbers optimistic.

A run's own model file is trusted only as far as its record: ``bench final`` records each model's
sha256 and a binding digest (``record_binding``) in final.json when it commits the pair, and every
reader here (export, predict and explain on ``<run>/models/<entry>.keras``) refuses a file whose
sha256 is not the recorded one, or a record edited since (``verified_run_model``, ``read_card``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import metrics as M
from bench.atomic import atomic_path, write_text_atomic
from bench.deploy.binding import (  # noqa: F401 (card_binding, record_binding: part of this module's interface)
    card_binding,
    clean,
    prediction_facts,
    record_binding,
    verified_run_model,
)
from bench.deploy.tta import tta_names, variant_name
from bench.download import sha256_file
from bench.errors import ConfigError, DataError
from bench.results import RunDir, entry_keys

CARD_SCHEMA = "bench-model-card/2"  # 2: model.binding (see card_binding)
INTENDED_USE = (
    "Research benchmarking of transfer learning on medical images. Not a medical device: not validated "
    "for diagnosis, screening or any clinical decision. Its numbers hold for images like the held-out test "
    "set (same source, acquisition and preprocessing) and say nothing about other populations or scanners."
)

# Why a fold ensemble's card carries no thresholds or temperature (``bench predict --operating-point`` says it too).
ENSEMBLE_NO_POINTS = (
    "the thresholds and temperature of `bench final` were chosen on the out-of-fold predictions of single fold "
    "models for the refit; the ensemble averages the fold models, whose probabilities are smoother, and no "
    "out-of-fold prediction of the ensemble itself exists (every fold model saw the other folds), so they "
    "would not mean on it what they meant on CV")


# ---- card files ----------------------------------------------------------------------------------


def card_paths(model_path: Path) -> tuple[Path, Path]:
    """``FILE.keras`` -> (``FILE.card.json``, ``FILE.card.md``)."""
    model_path = Path(model_path)
    stem = model_path.name[: -len(".keras")] if model_path.name.endswith(".keras") else model_path.stem
    return model_path.with_name(f"{stem}.card.json"), model_path.with_name(f"{stem}.card.md")


@dataclass(frozen=True)
class ModelCard:
    """The parts of a model card that using the model needs; ``data`` is the whole card."""

    classes: tuple[str, ...]
    size: int
    resize: str
    backbone: str
    positive: str | None
    data: dict[str, Any]
    source: Path  # the card file (or the run directory it was built from)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: Path) -> ModelCard:
        try:
            pre = data["preprocessing"]
            return cls(tuple(data["classes"]), int(pre["size"]), str(pre["resize"]),
                       str(data["model"]["backbone"]), data.get("positive_class"), data, source)
        except (KeyError, TypeError, ValueError) as err:
            raise DataError(f"{source} is not a bench model card (missing or bad {err}). Re-export the model "
                            f"with `bench export --run DIR`.") from None


def read_card(model_path: Path) -> ModelCard:
    """The card beside ``model_path``; for a run's own ``models/<backbone>.keras``, the run's records."""
    model_path = Path(model_path)
    json_path, _ = card_paths(model_path)
    if json_path.is_file():
        try:
            data = json.loads(json_path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(f"Cannot read the model card {json_path}: {err}.") from None
        return ModelCard.from_dict(data, json_path)
    run_dir = model_path.resolve().parent.parent
    if model_path.parent.name == "models" and (run_dir / "manifest.json").is_file():
        run = RunDir.open(run_dir)
        backbone = model_path.name[: -len(".keras")]
        if backbone in (run.final().get("backbones") or {}):
            # The sha256 and binding recorded when `bench final` wrote the model, not ones computed
            # now from the very file and record they are meant to check.
            card = build_card(run, backbone, model_path, sealed=True)
            return ModelCard.from_dict(card, run.file("final"))
    raise DataError(f"No model card beside {model_path} (expected {json_path}): the card says which classes, "
                    f"image size and resize mode the model was trained with. Export the model with "
                    f"`bench export --run DIR --out {model_path}`, or point at a run's models/<backbone>.keras.")


# ---- which model ---------------------------------------------------------------------------------


def _objective(run: RunDir) -> tuple[str, bool]:
    objective = run.manifest().get("objective") or {}
    return objective.get("metric", "balanced_accuracy"), objective.get("direction", "maximize") == "maximize"


def cv_summary(run: RunDir, trial: int) -> dict[str, Any]:
    """Mean, std and fold count of each validation metric of ``trial``; images over its folds."""
    metrics = run.table("metrics")
    out: dict[str, Any] = {"folds": 0, "n_images": None, "metrics": {}}
    if metrics.empty:
        return out
    rows = metrics[(metrics.trial == trial) & (metrics.split == "cv")]
    for name, values in rows.groupby("metric", sort=False)["value"]:
        v = values.to_numpy(dtype="float64")
        out["metrics"][str(name)] = {"mean": float(np.nanmean(v)) if np.isfinite(v).any() else None,
                                     "std": float(np.nanstd(v, ddof=1)) if np.isfinite(v).sum() > 1 else None,
                                     "n_folds": int(len(v))}
    folds = run.table("folds")
    if not folds.empty:
        ok = folds[(folds.trial == trial) & (folds.status == "ok")]
        out["folds"] = int(len(ok))
        if "n_val" in ok:
            out["n_images"] = int(ok.n_val.sum())
    return out


def heldout_summary(run: RunDir, backbone: str, variant: str | None = None) -> dict[str, Any]:
    """The held-out test metrics of ``backbone`` with their bootstrap 95% CIs and what the bootstrap
    resampled (``unit``, patients or images, and ``n_units``, how many); of the refit, or of a
    ``variant`` of it (``bench final --ensemble/--tta``)."""
    table = run.table("test_variants" if variant else "test_metrics")
    out: dict[str, Any] = {"n_images": None, "n_boot": None, "unit": None, "n_units": None, "metrics": {}}
    if table.empty:
        return out
    rows = table[(entry_keys(table) == backbone) & ((table.variant == variant) if variant else True)]
    for r in rows.itertuples():
        out["metrics"][str(r.metric)] = {"value": r.value, "low": r.low, "high": r.high}
        out["n_images"], out["n_boot"] = int(r.n_images), int(r.n_boot)
        out["unit"], out["n_units"] = str(r.unit), int(r.n_units)
    return out


def operating_summary(run: RunDir, backbone: str) -> list[dict[str, Any]]:
    """The sensitivity and specificity each operating point reached on CV and test, with CIs."""
    table = run.table("operating_points")
    if table.empty:
        return []
    # The entry's identity columns (its key, backbone and factors) say nothing the card does not.
    factors = ((run.final().get("backbones") or {}).get(backbone) or {}).get("factors") or {}
    rows = table[entry_keys(table) == backbone]
    return rows.drop(columns=[c for c in ("entry", "backbone", *factors) if c in rows]).to_dict(orient="records")


def resampled(test: dict[str, Any]) -> str:
    """``heldout_summary``'s bootstrap in words: "bootstrap over 40 patients"."""
    if test.get("n_units") is None:
        return "bootstrap"
    return M.bootstrap_phrase(test["n_units"], test["unit"], test.get("n_images"))


def select_backbone(run: RunDir, backbone: str | None = None) -> str:
    """``backbone`` if the run has its final model, else the one with the best CV objective."""
    final = run.final().get("backbones") or {}
    if not final:
        raise DataError(f"{run.path} has no final model: run `bench final --run {run.path}` first "
                        f"(it refits the best configuration and scores it on the held-out test set).")
    if backbone is not None:
        if backbone not in final:
            from bench.errors import close_matches

            raise DataError(f"{run.path} has no final model for backbone {backbone!r}.{close_matches(backbone, final)} "
                            f"It has: {', '.join(sorted(final))}.")
        return backbone
    if len(final) == 1:
        return next(iter(final))
    metric, maximize = _objective(run)

    def key(name: str) -> tuple[float, str]:
        mean = (cv_summary(run, int(final[name]["trial"]))["metrics"].get(metric) or {}).get("mean")
        value = -math.inf if mean is None else (mean if maximize else -mean)
        return (-value, name)

    return min(final, key=key)


# ---- the card ------------------------------------------------------------------------------------


_sha256 = sha256_file
_clean = clean


def build_card(run: RunDir, backbone: str, model_path: Path, model: Any = None, *,
               sealed: bool = False) -> dict[str, Any]:
    """The model card of ``backbone``'s final model in ``run`` (as a JSON-ready dict).

    ``sealed``: the card of the run's own model file, whose sha256 and binding are the ones
    final.json recorded (``verify_card`` then checks the file and the record against them).
    """
    from bench import __version__, environment

    manifest = run.manifest()
    info = (run.final().get("backbones") or {})[backbone]
    config = dict(info.get("config") or run.configs().get(int(info["trial"]), {}))
    ds = manifest.get("dataset") or {}
    classes, size, resize, spec = prediction_facts(manifest, backbone, info, config)
    metric, maximize = _objective(run)
    env = manifest.get("environment") or {}
    model_facts: dict[str, Any] = {
        "file": Path(model_path).name, "backbone": spec.name, "backbone_title": spec.title,
        "input_shape": [size, size, 3],
        "output": "softmax probabilities, one per class, in the order of `classes`",
        "weights_init": config.get("weights") or "random",
    }
    if sealed:
        for key in ("sha256", "binding"):
            if info.get(f"model_{key}"):
                model_facts[key] = info[f"model_{key}"]
    elif Path(model_path).is_file():
        model_facts["sha256"] = _sha256(Path(model_path))
    if Path(model_path).is_file():
        model_facts["bytes"] = Path(model_path).stat().st_size
    if model is not None:
        from bench.models.dropout import parameter_count  # keras, only when a model is given

        model_facts["params"] = parameter_count(model)
    card = {
        "schema": CARD_SCHEMA,
        "name": f"{ds.get('name', 'dataset')}-{backbone}",
        "intended_use": INTENDED_USE,
        "model": model_facts,
        "classes": classes,
        "positive_class": ds.get("positive"),
        "preprocessing": {
            "size": size, "resize": resize,
            "decoder": "bench.data.images.decode_image(path, size, resize)",
            "input": "uint8 RGB 0..255, channels last; grayscale, 16-bit, alpha, palette and CMYK images "
                     "become RGB; EXIF orientation applied",
            "in_model": spec.preprocess,
            "in_model_note": "the backbone's input scaling is a Preprocess layer inside the saved model",
        },
        "dataset": {
            "name": ds.get("name"), "title": ds.get("title"), "license": ds.get("license"),
            "citation": ds.get("citation"), "images": ds.get("images"), "per_class": ds.get("per_class"),
            "groups": ds.get("groups"), "fingerprint": ds.get("fingerprint"),
            "skipped_unreadable": len(ds.get("skipped") or []),
            "split": manifest.get("split"),
        },
        "training": {
            "trial": int(info["trial"]), "config": config, "refit_epochs": info.get("refit_epochs"),
            "n_train": info.get("n_train"), "n_inner_val": info.get("n_inner_val"), "seconds": info.get("seconds"),
            "refit": refit_recipe(info, config),
        },
        "evaluation": {
            "objective": {"metric": metric, "direction": "maximize" if maximize else "minimize"},
            "cv": cv_summary(run, int(info["trial"])),
            "test": heldout_summary(run, backbone),
            "calibration": info.get("calibration"),
            "operating_points": operating_summary(run, backbone),
        },
        # `bench predict --operating-point NAME` applies these; chosen on out-of-fold CV predictions.
        "operating_points": info.get("operating_points") or [],
        "versions": {
            "training": env.get("versions") or {}, "training_backend": env.get("backend"),
            "export": environment.versions(),
        },
        "provenance": {
            "run": str(run.path.resolve()), "kind": manifest.get("kind"), "study": manifest.get("study"),
            "command": manifest.get("command"), "bench_version": manifest.get("bench_version"),
            "source_model": str(run.model_path(backbone).resolve()),
            "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "exported_by": f"bench {__version__}",
        },
    }
    card = _clean(card)
    if "sha256" in model_facts and not sealed:
        card["model"]["binding"] = card_binding(card)
    return card


def refit_recipe(info: dict[str, Any], config: dict[str, Any]) -> str:
    """How the final model was trained, in words, from the record `bench final` wrote (final.json),
    never from what the code is believed to do: a card states what happened to this model."""
    n_fit, n_stop, epochs = info.get("n_train"), info.get("n_inner_val"), info.get("refit_epochs")
    if n_fit is None or n_stop is None or epochs is None:
        return "not recorded: final.json was written by a bench that did not record its refit; run bench final again"
    budget = config.get("epochs")
    stopped = "" if budget is None else (f" of at most {budget}" + (", stopped early" if int(epochs) < int(budget) else ""))
    return (f"refit on {int(n_fit)} images of the cross-validation pool (patients shared with the held-out test "
            f"set excluded) for {int(epochs)} epoch(s){stopped}; early stopping and learning-rate reduction read "
            f"an inner split of {int(n_stop)} other pool images; the held-out test set was scored once, after")


def verify_card(model_path: Path, card: ModelCard) -> None:
    """Refuse a model file that is not the one its card was exported with, or a card edited since.

    For a run's own model file the "card" is final.json's entry (``read_card``), checked against
    the sha256 and binding ``bench final`` recorded with the model.
    """
    model_facts = card.data.get("model") or {}
    sha, binding = model_facts.get("sha256"), model_facts.get("binding")
    override = "or pass --no-verify if you changed them on purpose and know they still agree"
    run_record = card.source.name == "final.json"
    if run_record:
        written, after = "written by `bench final`", "`bench final` wrote it"
        redo = f"Re-run `bench final --run {card.source.parent}`"
    else:
        written, after, redo = "exported", "export", "Re-export with `bench export --run DIR`"
    if not sha or not binding:
        raise DataError(f"The model card {card.source} has no sha256/binding to check {model_path} against "
                        f"({written} by an older bench?). {redo}, {override}.")
    actual = _sha256(Path(model_path))
    if actual != sha:
        what = "the model its record" if run_record else "the model its card"
        raise DataError(f"{model_path} is not {what} {card.source} was written for: the card records "
                        f"sha256 {sha[:16]}..., the file has {actual[:16]}.... Put the model and its card "
                        f"back together ({redo[0].lower() + redo[1:]}), {override}.")
    if card_binding(card.data) != binding:
        raise DataError(f"The model card {card.source} was edited after {after}: its classes, positive "
                        f"class, backbone, size or resize mode no longer match the model {model_path} they were "
                        f"{written} with. {redo}, {override}.")


def _fmt(x: Any, digits: int = 3) -> str:
    return "–" if x is None else (f"{x:.{digits}f}" if isinstance(x, float) else str(x))


def _setting(x: Any) -> str:
    return "none" if x is None else (f"{x:.6g}" if isinstance(x, float) else str(x))


def render_markdown(card: dict[str, Any]) -> str:
    """The model card for people."""
    m, pre, ds, tr, ev = card["model"], card["preprocessing"], card["dataset"], card["training"], card["evaluation"]
    split = ds.get("split") or {}
    objective = ev["objective"]["metric"]
    ensemble = m.get("ensemble")
    lines = [
        f"# Model card: {m['backbone_title']} on {ds.get('title') or ds.get('name')}",
        "",
        f"`{m['file']}` — a `{m['backbone']}` classifier of {len(card['classes'])} classes "
        f"({', '.join(card['classes'])}), exported by {card['provenance']['exported_by']} on "
        f"{card['provenance']['exported']}.",
        "",
        *([f"**An ensemble of {ensemble['members']} models**: {ensemble['description']}", ""] if ensemble else []),
        *([f"**Test-time augmentation**: `bench predict` averages over the flips {', '.join(card['tta']['transforms'])} "
           f"(`{card['tta']['set']}`), as the held-out numbers below were scored ({card['tta']['scored_as']}); "
           f"`--tta none` predicts without them.", ""] if card.get("tta") else []),
        "## Intended use",
        "",
        card["intended_use"],
        "",
        "## Inputs and preprocessing",
        "",
        f"- Image: decoded with `{pre['decoder']}` at **{pre['size']} × {pre['size']} px**, resize mode "
        f"**{pre['resize']}**: {pre['input']}.",
        f"- Inside the model: the backbone's input scaling (`{pre['in_model']}`); give it the 0..255 RGB array.",
        "- Output: " + m["output"] + ".",
        (f"- Positive class (sensitivity, specificity): **{card['positive_class']}**." if card.get("positive_class")
         else "- Multiclass: sensitivity and specificity are macro averages over classes."),
        "",
        "Use it with `bench predict " + m["file"] + " IMAGES...` and `bench explain " + m["file"]
        + " IMAGES... --out DIR`; both read this card's JSON twin.",
        "",
        "## Data",
        "",
        f"- Dataset: **{ds.get('name')}** — {ds.get('title')}; {ds.get('images')} images {ds.get('per_class')}, "
        f"{ds.get('groups')} patient/image groups; {ds.get('skipped_unreadable', 0)} unreadable files skipped.",
        f"- Split: {split.get('rule')}; held-out test {split.get('test_images')} images, "
        f"{split.get('folds')}-fold cross-validation on {split.get('cv_images')}.",
        f"- Licence: {ds.get('license') or 'not recorded'}",
        f"- Citation: {ds.get('citation') or 'not recorded'}",
        "",
        "## Training",
        "",
        f"The configuration of trial {tr['trial']}, {tr['refit']} ({tr.get('seconds')} s). "
        f"Initial weights: {m['weights_init']}.",
        "",
        "| setting | value |",
        "|---|---|",
        *[f"| {k} | {_setting(v)} |" for k, v in sorted(tr["config"].items())],
        "",
        "## Evaluation",
        "",
        f"Objective: {objective} ({ev['objective']['direction']}).",
        "",
        f"Cross-validation (validation folds, {ev['cv'].get('folds')} folds, {ev['cv'].get('n_images')} images; "
        f"this is what chose the configuration):",
        "",
        "| metric | mean | std | folds |",
        "|---|---|---|---|",
        *[f"| {k} | {_fmt(v['mean'])} | {_fmt(v['std'])} | {v['n_folds']} |" for k, v in ev["cv"]["metrics"].items()],
        "",
        f"Held-out test set ({ev['test'].get('n_images')} images, never seen by the search; 95% percentile "
        f"CI, {resampled(ev['test'])}, {ev['test'].get('n_boot')} resamples):",
        "",
        "| metric | value | 95% CI |",
        "|---|---|---|",
        *[f"| {k} | {_fmt(v['value'])} | {_fmt(v['low'])} – {_fmt(v['high'])} |"
          for k, v in ev["test"]["metrics"].items()],
        "",
        *_operating_markdown(card),
        "## Versions",
        "",
        f"- Trained with Keras backend `{card['versions'].get('training_backend')}`: "
        + ", ".join(f"{k} {v}" for k, v in card["versions"]["training"].items()) + ".",
        "- Exported with: " + ", ".join(f"{k} {v}" for k, v in card["versions"]["export"].items()) + ".",
        "",
        "## Provenance",
        "",
        f"- Run directory: `{card['provenance']['run']}` ({card['provenance'].get('kind')}, study "
        f"`{card['provenance'].get('study')}`)",
        f"- Command: `{card['provenance'].get('command')}`",
        f"- Model sha256: `{m.get('sha256', '?')}`",
        "",
    ]
    return "\n".join(lines)


def _operating_markdown(card: dict[str, Any]) -> list[str]:
    """Calibration and operating points for people (empty for cards without them)."""
    ev = card["evaluation"]
    lines: list[str] = []
    temperature = (ev.get("calibration") or {}).get("temperature")
    note = (ev.get("calibration") or {}).get("note")
    if note:  # a fold ensemble: why it has neither (bench.evaluation.variants.ENSEMBLE_NO_POINTS)
        lines += [f"No operating points or temperature: {note}.", ""]
    if temperature is not None:
        lines += [f"Calibration: temperature {temperature:.3f}, fitted on "
                  f"{ev['calibration'].get('n_fitted_on')} {ev['calibration'].get('fitted_on')} (never on the test "
                  f"set); `ece` uses {ev['calibration'].get('ece_bins')} equal-mass bins.", ""]
    reached = ev.get("operating_points") or []
    if reached:
        lines += ["## Operating points", "",
                  "Thresholds on a class's probability (positive when >=), chosen on the out-of-fold CV predictions "
                  "and applied unchanged to the held-out test set; `bench predict --operating-point NAME` applies "
                  "them.", "",
                  "| point | class | threshold | split | sensitivity (95% CI) | specificity (95% CI) |",
                  "|---|---|---|---|---|---|",
                  *[f"| {r['point']} | {r['class']} | {r['threshold']:.4f} | {r['split']} | "
                    f"{_fmt(r['sensitivity'])} ({_fmt(r['sensitivity_low'])} – {_fmt(r['sensitivity_high'])}) | "
                    f"{_fmt(r['specificity'])} ({_fmt(r['specificity_low'])} – {_fmt(r['specificity_high'])}) |"
                    for r in reached], ""]
    return lines


def write_card(card: dict[str, Any], model_path: Path) -> tuple[Path, Path]:
    json_path, md_path = card_paths(model_path)
    write_text_atomic(json_path, json.dumps(card, indent=2, sort_keys=False, allow_nan=False) + "\n")
    write_text_atomic(md_path, render_markdown(card))
    return json_path, md_path


# ---- export --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    backbone: str
    model: Path
    card_json: Path
    card_md: Path
    card: dict[str, Any]


def export_path(run: RunDir, name: str, out: Path | None) -> Path:
    """``out`` (checked to be a .keras file), by default ``<run>/export/<dataset>-<name>.keras``; its folder made."""
    if out is None:
        dataset = (run.manifest().get("dataset") or {}).get("name", "model")
        out = run.export_dir() / f"{dataset}-{name}.keras"
    out = Path(out)
    if out.suffix != ".keras":
        raise ConfigError(f"--out must end in .keras (the Keras 3 format), got {out}.")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def with_tta(card: dict[str, Any], run: RunDir, backbone: str, base: str, tta: str) -> dict[str, Any]:
    """``card`` for the model predicted under the TTA set ``tta`` (``bench export --tta``): the set and its
    flips recorded (``bench predict`` applies them by default), and the held-out numbers of the variant
    ``bench final --tta`` scored with those very flips, so the card's numbers are the model's as used."""
    if tta == "none":
        return card
    transforms = list(tta_names(tta))
    name = variant_name(base, tta)
    scored = next((e for e in (run.final().get("backbones") or {})[backbone].get("variants") or []
                   if e.get("variant") == name and list(e.get("tta_transforms") or []) == transforms), None)
    if scored is None:
        raise ConfigError(f"--tta {tta}: {run.file('final')} has no held-out score of {backbone} ({base}) under the "
                          f"flips of {tta}, so the card could not say what the model reaches as it will be used. Run "
                          f"`bench final --run {run.path} --backbone {backbone} --tta {tta}` first, or export "
                          f"without --tta.")
    card["tta"] = {"set": tta, "transforms": transforms, "scored_as": name,
                   "note": "bench predict averages the probabilities over these flips unless given --tta none; "
                           "the held-out numbers are those of this variant"}
    card["evaluation"]["test"] = heldout_summary(run, backbone, name)
    card["model"]["binding"] = card_binding(card)
    return card


def export_model(run_dir: Path, *, backbone: str | None = None, out: Path | None = None,
                 tta: str = "none") -> ExportResult:
    """Copy a run's final model to ``out`` (default ``<run>/export/<dataset>-<backbone>.keras``) with its
    card; ``tta``: a TTA set ``bench final --tta`` scored it under, recorded in the card (``with_tta``)."""
    run = RunDir.open(Path(run_dir))
    chosen = select_backbone(run, backbone)
    tta_names(tta)  # a wrong name fails before the copy
    source = verified_run_model(run, chosen)
    out = export_path(run, chosen, out)
    if not (out.exists() and out.resolve() == source.resolve()):
        with atomic_path(out) as tmp:
            shutil.copyfile(source, tmp)
    model = load_model(out)
    card = build_card(run, chosen, out, model)
    n_out = int(model.outputs[0].shape[-1])
    side = tuple(int(d) for d in model.inputs[0].shape[1:3])
    if n_out != len(card["classes"]) or side != (card["preprocessing"]["size"],) * 2:
        raise DataError(f"{source} does not match its run's records ({n_out} outputs for {len(card['classes'])} "
                        f"classes, input {side} for size {card['preprocessing']['size']}): re-run `bench final`.")
    recorded = (run.final().get("backbones") or {})[chosen].get("model_binding")
    if recorded and card["model"].get("binding") != recorded:
        raise DataError(f"{run.file('final')} was edited after `bench final` wrote it: the classes, positive class, "
                        f"backbone, size or resize mode of {chosen!r} no longer match what was recorded with "
                        f"{source}. Re-run `bench final --run {run.path}`.")
    card = with_tta(card, run, chosen, "refit", tta)  # after the check: the recorded binding has no TTA
    json_path, md_path = write_card(card, out)
    return ExportResult(chosen, out, json_path, md_path, card)


def load_model(path: Path) -> Any:
    """Load a saved bench classifier (its Preprocess and RateDropout layers registered first), uncompiled."""
    import keras

    import bench.models.dropout  # noqa: F401  (registers the head's RateDropout layer for deserialisation)
    import bench.models.preprocess  # noqa: F401  (registers the Preprocess layer for deserialisation)

    path = Path(path)
    if not path.is_file():
        raise DataError(f"No model file {path}.")
    if not _is_keras_archive(path):  # Keras itself would say "File not found" for it
        raise DataError(f"{path} is not a Keras model: a .keras file is a zip archive holding config.json and "
                        "the weights, and this one is not. Give the .keras file `bench export` wrote.")
    if _uses_keras_hub(path):  # a ViT: its layers are bench's subclasses of keras-hub's
        from bench.models.hub import keras_hub_layers

        keras_hub_layers("vit", what=f"The model {path}")
    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as err:  # Keras raises ValueError, OSError, zipfile errors ... for a bad file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"Cannot load the Keras model {path}: {reason}.") from err


def _uses_keras_hub(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return b"bench>TransformerLayer" in archive.read("config.json")


def _is_keras_archive(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return "config.json" in archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
