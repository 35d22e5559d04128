"""What a refit's choices carry over to: its CV operating points and temperature on an external set
(`bench evaluate`), a fold ensemble's card (no borrowed thresholds), and test-time augmentation in
`bench evaluate`, `bench export` and `bench predict` (the flips `bench final --tta` scored)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.test_export import class_folder, final_run, heldout_images  # noqa: F401 (fixture)

CLASSES = ["NORMAL", "PNEUMONIA"]


def _bench(*argv: object) -> tuple[int, str, str]:
    from bench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), " ".join(err.getvalue().split())


@pytest.fixture(scope="module")
def scored_run(final_run, tmp_path_factory) -> tuple[Path, Path]:
    """The shared run, copied, after `bench final` with an operating point, TTA and a fold ensemble;
    and an "external" class folder of 8 held-out images per class."""
    home = tmp_path_factory.mktemp("carry-over")
    run = home / "run"
    shutil.copytree(final_run, run)
    code, out, err = _bench("final", "--run", run, "--operating-point", "sens=0.9", "--tta", "flip",
                            "--ensemble", "folds", "--boot", "50")
    assert code == 0, out + err
    ext = class_folder(heldout_images(run, 8), home / "ext")
    return run, ext


def _plain_and_flipped(model_path: Path, files: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The model's probabilities on the decoded images and on their horizontal mirrors, computed here."""
    from bench.data.images import decode_many
    from bench.deploy.export import load_model

    x, _ = decode_many(files, 32, "squash")
    model = load_model(model_path)
    return (np.asarray(model.predict(x, verbose=0), dtype="float64"),
            np.asarray(model.predict(x[:, :, ::-1].copy(), verbose=0), dtype="float64"))


@pytest.mark.slow
def test_evaluate_applies_the_runs_cv_operating_points_and_temperature_to_the_external_set(scored_run, tmp_path):
    run, ext = scored_run
    code, out, err = _bench("evaluate", "--run", run, "--dataset", ext, "--boot", "50")
    assert code == 0, out + err
    assert "external at operating point sens=0.9" in out
    info = json.loads((run / "final.json").read_text())["backbones"]["simple_cnn"]
    (t,) = info["operating_points"]
    folder = run / "external" / "ext"
    preds = pd.read_csv(folder / "test_predictions.csv")
    ops = pd.read_csv(folder / "operating_points.csv")
    assert list(ops.columns) == list(pd.read_csv(run / "operating_points.csv").columns)
    (row,) = ops.to_dict(orient="records")
    assert row["split"] == "external" and row["threshold"] == pytest.approx(t["threshold"])  # CV's, unchanged
    called = preds.p_PNEUMONIA >= t["threshold"]
    assert row["sensitivity"] == pytest.approx(called[preds.truth == "PNEUMONIA"].mean())
    assert row["specificity"] == pytest.approx((~called)[preds.truth == "NORMAL"].mean())
    assert row["sensitivity_low"] <= row["sensitivity"] <= row["sensitivity_high"]
    calib = pd.read_csv(folder / "calibration.csv")
    scaled = calib[calib.scaling == "temperature"]
    assert set(calib.split) == {"external"} and set(scaled.metric) == {"ece", "brier", "log_loss"}
    assert scaled.temperature.iloc[0] == pytest.approx(info["calibration"]["temperature"])

    code, out, err = _bench("report", "--run", run, "--out", tmp_path / "report", "--quiet")
    assert code == 0, out + err
    text = (tmp_path / "report" / "index.md").read_text()
    line = next(x for x in text.splitlines() if x.startswith("| sensitivity at sens=0.9 (PNEUMONIA)"))
    assert f"{row['sensitivity']:.3f} [" in line  # the external column beside CV's and the held-out's
    assert "| ece, temperature-scaled |" in text


@pytest.mark.slow
def test_fold_ensemble_card_has_no_borrowed_thresholds_and_predict_refuses_an_operating_point(scored_run, tmp_path):
    run, ext = scored_run
    model = tmp_path / "ens.keras"
    code, out, err = _bench("export", "--run", run, "--ensemble", "folds", "--out", model)
    assert code == 0, out + err
    card = json.loads(model.with_name("ens.card.json").read_text())
    assert card["operating_points"] == [] and card["evaluation"]["operating_points"] == []
    assert card["evaluation"]["calibration"]["temperature"] is None
    assert "out-of-fold" in card["evaluation"]["calibration"]["note"]
    assert "No operating points or temperature" in model.with_name("ens.card.md").read_text()
    code, out, err = _bench("predict", model, ext, "--operating-point", "sens=0.9")
    assert code == 2 and "ensemble of 2 fold models" in err and "Traceback" not in err
    assert _bench("predict", model, ext)[0] == 0  # argmax still works (and the card still verifies)


@pytest.mark.slow
def test_tta_in_evaluate_export_and_predict_is_the_flips_bench_final_scored(scored_run, tmp_path):
    run, ext = scored_run
    code, out, err = _bench("evaluate", "--run", run, "--dataset", ext, "--boot", "50", "--tta", "flip")
    assert code == 0, out + err
    folder = run / "external" / "ext"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["tta"] == {"set": "flip", "transforms": ["identity", "hflip"]}
    assert not (folder / "operating_points.csv").exists()  # chosen on plain predictions: not applied
    preds = pd.read_csv(folder / "test_predictions.csv")
    files = [str(ext / p) for p in preds.path]
    plain, flipped = _plain_and_flipped(run / "models" / "simple_cnn.keras", files)
    assert not np.allclose(plain, flipped, atol=1e-4)  # else the check below proves nothing
    np.testing.assert_allclose(preds[[f"p_{c}" for c in CLASSES]].to_numpy(), (plain + flipped) / 2, atol=1e-5)

    model = tmp_path / "tta.keras"
    code, out, err = _bench("export", "--run", run, "--tta", "flip", "--out", model)
    assert code == 0, out + err
    card = json.loads(model.with_name("tta.card.json").read_text())
    assert card["tta"]["transforms"] == ["identity", "hflip"] and card["tta"]["scored_as"] == "refit+tta"
    variants = pd.read_csv(run / "test_variants.csv")
    scored = variants[(variants.variant == "refit+tta") & (variants.metric == "auc")].value.iloc[0]
    assert card["evaluation"]["test"]["metrics"]["auc"]["value"] == pytest.approx(scored)
    by_card, plain_csv = tmp_path / "card.csv", tmp_path / "plain.csv"
    code, out, err = _bench("predict", model, *files, "--csv", by_card)
    assert code == 0 and "recorded in the model card" in out, out + err
    assert _bench("predict", model, *files, "--csv", plain_csv, "--tta", "none")[0] == 0
    cols = [f"p_{c}" for c in CLASSES]
    np.testing.assert_allclose(pd.read_csv(by_card)[cols].to_numpy(), (plain + flipped) / 2, atol=1e-5)
    np.testing.assert_allclose(pd.read_csv(plain_csv)[cols].to_numpy(), plain, atol=1e-5)
    code, out, err = _bench("predict", model, *files, "--operating-point", "sens=0.9")
    assert code == 2 and "--tta none" in err
    code, out, err = _bench("export", "--run", run, "--tta", "flip-hv", "--out", tmp_path / "hv.keras")
    assert code == 2 and "bench final --run" in err and "--tta flip-hv" in err
