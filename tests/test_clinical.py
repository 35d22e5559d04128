"""Calibration and operating points through a real tiny search, `bench final`, the report, export and predict."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.metrics.calibration import fit_temperature
from tests.test_export import final_run, run_main  # noqa: F401 (fixture)

CLASSES = ["NORMAL", "PNEUMONIA"]


@pytest.mark.slow
def test_bench_final_calibrates_and_sets_operating_points_on_cv_only(final_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(final_run, run)  # the shared run stays as other tests expect it
    code, out, err = run_main(capsys, "final", "--run", run, "--operating-point", "sens=0.9",
                              "--operating-point", "spec=0.80", "--boot", "200")
    assert code == 0, err
    assert "calibration: temperature" in out and "operating point sens=0.9" in out

    info = json.loads((run / "final.json").read_text())["backbones"]["simple_cnn"]
    trial = info["trial"]
    oof = pd.read_csv(run / "predictions.csv")
    oof = oof[oof.trial == trial]
    p_oof = oof[[f"p_{c}" for c in CLASSES]].to_numpy()
    p_oof /= p_oof.sum(axis=1, keepdims=True)
    # The temperature is the out-of-fold fit, nothing else.
    assert info["calibration"]["temperature"] == pytest.approx(fit_temperature(oof.target.to_numpy(), p_oof))

    calib = pd.read_csv(run / "calibration.csv")
    assert set(zip(calib.split, calib.scaling)) == {("cv", "none"), ("cv", "temperature"), ("test", "none"),
                                                    ("test", "temperature")}
    assert set(calib.metric) == {"ece", "brier", "log_loss"} and set(calib.unit) == {"patients"}

    ops = pd.read_csv(run / "operating_points.csv")
    test = pd.read_csv(run / "test_predictions.csv")
    for t in info["operating_points"]:
        rows = ops[ops.point == t["point"]].set_index("split")
        assert rows.loc["cv", "threshold"] == rows.loc["test", "threshold"] == pytest.approx(t["threshold"])
        rate = "sensitivity" if t["kind"] == "sens" else "specificity"
        assert rows.loc["cv", rate] >= t["target"]
        called = test.p_PNEUMONIA >= t["threshold"]  # applied unchanged to the held-out test
        assert rows.loc["test", "sensitivity"] == pytest.approx(called[test.truth == "PNEUMONIA"].mean())
        assert rows.loc["test", "specificity"] == pytest.approx((~called)[test.truth == "NORMAL"].mean())
        assert rows.loc["test", "unit"] == "patients"
    assert [t["point"] for t in info["operating_points"]] == ["sens=0.9", "spec=0.8"]

    report = tmp_path / "report"
    assert main(["report", "--run", str(run), "--out", str(report), "--quiet"]) == 0
    md = (report / "index.md").read_text()
    assert "simple_cnn: calibration" in md and "ECE (10 equal-mass bins)" in md
    assert "simple_cnn: operating points" in md and "| sens=0.9 | PNEUMONIA |" in md
    assert "temperature-scaled (T = " in md
    assert (report / "figures" / "reliability_pneumonia-demo_simple_cnn.png").is_file()
    assert "Open markers: the operating points" in md  # the ROC figure marks them

    model = tmp_path / "exported" / "m.keras"
    code, out, err = run_main(capsys, "export", "--run", run, "--out", model)
    assert code == 0, err
    card = json.loads(model.with_name("m.card.json").read_text())
    assert card["operating_points"] == info["operating_points"]
    assert "## Operating points" in model.with_name("m.card.md").read_text()

    images = test.head(40)
    root = json.loads((run / "manifest.json").read_text())["dataset"]["root"]
    files = [f"{root}/{p}" for p in images.path]
    default, at_point = tmp_path / "default.csv", tmp_path / "sens.csv"
    assert run_main(capsys, "predict", model, *files, "--csv", default)[0] == 0
    code, out, err = run_main(capsys, "predict", model, *files, "--csv", at_point, "--operating-point", "sens=0.90")
    assert code == 0, err
    threshold = next(t["threshold"] for t in info["operating_points"] if t["point"] == "sens=0.9")
    argmax, thresholded = pd.read_csv(default), pd.read_csv(at_point)
    assert list(argmax.predicted) == [CLASSES[i] for i in argmax[["p_NORMAL", "p_PNEUMONIA"]].to_numpy().argmax(1)]
    expected = np.where(thresholded.p_PNEUMONIA >= threshold, "PNEUMONIA", "NORMAL")
    assert list(thresholded.predicted) == list(expected)
    code, out, err = run_main(capsys, "predict", model, *files, "--operating-point", "spec=0.5")
    assert code == 2 and "sens=0.9, spec=0.8" in err
