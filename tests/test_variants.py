"""Test-time augmentation, fold ensembles and external validation (bench/evaluation/variants.py, bench/evaluation/external.py)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from bench import metrics as M
from bench.errors import DataError


def _tiny_model(seed: int, size: int = 32):
    import keras

    from bench.models.head import build_classifier

    keras.utils.set_random_seed(seed)
    return build_classifier("simple_cnn", 2, size, weights="none").model


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype("uint8")


def _predict(model):
    return lambda x: np.asarray(model.predict(x, verbose=0), dtype="float64")


def test_tta_of_mirror_symmetric_images_is_the_plain_prediction():
    from bench.evaluation.variants import tta_proba

    model = _tiny_model(0)
    half = _images(6)[:, :, :16]
    symmetric = np.concatenate([half, half[:, :, ::-1]], axis=2)  # equal to its horizontal mirror
    assert np.array_equal(symmetric, symmetric[:, :, ::-1])
    plain = _predict(model)(symmetric)
    np.testing.assert_allclose(tta_proba(_predict(model), symmetric, "flip"), plain, atol=1e-6)


def test_tta_flip_is_the_mean_over_the_image_and_its_mirror_and_changes_the_prediction():
    from bench.evaluation.variants import TTA_SETS, tta_proba

    model = _tiny_model(1)
    x = _images(8, seed=3)
    predict = _predict(model)
    plain, mirrored = predict(x), predict(x[:, :, ::-1].copy())
    assert not np.allclose(plain, mirrored, atol=1e-4)  # the test would prove nothing on a flip-blind model
    np.testing.assert_allclose(tta_proba(predict, x, "flip"), (plain + mirrored) / 2, atol=1e-6)
    four = [predict(x), predict(x[:, :, ::-1].copy()), predict(x[:, ::-1].copy()), predict(x[:, ::-1, ::-1].copy())]
    np.testing.assert_allclose(tta_proba(predict, x, "flip-hv"), np.mean(four, axis=0), atol=1e-6)
    assert TTA_SETS["flip"] == ("identity", "hflip")


def test_fold_ensemble_is_the_mean_of_its_members_and_saves_as_one_model(tmp_path):
    from bench.deploy.export import load_model
    from bench.evaluation.variants import ensemble_model, ensemble_proba, load_members

    paths = []
    for k in range(3):
        paths.append(tmp_path / f"m{k}.keras")
        _tiny_model(10 + k).save(paths[-1])
    members = load_members(paths)
    x = _images(10, seed=5)
    each = [_predict(m)(x) for m in members]
    proba = ensemble_proba(members, x)
    np.testing.assert_allclose(proba, np.mean(each, axis=0), atol=1e-12)
    model = ensemble_model(members, name="simple_cnn_classifier")
    model.save(tmp_path / "ensemble.keras")
    loaded = load_model(tmp_path / "ensemble.keras")
    assert loaded.name == "simple_cnn_classifier"  # bench predict reads the backbone from it
    np.testing.assert_allclose(_predict(loaded)(x), proba, atol=1e-5)


def test_paired_difference_is_zero_for_the_same_model_and_the_metric_gap_otherwise():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    good = np.clip(np.eye(2)[y] * 0.6 + rng.uniform(0, 0.4, (60, 2)), 0, None)
    good /= good.sum(1, keepdims=True)
    bad = good.copy()
    bad[:12] = bad[:12, ::-1]  # twelve NORMAL images now called wrong
    groups = np.repeat(np.arange(30), 2)
    same = M.bootstrap_paired_difference(y, good, good, ["balanced_accuracy"], n_boot=200, groups=groups,
                                         unit="patients")["balanced_accuracy"]
    assert (same.value, same.low, same.high) == (0.0, 0.0, 0.0)
    gap = M.bootstrap_paired_difference(y, good, bad, ["balanced_accuracy"], n_boot=200, groups=groups,
                                        unit="patients")["balanced_accuracy"]
    expected = M.compute_metrics(y, good)["balanced_accuracy"] - M.compute_metrics(y, bad)["balanced_accuracy"]
    assert gap.value == pytest.approx(expected) and gap.value > 0
    assert 0 < gap.low <= gap.value <= gap.high
    assert gap.unit == "patients" and gap.n_units == 30


def test_external_classes_must_match_the_runs_by_name_in_any_order():
    from bench.evaluation.external import class_map

    assert class_map(("PNEUMONIA", "NORMAL"), ["NORMAL", "PNEUMONIA"], "x").tolist() == [1, 0]
    with pytest.raises(DataError) as err:
        class_map(("COVID", "NORMAL"), ["NORMAL", "PNEUMONIA"], "--dataset ext")
    text = str(err.value)
    assert "'COVID'" in text and "'PNEUMONIA'" in text and "name the class folders" in text


# ---- on a real run ---------------------------------------------------------------------------------------


def _bench(*argv: str) -> tuple[int, str, str]:
    from bench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_variants_external_and_the_report_on_a_real_run(demo_search, tmp_path):
    """The demo search's run, copied (other tests read the original): bench final with TTA and a fold
    ensemble, the ensemble exported and predicted, bench evaluate on a folder, and the report."""
    from bench.deploy.predict import predict_paths
    from bench.evaluation.variants import ensemble_proba, load_members
    from bench.results import RunDir
    from bench.training.experiment import prepare_data_from_manifest

    run_dir = tmp_path / "run"
    shutil.copytree(demo_search[0], run_dir)
    code, out, err = _bench("final", "--run", str(run_dir), "--backbone", "simple_cnn", "--tta", "flip",
                            "--ensemble", "folds", "--boot", "100")
    assert code == 0, out + err
    run = RunDir.open(run_dir)
    info = run.final()["backbones"]["simple_cnn"]
    assert info["variant"] == "refit"
    variants = {e["variant"]: e for e in info["variants"]}
    assert set(variants) == {"refit+tta", "fold-ensemble", "fold-ensemble+tta"}
    assert variants["refit+tta"]["tta_transforms"] == ["identity", "hflip"]
    assert variants["fold-ensemble"]["members"] == 2
    table = run.table("test_variants")
    assert set(table.variant) == set(variants) and table.vs_refit.notna().any()

    # The fold ensemble's probabilities are the mean of its members' on the held-out images.
    data = prepare_data_from_manifest(run.manifest(), size=32)
    test = data.splits.test
    members = load_members([run_dir / p for p in variants["fold-ensemble"]["member_models"]])
    mean = np.mean([np.asarray(m.predict(data.images[test], verbose=0), dtype="float64") for m in members], axis=0)
    preds = run.table("test_variant_predictions")
    ens = preds[preds.variant == "fold-ensemble"]
    assert list(ens.path) == [data.index.paths[i] for i in np.flatnonzero(test)]
    np.testing.assert_allclose(ens[["p_NORMAL", "p_PNEUMONIA"]].to_numpy(), mean, atol=1e-6)
    np.testing.assert_allclose(ensemble_proba(members, data.images[test]), mean, atol=1e-12)

    # Exported as one model, it reproduces them through bench predict's own decoding.
    code, out, err = _bench("export", "--run", str(run_dir), "--backbone", "simple_cnn", "--ensemble", "folds",
                            "--out", str(tmp_path / "ens.keras"))
    assert code == 0, out + err
    card = json.loads((tmp_path / "ens.card.json").read_text())
    assert card["model"]["ensemble"]["members"] == 2
    assert "ensemble of 2 models" in (tmp_path / "ens.card.md").read_text()
    root = data.index.root
    predicted = predict_paths(tmp_path / "ens.keras", [root / p for p in ens.path])
    np.testing.assert_allclose(predicted.frame[["p_NORMAL", "p_PNEUMONIA"]].to_numpy(), mean, atol=1e-5)

    # An external folder made of the run's own images: scored, and the overlap warned about and recorded.
    ext = tmp_path / "ext-set"
    for label in ("NORMAL", "PNEUMONIA"):
        for src in sorted((root / label).iterdir())[:8]:
            (ext / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, ext / label / src.name)
    code, out, err = _bench("evaluate", "--run", str(run_dir), "--dataset", str(ext), "--boot", "100")
    assert code == 0, out + err
    assert "WARNING" in out and "16 image(s) identical" in out
    folder = run.external_dir("ext-set")
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_images"] == 16 and summary["overlap"]["shared_images"] == 16
    metrics = pd.read_csv(folder / "test_metrics.csv")
    assert list(metrics.columns) == list(run.table("test_metrics").columns)
    assert set(metrics.split) == {"external"} and set(metrics.backbone) == set(run.final()["backbones"])
    ext_preds = pd.read_csv(folder / "test_predictions.csv")
    assert list(ext_preds.columns) == list(run.table("test_predictions").columns)
    assert (folder / "confusion_simple_cnn.csv").is_file()
    code, out, err = _bench("evaluate", "--run", str(run_dir), "--dataset", str(ext), "--drop-overlap")
    assert code == 2 and "no image left" in err

    # A class the run does not know: a clear error, not a traceback.
    (ext / "PNEUMONIA").rename(ext / "COVID")
    code, out, err = _bench("evaluate", "--run", str(run_dir), "--dataset", str(ext))
    assert code == 2 and "'COVID'" in err and "Traceback" not in err

    code, out, err = _bench("report", "--run", str(run_dir), "--out", str(tmp_path / "report"), "--quiet")
    assert code == 0, out + err
    text = (tmp_path / "report" / "index.md").read_text()
    assert "External validation" in text and "CV -> held-out -> external" in text and "external ext-set" in text
    assert "TTA and fold ensembles vs the refit" in text and "| fold-ensemble+tta |" in text
