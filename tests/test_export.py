"""`bench export` and `bench predict` on a real run (pneumonia demo, simple_cnn, 32 px, 1 epoch)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from tests.test_search import TINY_SPACE

REPO = Path(__file__).resolve().parents[1]
_RUN: dict[str, Path] = {}


def bench_env(home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3",
            "BENCH_CACHE": str(home / "cache"), "BENCH_RUNS": str(home / "runs"), "BENCH_DATA": str(home / "data")}


def make_final_run(factory: pytest.TempPathFactory) -> Path:
    """A search run directory after `bench final`, made once per session by the real CLI."""
    if "run" not in _RUN:
        home = factory.mktemp("final-run")
        space = home / "tiny.toml"
        space.write_text(TINY_SPACE)
        out = home / "run"
        proc = subprocess.run(
            [sys.executable, "-m", "bench", "run", "--dataset", "pneumonia-demo", "--space", str(space),
             "--trials", "1", "--folds", "2", "--pruner", "none", "--out", str(out)],
            env=bench_env(home), capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert (out / "models" / "simple_cnn.keras").is_file()
        _RUN["run"] = out
    return _RUN["run"]


@pytest.fixture(scope="session")
def final_run(tmp_path_factory) -> Path:
    return make_final_run(tmp_path_factory)


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


def heldout_images(run: Path, n_per_class: int | None = None) -> pd.DataFrame:
    """The run's held-out test predictions, with absolute image paths."""
    frame = pd.read_csv(run / "test_predictions.csv")
    root = Path(json.loads((run / "manifest.json").read_text())["dataset"]["root"])
    frame["file"] = [str(root / p) for p in frame.path]
    if n_per_class:
        frame = frame.groupby("truth", group_keys=False).head(n_per_class)
    return frame.reset_index(drop=True)


def class_folder(frame: pd.DataFrame, dest: Path) -> Path:
    for row in frame.itertuples():
        (dest / row.truth).mkdir(parents=True, exist_ok=True)
        shutil.copy(row.file, dest / row.truth / Path(row.file).name)
    return dest


@pytest.fixture
def exported(final_run, tmp_path, capsys) -> Path:
    model = tmp_path / "exported" / "winner.keras"
    code, out, err = run_main(capsys, "export", "--run", final_run, "--out", model)
    assert code == 0, err
    return model


