"""Every option with every other (issue 22): one small search, then the path a deploying user takes.

`bench final --by backbone,weights --operating-point sens=0.9 --tta flip --ensemble folds`, `bench
evaluate` on a second labelled folder, `bench export` of the refit and of the fold ensemble,
`bench predict --operating-point` with each, and `bench report --strict`: every section is there for
every entry, and each number the report shows is the one in the run directory's CSVs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.test_grouping import _copy_run, _external_set, run_cli, weights_search  # noqa: F401 (the fixture)

pytestmark = pytest.mark.slow  # a 4-trial search, a refit with TTA and a fold ensemble per entry (minutes)


def test_by_operating_point_tta_ensemble_external_export_predict_and_report(weights_search, tmp_path, capsys):  # noqa: F811
    run = _copy_run(weights_search, tmp_path / "run")
    code, _, err = run_cli(capsys, "final", "--run", run, "--by", "backbone,weights", "--operating-point", "sens=0.9",
                           "--tta", "flip", "--ensemble", "folds", "--boot", "50")
    assert code == 0, err
    ext = _external_set(run, tmp_path / "ext")
    code, _, err = run_cli(capsys, "evaluate", "--run", run, "--dataset", ext, "--boot", "50")
    assert code == 0, err
    final = json.loads((run / "final.json").read_text())["backbones"]
    assert len(final) == 2  # simple_cnn from scratch and from a weights file

    # Export both kinds of model of every entry; predict at the CV operating point with each.
    images = [p for label in ("NORMAL", "PNEUMONIA") for p in sorted((ext / label).iterdir())[:2]]
    for key, info in final.items():
        refit, ensemble = tmp_path / f"{key}.keras", tmp_path / f"{key}-ensemble.keras"
        code, _, err = run_cli(capsys, "export", "--run", run, "--backbone", key, "--out", refit)
        assert code == 0, err
        card = json.loads(refit.with_name(f"{key}.card.json").read_text())
        assert [p["point"] for p in card["operating_points"]] == ["sens=0.9"]
        assert card["operating_points"] == info["operating_points"]  # the thresholds the refit's CV chose
        code, _, err = run_cli(capsys, "export", "--run", run, "--backbone", key, "--ensemble", "folds",
                               "--out", ensemble)
        assert code == 0, err
        assert not json.loads(ensemble.with_name(f"{key}-ensemble.card.json").read_text()).get("operating_points")

        csv = tmp_path / f"{key}.csv"
        code, _, err = run_cli(capsys, "predict", refit, *images, "--operating-point", "sens=0.9", "--csv", csv)
        assert code == 0, err
        decided = pd.read_csv(csv)
        threshold = card["operating_points"][0]["threshold"]  # the positive class is PNEUMONIA
        assert len(decided) == len(images)
        assert ((decided.predicted == "PNEUMONIA") == (decided.p_PNEUMONIA >= threshold)).all(), decided
        # The ensemble has no thresholds of its own: refused, saying why, rather than borrowing the refit's.
        code, _, err = run_cli(capsys, "predict", ensemble, *images, "--operating-point", "sens=0.9")
        assert code == 2 and "ensemble" in err
        code, _, err = run_cli(capsys, "predict", ensemble, *images)
        assert code == 0, err

    out = tmp_path / "report"
    code, _, err = run_cli(capsys, "report", "--run", run, "--out", out, "--quiet", "--by", "backbone,weights",
                           "--strict")
    assert code == 0, err
    md = " ".join((out / "index.md").read_text().split())
    variants = pd.read_csv(out / "tables" / "variants_pneumonia-demo.csv")
    run_variants = pd.read_csv(run / "test_variants.csv")
    calibration, points = pd.read_csv(run / "calibration.csv"), pd.read_csv(run / "operating_points.csv")
    external = pd.read_csv(run / "external" / "ext" / "test_metrics.csv")
    for key, info in final.items():
        label, name = info["label"], info["label"].replace(" · ", "-")
        for section in (f"{label}: calibration", f"{label}: operating points",
                        f"pneumonia-demo: {label}: CV -> held-out -> external"):
            assert section in md, section
        mine = variants[variants.entry == key]
        assert set(mine.variant) == {"refit", "refit+tta", "fold-ensemble", "fold-ensemble+tta"}
        for variant in ("refit+tta", "fold-ensemble", "fold-ensemble+tta"):
            recorded = run_variants[(run_variants.entry == key) & (run_variants.variant == variant)
                                    & (run_variants.metric == "balanced_accuracy")].value.iloc[0]
            assert mine[mine.variant == variant].balanced_accuracy.iloc[0] == pytest.approx(recorded)
        calib = pd.read_csv(out / "tables" / f"calibration_pneumonia-demo_{name}.csv")
        rows = calibration[(calibration.entry == key) & (calibration.split == "test") & (calibration.scaling == "none")]
        assert calib[(calib.split == "test") & (calib.scaling == "none")].ece.iloc[0] == pytest.approx(
            rows[rows.metric == "ece"].value.iloc[0])
        ops = pd.read_csv(out / "tables" / f"operating_points_pneumonia-demo_{name}.csv")
        recorded = points[(points.entry == key)].set_index("split")
        assert ops.threshold.iloc[0] == pytest.approx(recorded.loc["test", "threshold"])
        assert ops.test_sensitivity.iloc[0] == pytest.approx(recorded.loc["test", "sensitivity"])
        shown = pd.read_csv(out / "tables" / f"external_pneumonia-demo_{key}.csv").set_index("metric")
        recorded = external[external.entry == key].set_index("metric")
        assert shown.loc["balanced_accuracy", "ext_ext"] == pytest.approx(recorded.loc["balanced_accuracy", "value"])
    # The external set's operating points: the CV thresholds applied there, in its own CSV.
    ext_points = pd.read_csv(run / "external" / "ext" / "operating_points.csv")
    assert set(ext_points.entry) == set(final) and set(ext_points.split) == {"external"}
    for key, info in final.items():
        assert ext_points[ext_points.entry == key].threshold.iloc[0] == pytest.approx(
            info["operating_points"][0]["threshold"])
