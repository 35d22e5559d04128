"""`bench run --engine kerastuner`: the same space, folds and records as the Optuna engine.

Real searches on the demo X-rays (simple_cnn, 32 px, 2 folds) for what needs training; the
bookkeeping (failures, interruptions, budgets, refusals) with a stand-in for ``cross_validate``
that writes the same fold records without training.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import bench.training.experiment
from bench.cli import main
from bench.results import RunDir
from bench.search.objective import trial_seed
from bench.training.experiment import FoldScore, prepare_data

TINY_SPACE = """
name = "tiny"
[objective]
metric = "balanced_accuracy"
[params]
backbone = "simple_cnn"
weights = "none"
size = 32
epochs = {epochs}
augment = "none"
[params.lr]
type = "float"
low = 1e-4
high = 1e-2
log = true
"""


def space_file(tmp_path: Path, epochs: int = 2) -> Path:
    path = tmp_path / f"tiny{epochs}.toml"
    path.write_text(TINY_SPACE.format(epochs=epochs))
    return path


def kt_args(space: Path, out: Path, trials: int, tuner: str = "random", *extra: str) -> list[str]:
    return ["run", "--dataset", "pneumonia-demo", "--space", str(space), "--trials", str(trials), "--folds", "2",
            "--engine", "kerastuner", "--tuner", tuner, "--out", str(out), "--no-final", *extra]


def trials_table(out: Path) -> pd.DataFrame:
    return RunDir.open(out).table("trials")


# ---- real training ------------------------------------------------------------------------------


@pytest.mark.slow  # 20-30 s of real searches or processes: CI runs it with the slow suite
def test_random_search_writes_the_optuna_records_on_the_same_folds_and_resumes(tmp_path, capsys):
    space, out = space_file(tmp_path), tmp_path / "run"
    assert main(kt_args(space, out, 3)) == 0
    text = capsys.readouterr().out
    assert "Best trial per backbone on pneumonia-demo" in text and "simple_cnn" in text
    assert "3 complete, 0 pruned, 0 failed" in text and "KerasTuner random" in text

    run = RunDir.open(out)
    trials = run.table("trials")
    assert list(trials.number) == [0, 1, 2]
    assert set(trials.state) == {"COMPLETE"} and set(trials.engine) == {"kerastuner"}
    assert trials.value.between(0, 1).all() and (trials.seconds > 0).all() and set(trials.backbone) == {"simple_cnn"}
    configs = run.configs()
    assert set(configs) == {0, 1, 2}
    for n, config in configs.items():
        assert config["seed"] == trial_seed(0, n) and config["epochs"] == 2 and config["size"] == 32
        assert json.loads(trials.set_index("number").params[n]) == config
    assert len({c["lr"] for c in configs.values()}) == 3 and all(1e-4 <= c["lr"] <= 1e-2 for c in configs.values())

    # The same folds as the Optuna engine: the same prepare_data call gives the same splits.
    reference = prepare_data("pneumonia-demo", folds=2, seed=0, size=32)
    splits = run.table("splits")
    assert list(splits.path) == list(reference.index.paths)
    assert list(splits.fold) == list(reference.splits.fold)
    assert list(splits.split == "test") == list(reference.splits.test)
    cv_paths = set(splits.loc[splits.split == "cv", "path"])

    # One prediction per CV image per trial, none for the held-out test images.
    preds = run.table("predictions")
    assert len(preds) == 3 * len(cv_paths)
    for _, rows in preds.groupby("trial"):
        assert sorted(rows.path) == sorted(cv_paths)
    # The trial's value is the mean of its folds' objective, as in the Optuna engine.
    metrics = run.table("metrics")
    for row in trials.itertuples():
        folds = metrics[(metrics.trial == row.number) & (metrics.metric == "balanced_accuracy")].value
        assert len(folds) == 2 and row.value == pytest.approx(folds.mean())

    manifest = run.manifest()
    assert manifest["kind"] == "search" and manifest["engine"] == "kerastuner" and manifest["tuner"] == "random"
    assert manifest["dataset"]["name"] == "pneumonia-demo" and manifest["dataset_arg"] == "pneumonia-demo"
    assert manifest["split"]["digest"] == reference.splits_digest and manifest["folds"] == 2
    assert manifest["objective"] == {"metric": "balanced_accuracy", "direction": "maximize"}
    assert manifest["status"] == "complete" and manifest["environment"]["backend"] == "tensorflow"
    assert (out / "kerastuner" / "oracle.json").is_file()

    # The same command with --trials 4 adds exactly one trial; earlier records stay as they were.
    assert main(kt_args(space, out, 4)) == 0
    again = trials_table(out)
    assert list(again.number) == [0, 1, 2, 3] and set(again.state) == {"COMPLETE"}
    pd.testing.assert_frame_equal(again.iloc[:3].drop(columns="host"), trials.drop(columns="host"))
    assert set(RunDir.open(out).configs()) == {0, 1, 2, 3}
    assert len(RunDir.open(out).table("predictions")) == 4 * len(cv_paths)
    capsys.readouterr()
    assert main(kt_args(space, out, 4)) == 0
    assert "nothing to run" in capsys.readouterr().out
    assert len(trials_table(out)) == 4 and len(RunDir.open(out).manifest()["sessions"]) == 3


@pytest.mark.slow  # over 30 s on 2 cores: CI runs it with the slow suite
def test_hyperband_trains_tuner_epochs_and_stops_at_the_budget(tmp_path, capsys):
    # max_epochs 3, factor 3: a bracket of 3 one-epoch trials, then the best at 3 epochs; then
    # a new bracket. --trials 4 must stop it after exactly four.
    space, out = space_file(tmp_path, epochs=3), tmp_path / "hb"
    assert main(kt_args(space, out, 4, "hyperband")) == 0
    trials = trials_table(out)
    assert list(trials.number) == [0, 1, 2, 3] and set(trials.state) == {"COMPLETE"}
    configs = RunDir.open(out).configs()
    assert [configs[n]["epochs"] for n in range(4)] == [1, 1, 1, 3]
    history = RunDir.open(out).table("history")
    trained = history[history.metric == "loss"].groupby(["trial", "fold"]).epoch.max()
    assert all(trained[(n, f)] <= configs[n]["epochs"] for n, f in trained.index)
    assert trained[(3, 0)] > 1  # the round-2 trial really trained beyond one epoch
    state = json.loads((out / "kerastuner" / "trial_3" / "trial.json").read_text())
    assert state["hyperparameters"]["values"]["tuner/epochs"] == 3
    # Its configuration is the best of the three one-epoch trials, retrained.
    best = trials.iloc[:3].sort_values("value").number.iloc[-1]
    assert configs[3]["lr"] == configs[best]["lr"]
    manifest = RunDir.open(out).manifest()
    assert manifest["tuner"] == "hyperband" and manifest["kerastuner"]["max_epochs"] == 3
    assert out.name == "hb" and "KerasTuner hyperband" in capsys.readouterr().out


@pytest.mark.slow  # 20-30 s of real searches or processes: CI runs it with the slow suite
def test_default_run_directory_is_named_after_the_tuner_and_ends_with_the_test_set(tmp_path, isolated_dirs, capsys):
    space = space_file(tmp_path)
    code = main(["run", "--dataset", "pneumonia-demo", "--space", str(space), "--trials", "1", "--folds", "2",
                 "--engine", "kerastuner", "--tuner", "bayesian"])
    assert code == 0
    run_dir = isolated_dirs / "runs" / "pneumonia-demo" / "pneumonia-demo-tiny-kerastuner-bayesian"
    run = RunDir.open(run_dir)
    assert run.manifest()["tuner"] == "bayesian"
    assert list(trials_table(run_dir).state) == ["COMPLETE"]
    # Without --no-final the search ends, as the Optuna engine's, with the held-out evaluation.
    assert "Held-out evaluation" in capsys.readouterr().out
    final = run.final()["backbones"]
    assert list(final) == ["simple_cnn"] and final["simple_cnn"]["trial"] == 0
    assert (run_dir / final["simple_cnn"]["model"]).is_file()


# ---- bookkeeping, without training --------------------------------------------------------------


def fake_cross_validate(fail: dict[int, BaseException | str] | None = None):
    """A stand-in for ``cross_validate``: the same fold records, a score from the learning rate.

    ``fail[trial]`` is raised, or, if a string, becomes the first fold's status (e.g. a NaN loss).
    """
    fail = fail or {}

    def cross_validate(data, config, run, *, trial=0, on_fold=None, on_epoch=None, stop_after_fold=None):
        problem = fail.get(trial)
        if isinstance(problem, BaseException):
            raise problem
        scores = []
        for k in range(data.splits.folds):
            status = problem if (isinstance(problem, str) and k == 0) else "ok"
            value = 0.5 + 0.1 * (math.log10(config.lr) + 4) + 0.01 * k
            metrics = {} if status != "ok" else {m: value for m in (
                "accuracy", "balanced_accuracy", "macro_f1", "auc", "sensitivity", "specificity", "mcc")}
            info = {"epochs_run": config.epochs, "n_val": 10, "seconds_per_epoch": 0.5, "images_per_second": 100.0,
                    "total_params": 1234, "trainable_params": 1234}
            run.append_fold(trial=trial, fold=k, backbone=config.backbone, status=status, info=info,
                            metrics=metrics, predictions=None, history={})
            score = FoldScore(k, status, metrics, info)
            scores.append(score)
            if on_fold:
                on_fold(score)
            if stop_after_fold and stop_after_fold(score):
                break
        return scores

    return cross_validate


def test_failed_trials_are_fail_rows_and_do_not_use_the_budget(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.training.experiment, "cross_validate", fake_cross_validate(
        {1: RuntimeError("out of memory (simulated)"), 2: "nan_loss at epoch 1 batch 3"}))
    space, out = space_file(tmp_path), tmp_path / "run"
    assert main(kt_args(space, out, 2)) == 0
    trials = trials_table(out).set_index("number")
    assert list(trials.index) == [0, 1, 2, 3]
    assert list(trials.state) == ["COMPLETE", "FAIL", "FAIL", "COMPLETE"]
    assert trials.fail_reason[1] == "RuntimeError: out of memory (simulated)"
    assert trials.fail_reason[2] == "fold 1: nan_loss at epoch 1 batch 3"
    assert trials.value.isna().tolist() == [False, True, True, False]
    text = capsys.readouterr().out
    assert "2 complete, 0 pruned, 2 failed" in text and "out of memory (simulated)" in text
    folds = RunDir.open(out).table("folds")
    assert list(folds[folds.trial == 2].status) == ["nan_loss at epoch 1 batch 3"]  # stopped after the bad fold


def test_a_search_where_every_trial_fails_is_not_a_success(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.training.experiment, "cross_validate",
                        fake_cross_validate({n: ValueError("broken") for n in range(10)}))
    space, out = space_file(tmp_path), tmp_path / "run"
    assert main(kt_args(space, out, 2, "random", "--max-failures", "3")) == 1
    trials = trials_table(out)
    assert list(trials.state) == ["FAIL"] * 3 and "COMPLETE" not in set(trials.state)
    assert RunDir.open(out).manifest()["status"] == "stopped"
    assert "--max-failures 3 reached" in capsys.readouterr().out


def test_a_missing_module_stops_the_search_with_its_name(tmp_path, monkeypatch, capsys):
    missing = ModuleNotFoundError("No module named 'tensorboard'", name="tensorboard")
    monkeypatch.setattr(bench.training.experiment, "cross_validate", fake_cross_validate({0: missing}))
    space, out = space_file(tmp_path), tmp_path / "run"
    assert main(kt_args(space, out, 3)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "tensorboard" in err and "pip install tensorboard" in err and "Traceback" not in err
    trials = trials_table(out)
    assert list(trials.state) == ["FAIL"] and "tensorboard" in trials.fail_reason[0]


def test_interrupted_trials_are_failed_and_the_search_continues(tmp_path, monkeypatch, capsys):
    space, out = space_file(tmp_path), tmp_path / "run"
    # Ctrl-C during trial 1: recorded as failed at once, exit 130.
    monkeypatch.setattr(bench.training.experiment, "cross_validate", fake_cross_validate({1: KeyboardInterrupt()}))
    assert main(kt_args(space, out, 3)) == 130
    assert list(trials_table(out).state) == ["COMPLETE", "FAIL"]
    assert RunDir.open(out).manifest()["status"] == "interrupted"

    # Killed during trial 2 (nothing recorded by this process): KerasTuner's state has it running.
    class Killed(BaseException):
        pass

    monkeypatch.setattr(bench.training.experiment, "cross_validate", fake_cross_validate({2: Killed()}))
    with pytest.raises(Killed):
        main(kt_args(space, out, 3))
    assert len(trials_table(out)) == 2

    # The same command again: trial 2 becomes a FAIL row, new trials get new numbers.
    monkeypatch.setattr(bench.training.experiment, "cross_validate", fake_cross_validate())
    assert main(kt_args(space, out, 3)) == 0
    trials = trials_table(out).set_index("number")
    assert list(trials.state) == ["COMPLETE", "FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    assert "interrupted by the user" in trials.fail_reason[1] and "interrupted" in trials.fail_reason[2]
    folds = RunDir.open(out).table("folds")
    assert folds.groupby(["trial", "fold"]).size().max() == 1  # no trial number was reused


def test_resume_refuses_another_setup(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.training.experiment, "cross_validate", fake_cross_validate())
    space, out = space_file(tmp_path), tmp_path / "run"
    assert main(kt_args(space, out, 1)) == 0
    capsys.readouterr()
    assert main(kt_args(space, out, 2, "hyperband")) == 2
    assert "tuner: search has 'random'" in " ".join(capsys.readouterr().err.split())
    assert main([*kt_args(space, out, 2), "--seed", "1"]) == 2
    assert "seed" in capsys.readouterr().err
    space.write_text(TINY_SPACE.format(epochs=2).replace("high = 1e-2", "high = 2e-2"))
    assert main(kt_args(space, out, 2)) == 2
    assert "space_fingerprint" in capsys.readouterr().err
    assert len(trials_table(out)) == 1


@pytest.mark.parametrize("extra, message", [
    (("--jobs", "2"), "--jobs"),
    (("--sampler", "random"), "--sampler/--pruner"),
    (("--pruner", "median"), "--sampler/--pruner"),  # a pruner other than the default (none)
    (("--trial-timeout", "60"), "--trial-timeout"),
    (("--storage", "journal:x.log"), "--storage"),
])
def test_optuna_only_options_are_refused(tmp_path, capsys, extra, message):
    assert main([*kt_args(space_file(tmp_path), tmp_path / "run", 1), *extra]) == 2
    err = capsys.readouterr().err
    assert "Not available with --engine kerastuner" in err and message in err
    assert not (tmp_path / "run").exists()


def test_unknown_tuner_is_a_clear_error(tmp_path, capsys):
    assert main(kt_args(space_file(tmp_path), tmp_path / "run", 1, "hyperbnd")) == 2
    err = capsys.readouterr().err
    assert "--tuner must be one of hyperband, bayesian, random" in err and "hyperband" in err


def test_a_space_exhausted_before_the_budget_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench.training.experiment, "cross_validate", fake_cross_validate())
    space = tmp_path / "two.toml"
    space.write_text(TINY_SPACE.format(epochs=1).split("[params.lr]")[0] + "[params.lr]\ntype = \"categorical\"\n"
                     "choices = [1e-3, 1e-2]\n")
    out = tmp_path / "run"
    assert main(kt_args(space, out, 5)) == 0
    assert len(trials_table(out)) == 2 and RunDir.open(out).manifest()["status"] == "exhausted"
    assert "no untried configuration left" in capsys.readouterr().out
    assert np.isfinite(trials_table(out).value).all()


def test_a_lost_kerastuner_project_is_not_silently_restarted(tmp_path, monkeypatch, capsys):
    import shutil

    monkeypatch.setattr(bench.training.experiment, "cross_validate", fake_cross_validate())
    space, out = space_file(tmp_path), tmp_path / "run"
    assert main(kt_args(space, out, 1)) == 0
    shutil.rmtree(out / "kerastuner")  # trial numbers would start again at 0, next to trial 0's records
    assert main(kt_args(space, out, 2)) == 2
    assert "does not know" in " ".join(capsys.readouterr().err.split())
    assert len(trials_table(out)) == 1