def test_export_writes_the_final_model_and_its_card(final_run, exported, tmp_path, capsys):
    source = final_run / "models" / "simple_cnn.keras"
    assert exported.read_bytes() == source.read_bytes()  # the very model scored on the held-out test
    card_json, card_md = exported.with_name("winner.card.json"), exported.with_name("winner.card.md")
    card = json.loads(card_json.read_text())
    assert card["classes"] == ["NORMAL", "PNEUMONIA"] and card["positive_class"] == "PNEUMONIA"
    assert card["preprocessing"]["size"] == 32 and card["preprocessing"]["resize"] == "squash"
    assert card["preprocessing"]["in_model"] == "tf"
    assert card["model"]["backbone"] == "simple_cnn" and card["model"]["params"] > 0
    assert card["model"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert card["dataset"]["license"] == "CC BY 4.0" and "Kermany" in card["dataset"]["citation"]
    assert card["training"]["config"]["size"] == 32 and card["training"]["config"]["epochs"] == 1
    cv = card["evaluation"]["cv"]
    assert cv["folds"] == 2 and cv["n_images"] == 240
    assert 0 <= cv["metrics"]["balanced_accuracy"]["mean"] <= 1
    test = card["evaluation"]["test"]
    assert test["n_images"] == 60 and test["n_boot"] == 1000
    assert test["unit"] == "patients" and test["n_units"] == 40  # the demo's 60 test images: 40 patients
    ba = test["metrics"]["balanced_accuracy"]
    assert ba["low"] <= ba["value"] <= ba["high"]
    assert "keras" in card["versions"]["training"] and "keras" in card["versions"]["export"]
    # The card's account of the refit is the record bench final wrote, not a belief about the code.
    record = json.loads((final_run / "final.json").read_text())["backbones"]["simple_cnn"]
    refit = card["training"]["refit"]
    assert (f"refit on {record['n_train']} images of the cross-validation pool" in refit
            and f"for {record['refit_epochs']} epoch(s) of at most 1" in refit
            and f"an inner split of {record['n_inner_val']} other pool images" in refit), refit
    assert "median" not in refit and "all training images" not in refit
    text = card_md.read_text()
    assert refit in " ".join(text.split())
    for needle in ("CC BY 4.0", "Kermany", "32 × 32 px", "squash", "95% CI", "bootstrap over 40 patients",
                   "balanced_accuracy", "keras 3."):
        assert needle in text, needle
    # The default destination is inside the run directory.
    code, out, _ = run_main(capsys, "export", "--run", final_run)
    assert code == 0 and "bootstrap over 40 patients" in " ".join(out.split())
    assert (final_run / "export" / "pneumonia-demo-simple_cnn.keras").is_file()
    assert (final_run / "export" / "pneumonia-demo-simple_cnn.card.md").is_file()


def test_exported_model_predicts_identically_in_a_fresh_process(final_run, exported, tmp_path):
    images = heldout_images(final_run, n_per_class=8)
    folder = class_folder(images, tmp_path / "images")
    out_csv = tmp_path / "pred.csv"
    home = tmp_path / "home"
    proc = subprocess.run([sys.executable, "-m", "bench", "predict", str(exported), str(folder), "--csv", str(out_csv)],
                          env=bench_env(home), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "metrics on 16 labelled image(s)" in proc.stdout
    got = pd.read_csv(out_csv)
    got["name"] = [Path(p).name for p in got.path]
    want = images.assign(name=[Path(p).name for p in images.file]).set_index("name").loc[got.name]
    # The same probabilities `bench final` computed in training's process from the image cache.
    for c in ("NORMAL", "PNEUMONIA"):
        np.testing.assert_allclose(got[f"p_{c}"].to_numpy(), want[f"p_{c}"].to_numpy(), rtol=0, atol=1e-6)
    assert list(got.predicted) == [("NORMAL", "PNEUMONIA")[int(p > 0.5)] for p in want.p_PNEUMONIA]
    assert list(got.truth) == list(want.truth)
    # And the same as this process gets from the exported file.
    from bench.deploy.predict import predict_paths

    here = predict_paths(exported, [folder]).frame
    assert list(here.path) == list(got.path)
    np.testing.assert_array_equal(here.p_PNEUMONIA.to_numpy(), got.p_PNEUMONIA.to_numpy())


def test_predict_lists_a_corrupt_image_and_writes_the_rest(final_run, exported, tmp_path, capsys):
    images = heldout_images(final_run, n_per_class=3)
    folder = class_folder(images, tmp_path / "images")
    good = next((folder / "PNEUMONIA").iterdir())
    (folder / "PNEUMONIA" / "broken.jpeg").write_bytes(good.read_bytes()[:300])  # truncated JPEG
    (folder / "NORMAL" / "empty.png").write_bytes(b"")
    (folder / "NORMAL" / "notes.txt").write_text("not an image, ignored")
    out_csv = tmp_path / "out" / "pred.csv"
    code, out, err = run_main(capsys, "predict", exported, folder, "--csv", out_csv)
    assert code == 0, err
    assert "2 unreadable image(s) skipped" in err
    assert "broken.jpeg" in err and "empty.png" in err and "empty (0 bytes)" in err
    frame = pd.read_csv(out_csv)
    assert len(frame) == 6 and not frame.path.str.contains("broken|empty|notes").any()
    assert list(frame.columns) == ["path", "truth", "predicted", "confidence", "p_NORMAL", "p_PNEUMONIA"]
    np.testing.assert_allclose(frame.p_NORMAL + frame.p_PNEUMONIA, 1.0, atol=1e-5)
    assert "metrics on 6 labelled image(s)" in out and "balanced accuracy" in out


def test_predict_single_files_without_labels(final_run, exported, tmp_path, capsys):
    images = heldout_images(final_run, n_per_class=1)
    code, out, err = run_main(capsys, "predict", exported, *images.file, tmp_path / "missing.png")
    assert code == 0, err
    assert "missing.png: no such file or folder" in err
    assert "metrics on" not in out and "predicted: NORMAL" in out


def test_predict_reads_a_run_model_without_exporting(final_run, tmp_path, capsys):
    images = heldout_images(final_run, n_per_class=2)
    code, out, err = run_main(capsys, "predict", final_run / "models" / "simple_cnn.keras", *images.file,
                              "--csv", tmp_path / "p.csv")
    assert code == 0, err
    frame = pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(frame.p_PNEUMONIA, images.p_PNEUMONIA, atol=1e-6)


def test_predict_and_export_errors_are_clear(final_run, exported, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes(b"garbage")
    code, _, err = run_main(capsys, "predict", exported, bad)
    assert code == 2 and "None of the 1 image file(s) could be read" in err and "Traceback" not in err

    lonely = tmp_path / "lonely.keras"
    shutil.copy(exported, lonely)
    code, _, err = run_main(capsys, "predict", lonely, bad)
    assert code == 2 and "No model card beside" in err and "bench export" in err

    code, _, err = run_main(capsys, "export", "--run", final_run, "--backbone", "resnet50")
    assert code == 2 and "no final model for backbone 'resnet50'" in err and "simple_cnn" in err

    code, _, err = run_main(capsys, "export", "--run", final_run, "--out", tmp_path / "model.h5")
    assert code == 2 and "must end in .keras" in err

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(final_run / "manifest.json", unfinished / "manifest.json")
    code, _, err = run_main(capsys, "export", "--run", unfinished)
    assert code == 2 and "bench final" in err


def test_the_winner_is_chosen_by_cross_validation_not_by_the_test_set(tmp_path):
    from bench.deploy.export import select_backbone
    from bench.errors import DataError
    from bench.results import RunDir

    run = RunDir.create(tmp_path, "ds", out=tmp_path / "run")
    run.write_manifest({"kind": "search", "objective": {"metric": "balanced_accuracy", "direction": "maximize"}})
    with pytest.raises(DataError, match="bench final"):
        select_backbone(run)
    cv = {"vgg16": (0, 0.70), "resnet50": (1, 0.80)}  # resnet50 is better in CV ...
    test = {"vgg16": 0.95, "resnet50": 0.60}  # ... and worse on the held-out test
    for backbone, (trial, value) in cv.items():
        for fold in range(2):
            run.append_fold(trial=trial, fold=fold, backbone=backbone, status="ok", info={"n_val": 10},
                            metrics={"balanced_accuracy": value}, predictions=None, history={})
        run.write_final_backbone(
            backbone, {"trial": trial, "classes": ["a", "b"], "size": 32, "config": {}},
            [{"backbone": backbone, "trial": trial, "split": "test", "metric": "balanced_accuracy",
              "value": test[backbone], "low": 0.5, "high": 1.0, "n_images": 20, "n_boot": 100}],
            pd.DataFrame({"backbone": [backbone], "path": ["x.png"]}))
    assert select_backbone(run) == "resnet50"
    assert select_backbone(run, "vgg16") == "vgg16"
    run.update_manifest(objective={"metric": "balanced_accuracy", "direction": "minimize"})
    assert select_backbone(run) == "vgg16"
