"""The command line: listings, `bench cv` end to end on the demo set, and every user mistake
giving a clear message, a non-zero exit and no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import metrics as M
from bench.cli import main
from bench.results import RunDir
from tests.conftest import write_image

REPO = Path(__file__).resolve().parents[1]


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_datasets_lists_the_registry(capsys):
    code, out, _ = run_main(capsys, "datasets")
    assert code == 0
    for name in ("pneumonia-demo", "gi8", "gi23", "chest4", "gastric-histo"):
        assert name in out
    assert "embedded" in out and "300 found" in out and "CC BY 4.0" in out
    assert "not downloaded" in out  # gi8 is an archive nobody fetched here


def test_offline_flag_lasts_for_its_command_only(capsys, monkeypatch):
    monkeypatch.delenv("BENCH_OFFLINE", raising=False)
    assert main(["datasets", "--offline"]) == 0
    assert "BENCH_OFFLINE" not in os.environ  # a later main() in this process may use the network
    monkeypatch.setenv("BENCH_OFFLINE", "yes")
    assert main(["datasets"]) == 0 and os.environ["BENCH_OFFLINE"] == "yes"


def test_cv_on_the_demo_set_writes_the_run_directory(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, out, err = run_main(
        capsys, "cv", "--dataset", "pneumonia-demo", "--backbone", "simple_cnn", "--weights", "none",
        "--size", "32", "--folds", "3", "--epochs", "2", "--augment", "light", "--out", str(out_dir),
    )
    assert code == 0, err
    assert "mean ± std" in out and "held-out test not used" in out
    run = RunDir.open(out_dir)
    manifest = run.manifest()
    assert manifest["status"] == "complete"
    assert manifest["dataset"]["name"] == "pneumonia-demo" and manifest["dataset"]["images"] == 300
    assert manifest["split"]["test_images"] + manifest["split"]["cv_images"] == 300
    assert manifest["environment"]["backend"] == "tensorflow"
    assert manifest["dataset"]["fingerprint"] and manifest["seeds"]["split"] == 0
    splits = run.table("splits")
    preds = run.table("predictions")
    cv_paths = set(splits.loc[splits.split == "cv", "path"])
    test_paths = set(splits.loc[splits.split == "test", "path"])
    assert set(preds.path) == cv_paths and not (set(preds.path) & test_paths)  # test never scored
    assert len(preds) == len(cv_paths)
    # No patient in two folds, nor in CV and test.
    assert splits.groupby("group").fold.nunique().max() == 1
    # The long-format metrics can be recomputed from the raw predictions.
    metrics = run.table("metrics")
    assert set(metrics.columns) >= {"trial", "fold", "backbone", "split", "metric", "value"}
    for fold, rows in preds.groupby("fold"):
        proba = rows[["p_NORMAL", "p_PNEUMONIA"]].to_numpy()
        again = M.compute_metrics(rows.target.to_numpy(), proba, positive=1)
        stored = metrics[metrics.fold == fold].set_index("metric").value
        for name in ("balanced_accuracy", "auc", "mcc"):
            assert stored[name] == pytest.approx(again[name], abs=1e-9)
    history = run.table("history")
    assert set(history.metric) >= {"loss", "val_loss"} and history.epoch.max() <= 2
    folds = run.table("folds")
    assert list(folds.status) == ["ok"] * 3 and (folds.seconds_fit > 0).all()
    assert json.loads((out_dir / "config.json").read_text())["0"]["backbone"] == "simple_cnn"


def test_cv_takes_a_plain_folder(capsys, make_folder, tmp_path):
    root = make_folder({"benign": 12, "malignant": 12}, size=24)
    code, out, err = run_main(capsys, "cv", "--dataset", str(root), "--backbone", "simple_cnn", "--size", "32",
                              "--folds", "2", "--epochs", "1", "--augment", "none", "--out", str(tmp_path / "r"))
    assert code == 0, err
    assert "benign" in out and "2-fold CV" in out


# ---- user mistakes ---------------------------------------------------------------------------
@pytest.fixture
def bad_folders(tmp_path, make_folder):
    made = {}
    (tmp_path / "empty").mkdir()
    made["empty"] = tmp_path / "empty"
    made["single"] = make_folder({"only": 6}, name="single")
    made["few"] = make_folder({"many": 20, "few": 2}, name="few")
    root = make_folder({"a": 4, "b": 4}, name="manifest_missing")
    (root / "manifest.csv").write_text("path,label\na/p000_a.png,a\na/missing.png,a\nb/p000_b.png,b\n")
    made["missing_file"] = root
    root = make_folder({"a": 4, "b": 4}, name="manifest_outside")
    write_image(tmp_path / "outside.png", 9)
    (root / "manifest.csv").write_text("path,label\na/p000_a.png,a\n../outside.png,b\n")
    made["outside"] = root
    return made


@pytest.mark.parametrize(
    "case, dataset_arg, message",
    [
        ("unknown name", "gi-8", "Unknown dataset 'gi-8'. Did you mean 'gi8'"),
        ("missing folder", "./no/such/folder", "does not exist"),
        ("empty folder", "@empty", "holds no images"),
        ("single class", "@single", "are of one class ('only')"),
        ("class smaller than folds", "@few", "Class 'few' has"),
        ("manifest label with no file", "@missing_file", "names 'a/missing.png', but there is no such file"),
        ("manifest path outside root", "@outside", "lies outside the dataset folder"),
    ],
)
def test_bad_dataset_input_is_a_clear_error(capsys, bad_folders, case, dataset_arg, message):
    if dataset_arg.startswith("@"):
        dataset_arg = str(bad_folders[dataset_arg[1:]])
    code, out, err = run_main(capsys, "cv", "--dataset", dataset_arg, "--backbone", "simple_cnn", "--size", "32",
                              "--folds", "3", "--epochs", "1")
    text = " ".join(err.split())  # rich wraps long lines
    assert code == 2, (case, out, err)
    assert message in text, (case, text)
    assert "Traceback" not in err + out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backbone", "resnet5O"], "resnet50"),
        (["--optimizer", "adma"], "Unknown optimizer 'adma'"),
        (["--augment", "extreme"], "Unknown augmentation policy 'extreme'"),
        (["--unfrozen", "999"], "999"),
        (["--size", "8", "--backbone", "mobilenet_v2"], "32"),
        (["--bn-momentum", "fast"], "--bn-momentum"),
    ],
)
def test_bad_training_values_are_clear_errors(capsys, args, message):
    base = ["cv", "--dataset", "pneumonia-demo", "--size", "32", "--backbone", "simple_cnn", "--folds", "2", "--epochs", "1"]
    code, out, err = run_main(capsys, *base, *args)
    assert code == 2, (out, err)
    assert message in " ".join(err.split())
    assert "Traceback" not in err


def test_a_real_process_exits_non_zero_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bench", "cv", "--dataset", "pneumonia-dem"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "Unknown dataset 'pneumonia-dem'" in proc.stderr and "Traceback" not in proc.stderr


def test_second_identical_cv_decodes_nothing(capsys, tmp_path, monkeypatch):
    args = ["cv", "--dataset", "pneumonia-demo", "--backbone", "simple_cnn", "--size", "32", "--folds", "2",
            "--epochs", "1", "--augment", "none"]
    assert run_main(capsys, *args, "--out", str(tmp_path / "a"))[0] == 0
    from bench.data import images

    def no_decoding(*a, **k):
        raise AssertionError("the second run decoded images")

    monkeypatch.setattr(images, "decode_many", no_decoding)
    monkeypatch.setattr(images, "decode_image", no_decoding)
    code, out, err = run_main(capsys, *args, "--out", str(tmp_path / "b"))
    assert code == 0, err
    assert RunDir.open(tmp_path / "b").manifest()["cache"]["built"] is False
    assert "image cache reused" in out


def test_cv_with_a_failed_fold_exits_non_zero_naming_it_and_keeps_the_others(capsys, tmp_path, monkeypatch):
    # One NaN pixel in fold 2's training images: real Keras training reaches a NaN loss on that fold only.
    from bench.training.train import FoldTrainer

    real_fit = FoldTrainer.fit_fold

    def fit_fold(self, fold, x_train, *rest, **kwargs):
        if fold == 1:
            x_train = np.array(x_train, dtype="float32")
            x_train[0, 0, 0, 0] = np.nan
        return real_fit(self, fold, x_train, *rest, **kwargs)

    monkeypatch.setattr(FoldTrainer, "fit_fold", fit_fold)
    out_dir = tmp_path / "run"
    code, out, err = run_main(
        capsys, "cv", "--dataset", "pneumonia-demo", "--backbone", "simple_cnn", "--weights", "none",
        "--size", "32", "--folds", "3", "--epochs", "1", "--augment", "none", "--out", str(out_dir),
    )
    assert code == 1, out + err
    message = " ".join(err.split())
    assert "1 of 3 folds failed (fold 2: nan_loss at epoch 1" in message and "2 finished fold(s) are kept" in message
    run = RunDir.open(out_dir)
    assert run.manifest()["status"] == "complete_with_failures"
    folds = run.table("folds")
    assert list(folds.status.str.startswith("nan_loss")) == [False, True, False]
    assert sorted(run.table("predictions").fold.unique()) == [0, 2]  # the finished folds' predictions are kept
