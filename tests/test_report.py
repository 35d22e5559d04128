"""`bench report`: tables, figures, Markdown and self-contained HTML from run directories.

Every test runs on two run directories (the ``run_dir`` fixture):

* ``synthetic``: written in about a second through ``RunDir``'s own writers with predictions of a
  trivial noisy model (a real Optuna study.db, a pruned and a failed trial, held-out results);
  these runs are in the default suite;
* ``cli``: a real search, ``bench run`` on the embedded demo X-rays (simple_cnn vs MobileNetV2,
  32 px, 1 epoch, 2 folds, 3 trials) followed by ``bench final``; about 2 minutes on 2 cores,
  so marked slow. Session-scoped: it trains once.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from PIL import Image

from bench import metrics as M
from bench.cli import main
from bench.results import RunDir

CLASSES = ["NORMAL", "PNEUMONIA"]


@pytest.fixture(autouse=True)
def strict_report(monkeypatch):
    """Unexpected errors inside the report raise here instead of becoming notes, so bugs show."""
    monkeypatch.setenv("BENCH_REPORT_STRICT", "1")


# ---- the synthetic run: RunDir's writers, a trivial model ------------------------------------------------------


def _proba(y: np.ndarray, skill: float, rng: np.random.Generator) -> np.ndarray:
    logit = skill * (2 * y - 1) + rng.normal(0, 1.0, y.size)
    p = 1 / (1 + np.exp(-logit))
    return np.column_stack([1 - p, p])


def _predictions(paths: list[str], y: np.ndarray, proba: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"path": paths, "group": [p.split("/")[-1][:7] for p in paths],
                          "truth": [CLASSES[i] for i in y], "target": y})
    for c, name in enumerate(CLASSES):
        frame[f"p_{name}"] = proba[:, c]
    return frame


def make_synthetic_run(out: Path, *, study_name: str = "synthetic-tpe", sampler: str = "tpe",
                       dataset: str = "synthetic-xray", skill_shift: float = 0.0) -> Path:
    """A search run directory with 5 trials (3 complete, 1 pruned, 1 failed) and held-out results."""
    n, folds = 100, 3
    labels = np.array([0, 1] * (n // 2))
    paths = [f"{CLASSES[y]}/IM-{i:04d}-0001.jpeg" for i, y in enumerate(labels)]
    test = np.zeros(n, bool)
    test[::5] = True
    fold = np.where(test, -1, np.arange(n) % folds)
    run = RunDir.create(out.parent, dataset, out=out)
    manifest = {
        "kind": "search", "engine": "optuna", "study": study_name, "command": "bench run ...",
        "objective": {"metric": "balanced_accuracy", "direction": "maximize"}, "status": "complete",
        "dataset": {"name": dataset, "title": "Synthetic X-rays", "classes": CLASSES,
                    "per_class": {"NORMAL": 50, "PNEUMONIA": 50}, "images": n, "groups": n, "duplicates": 0,
                    "skipped": [], "positive": "PNEUMONIA", "license": "CC0", "citation": "none"},
        "split": {"rule": "every 5th image", "folds": folds, "seed": 0, "cv_images": int((~test).sum()),
                  "test_images": int(test.sum()), "cv_groups": int((~test).sum()), "test_groups": int(test.sum()),
                  "fold_sizes": [int((fold == f).sum()) for f in range(folds)], "digest": "abc"},
        "environment": {"backend": "tensorflow", "device": "cpu", "gpus": [], "python": "3.11",
                        "versions": {"keras": "3.0", "tensorflow": "2.0", "optuna": optuna.__version__}},
        "sessions": [{"sampler": sampler, "jobs": 1, "host": "test"}],
    }
    run.write_manifest(manifest)
    run.write_splits(tuple(paths), [CLASSES[y] for y in labels], np.arange(n), np.where(test, "test", "cv"), fold)
    storage = f"sqlite:///{run.file('study')}"
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    dists = {"backbone": optuna.distributions.CategoricalDistribution(["simple_cnn", "mobilenet_v2"]),
             "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    plan = [("simple_cnn", 1e-3, "COMPLETE", 0.6), ("mobilenet_v2", 3e-3, "COMPLETE", 1.0),
            ("simple_cnn", 5e-3, "COMPLETE", 0.8), ("mobilenet_v2", 2e-4, "PRUNED", 0.1),
            ("simple_cnn", 8e-3, "FAIL", 0.0)]
    start = pd.Timestamp("2025-01-01 10:00:00").to_pydatetime()
    for number, (backbone, lr, state, skill) in enumerate(plan):
        config = {"backbone": backbone, "lr": lr, "seed": 100 + number, "size": 32, "epochs": 3,
                  "weights": None, "augment": "none"}
        run.write_config(number, config)
        values = []
        n_folds = {"COMPLETE": folds, "PRUNED": 1, "FAIL": 0}[state]
        for f in range(n_folds):
            val = fold == f
            y = labels[val]
            proba = _proba(y, skill + skill_shift, np.random.default_rng(1000 * number + f))
            scores = M.compute_metrics(y, proba, positive=1)
            values.append(scores["balanced_accuracy"])
            history = {"loss": list(1 / (np.arange(3) + 1.5)), "accuracy": list(0.6 + 0.1 * np.arange(3)),
                       "val_loss": list(1 / (np.arange(3) + 1.2)), "val_accuracy": list(0.55 + 0.1 * np.arange(3))}
            info = {"epochs_run": 3, "best_epoch": 3, "n_train": int((~test & ~val).sum()), "n_val": int(val.sum()),
                    "seconds_fit": 3.0, "seconds_per_epoch": 1.0 + number, "images_per_second": 50.0 - number,
                    "trainable_params": 1000 * (number + 1), "total_params": 1200 * (number + 1)}
            run.append_fold(trial=number, fold=f, backbone=backbone, status="ok", info=info, metrics=scores,
                            predictions=_predictions([p for p, v in zip(paths, val) if v], y, proba), history=history)
        value = float(np.mean(values)) if state == "COMPLETE" else (float(np.mean(values)) if values else None)
        run.append_trial({"number": number, "state": state, "value": value, "backbone": backbone, "params": config,
                          "seconds": 10.0 + number, "pruned_at_fold": 0 if state == "PRUNED" else None,
                          "fail_reason": "NaN loss" if state == "FAIL" else None, "engine": "optuna", "host": "test"})
        t0 = start + pd.Timedelta(seconds=20 * number).to_pytimedelta()
        finished = state != "RUNNING"
        study.add_trial(optuna.trial.FrozenTrial(  # fixed times keep the wall-time column reproducible
            number=number, trial_id=number, state=getattr(optuna.trial.TrialState, state),
            value=value if state == "COMPLETE" else None, values=None, datetime_start=t0,
            datetime_complete=t0 + pd.Timedelta(seconds=10 + number).to_pytimedelta() if finished else None,
            params={"backbone": backbone, "lr": lr}, distributions=dists, user_attrs={}, system_attrs={},
            intermediate_values={0: values[0]} if state == "PRUNED" else {},
        ))
    trials = run.table("trials")
    done = trials[trials.state == "COMPLETE"].sort_values(["value", "number"], ascending=[False, True])
    write_trivial_final(run, labels, paths, test, {b: (int(g.number.iloc[0]), 1.0) for b, g in
                                                   done.groupby("backbone")})
    return out


def write_trivial_final(run: RunDir, labels: np.ndarray, paths: list[str], test: np.ndarray,
                        chosen: dict[str, tuple[int, float]]) -> None:
    """Held-out results as `bench final` writes them, from a trivial model's predictions."""
    y = labels[test]
    for backbone, (trial, skill) in chosen.items():
        proba = _proba(y, skill, np.random.default_rng(7 + trial))
        predictions = _predictions([p for p, t in zip(paths, test) if t], y, proba)
        cis = M.bootstrap_all(y, proba, n_boot=100, seed=0, positive=1, groups=predictions.group, unit="patients")
        rows = [{"backbone": backbone, "trial": trial, "split": "test", "metric": m, "value": c.value, "low": c.low,
                 "high": c.high, "n_images": int(test.sum()), "n_boot": c.n_boot, "unit": c.unit,
                 "n_units": c.n_units} for m, c in cis.items()]
        predictions.insert(0, "trial", trial)
        predictions.insert(0, "backbone", backbone)
        run.write_final_backbone(backbone, {"trial": trial, "refit_epochs": 3, "n_train": int((~test).sum()),
                                            "n_test": int(test.sum()), "seconds": 1.0, "model": "none"},
                                 rows, predictions)


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory) -> Path:
    return make_synthetic_run(tmp_path_factory.mktemp("report-synthetic") / "runs" / "synthetic-xray" / "tpe")


# ---- the real run: the CLI on the demo X-rays ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def cli_run(request, tmp_path_factory) -> Path:
    """The real search of conftest's ``demo_search`` (bench run + its bench final), read-only here;
    BENCH_REPORT_TEST_RUN=DIR reports on a copy of an existing run directory instead."""
    if os.environ.get("BENCH_REPORT_TEST_RUN"):
        out = tmp_path_factory.mktemp("report-cli") / "runs" / "pneumonia-demo" / "tiny"
        return copy_run(Path(os.environ["BENCH_REPORT_TEST_RUN"]), out)
    return request.getfixturevalue("demo_search")[0]


@pytest.fixture(scope="session", params=["synthetic", pytest.param("cli", marks=pytest.mark.slow)])
def run_dir(request) -> Path:
    return request.getfixturevalue(f"{request.param}_run")


@pytest.fixture(scope="session")
def reported(run_dir, tmp_path_factory) -> tuple[Path, Path, str]:
    """``bench report --run RUN --out OUT`` once per run: (run, out, what it printed)."""
    out = tmp_path_factory.mktemp("report") / "report"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_REPORT_STRICT", "1")
        import contextlib
        import io

        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            assert main(["report", "--run", str(run_dir), "--out", str(out)]) == 0
    return run_dir, out, printed.getvalue()


def report(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(["report", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def csv_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "tables").glob("*.csv"))}


def leaderboard_of(out: Path) -> pd.DataFrame:
    files = sorted((out / "tables").glob("leaderboard_*.csv"))
    assert len(files) == 1, files
    return pd.read_csv(files[0])


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("models", ".lock"))
    return dst


def drop_trials(run: Path, numbers: set[int]) -> None:
    """Remove trials from a run directory's CSVs, as if that machine never ran them."""
    for name, col in (("trials.csv", "number"), ("folds.csv", "trial"), ("metrics.csv", "trial"),
                      ("predictions.csv", "trial"), ("history.csv", "trial")):
        path = run / name
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame[~frame[col].astype(int).isin(numbers)].to_csv(path, index=False)


# ---- tests -------------------------------------------------------------------------------------------------------


def test_report_writes_markdown_html_tables_and_figures_reproducibly(reported, tmp_path, capsys):
    run_dir, out, text = reported
    md, page = (out / "index.md").read_text(), (out / "index.html").read_text()
    for section in ("1. Overview", "2. Leaderboards", "3. Across datasets", "5. Leaderboard models",
                    "6. The searches", "8. Reproduce"):
        assert section in md and section in page
    assert "4. Significance" in md  # bench/report/stats.py is there
    assert "held-out test" in md and "-fold CV on" in md  # every table says its split and size
    # Every held-out CI says what it resampled, whole patients: the leaderboard's and the all-metrics table's captions.
    patients = RunDir.open(run_dir).table("test_predictions").group.nunique()
    assert set(RunDir.open(run_dir).table("test_metrics").n_units) == {patients}
    assert md.count(f"95% CI by bootstrap over {patients} patients;") == 1
    assert md.count(f"from a stratified bootstrap over {patients} patients (") == 1
    assert "bench cv --from-trial" in md
    # self-contained: figures inlined, nothing fetched
    assert "data:image/png;base64," in page
    assert 'src="http' not in page and "<link" not in page and "@import" not in page
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert any(f.startswith("confusion_") and f.endswith(".png") for f in figures)
    assert any(f.startswith("roc_") for f in figures) and any(f.startswith("curves_") for f in figures)
    assert any(f.endswith("_history.png") for f in figures) and any(f.endswith(".svg") for f in figures)
    assert "leaderboard" in text  # the main tables in the terminal
    if (run_dir / "models").is_dir():  # a real `bench final` drew each model's Grad-CAM grid
        assert any(f.startswith("gradcam_") and f.endswith(".png") for f in figures)
        assert "Grad-CAM on held-out images" in page
    else:
        assert "No Grad-CAM grid" in md

    trials = RunDir.open(run_dir).table("trials")
    completed = set(trials[trials.state == "COMPLETE"].backbone)
    board = leaderboard_of(out)
    assert len(board) == len(completed) and set(board.backbone) == completed
    assert list(board["rank"]) == list(range(1, len(board) + 1))
    assert board.objective_value.is_monotonic_decreasing
    assert board.test_value.notna().all()  # bench final ran for every backbone's best trial
    for table in ("cross_dataset", "reproduce", "ttest_"):
        assert any(name.startswith(table) for name in csv_bytes(out))

    first = csv_bytes(out)
    shutil.rmtree(out)  # delete the report and make it again: the same bytes in every table
    assert report(["--run", str(run_dir), "--out", str(out), "--quiet"], capsys)[0] == 0
    assert csv_bytes(out) == first


def test_held_out_cis_written_before_patient_bootstrap_read_as_image_bootstrap(synthetic_run, tmp_path, capsys):
    run = copy_run(synthetic_run, tmp_path / "runs" / "old")
    old = pd.read_csv(run / "test_metrics.csv").drop(columns=["unit", "n_units"])  # as bench final wrote it before
    old.to_csv(run / "test_metrics.csv", index=False)
    n_test = int(old.n_images.iloc[0])
    table = RunDir.open(run).table("test_metrics")
    assert set(table.unit) == {"images"} and (table.n_units == n_test).all()
    assert report(["--run", str(run), "--out", str(tmp_path / "out"), "--quiet"], capsys)[0] == 0
    md = (tmp_path / "out" / "index.md").read_text()
    assert f"95% CI by bootstrap over {n_test} images;" in md and "bootstrap over 20 patients" not in md
    # A re-run of bench final for one backbone keeps the others' old rows, labelled as what they were.
    rd = RunDir.open(run)
    first = str(old.backbone.iloc[0])
    rd.write_final_backbone(first, {"trial": 0}, [{"backbone": first, "trial": 0, "split": "test", "metric": "auc",
                                                   "value": 0.9, "low": 0.8, "high": 1.0, "n_images": n_test,
                                                   "n_boot": 10, "unit": "patients", "n_units": 7}],
                            pd.DataFrame({"backbone": [first], "path": ["x.png"]}))
    table = rd.table("test_metrics")
    assert list(table[table.backbone == first].unit) == ["patients"]
    assert set(table[table.backbone != first].unit) == {"images"}
    assert (table[table.backbone != first].n_units == n_test).all()


def cv_from_predictions(predictions: pd.DataFrame, trial: int, classes: list[str], positive: int | None) -> dict:
    """A trial's CV numbers as the leaderboard defines them, from its out-of-fold predictions alone:
    each fold scored by compute_metrics, then the mean and the std (ddof 1) over the folds."""
    rows = predictions[predictions.trial.astype(int) == trial]
    per_fold = [M.compute_metrics(fold.target.to_numpy(int), fold[[f"p_{c}" for c in classes]].to_numpy(float),
                                  positive=positive) for _, fold in rows.groupby("fold", sort=True)]
    out = {"folds": len(per_fold)}
    for metric in per_fold[0]:
        values = np.array([f[metric] for f in per_fold])
        values = values[np.isfinite(values)]
        out[f"cv_{metric}_mean"] = float(values.mean()) if values.size else np.nan
        out[f"cv_{metric}_std"] = float(values.std(ddof=1)) if values.size > 1 else np.nan
    return out


def test_leaderboard_cv_numbers_recomputed_from_out_of_fold_predictions(reported):
    run_dir, out, _ = reported
    board = leaderboard_of(out)
    run = RunDir.open(run_dir)
    dataset = run.manifest()["dataset"]
    classes = dataset["classes"]
    positive = classes.index(dataset["positive"]) if dataset.get("positive") in classes else None
    predictions = run.table("predictions")
    columns = [c for c in board.columns if c.startswith("cv_") and c.endswith(("_mean", "_std"))]
    assert {"cv_balanced_accuracy_mean", "cv_auc_std", "cv_mcc_mean", "cv_sensitivity_std"} <= set(columns)
    tolerance = 1e-9  # the tables are written with full float precision: only summation order may differ
    for row in board.itertuples(index=False):
        again = cv_from_predictions(predictions, row.trial, classes, positive)
        assert again["folds"] == row.folds_scored == row.folds, row.backbone
        for column in columns:
            shown = getattr(row, column)
            if np.isnan(again[column]):
                assert np.isnan(shown), (row.backbone, column)
            else:
                assert shown == pytest.approx(again[column], abs=tolerance), (row.backbone, column)
        assert row.objective_value == pytest.approx(again["cv_balanced_accuracy_mean"], abs=tolerance)

    # The comparison can fail: one image's prediction flipped moves the recomputed numbers off the table's.
    row = board.iloc[0]
    flipped = predictions[predictions.trial.astype(int) == int(row.trial)].reset_index(drop=True)
    probas = [flipped.columns.get_loc(f"p_{c}") for c in classes]
    flipped.iloc[0, probas] = flipped.iloc[0, probas[::-1]].to_numpy()
    moved = cv_from_predictions(flipped, int(row.trial), classes, positive)
    assert abs(moved["cv_balanced_accuracy_mean"] - row.cv_balanced_accuracy_mean) > 100 * tolerance
def test_leaderboard_shows_each_entrys_trials_and_the_allocation(synthetic_run, tmp_path, capsys):
    """Each row says how many trials its entry drew (complete / pruned / failed) and their seconds,
    and the caption says how the search shared them out (`bench run --allocation`)."""
    out = tmp_path / "report"
    assert report(["--run", str(synthetic_run), "--out", str(out), "--quiet"], capsys)[0] == 0
    board = leaderboard_of(out).set_index("backbone")
    # The synthetic plan: simple_cnn trials 0, 2 complete and 4 failed; mobilenet_v2 1 complete, 3 pruned.
    assert board.loc["simple_cnn", ["trials_complete", "trials_pruned", "trials_failed"]].tolist() == [2, 0, 1]
    assert board.loc["mobilenet_v2", ["trials_complete", "trials_pruned", "trials_failed"]].tolist() == [1, 1, 0]
    assert board.loc["simple_cnn", "trial_seconds"] == pytest.approx(10 + 12 + 14)
    md = (out / "index.md").read_text()
    assert "| 2 / 0 / 1 |" in md and "36.0 s" in md
    assert "Allocation of trials to entries: sampler (not recorded)" in md  # written before bench recorded it

    run = copy_run(synthetic_run, tmp_path / "runs" / "balanced")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["sessions"] = [{**s, "allocation": "balanced"} for s in manifest["sessions"]]
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert report(["--run", str(run), "--out", str(tmp_path / "again"), "--quiet"], capsys)[0] == 0
    md = (tmp_path / "again" / "index.md").read_text()
    assert "Allocation of trials to entries: balanced — every entry drew the same number of trials" in md

    # A --time-limit plan balances within its stages but fine-tunes only the promoted backbones:
    # the caption must not claim equal trials.
    manifest["time_limit"] = {"limit_seconds": 600, "promoted": ["simple_cnn"], "stages": []}
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert report(["--run", str(run), "--out", str(tmp_path / "staged"), "--quiet"], capsys)[0] == 0
    md = (tmp_path / "staged" / "index.md").read_text()
    assert "staged (--time-limit; fine-tuning for simple_cnn)" in md and "only the promoted backbones" in md
    assert "every entry drew the same number of trials" not in md

    # An entry with no complete trial has no row; its budget is still said (here: trial 1 pruned too).
    trials = pd.read_csv(run / "trials.csv")
    trials.loc[trials.number == 1, ["state", "value"]] = ["PRUNED", None]
    trials.to_csv(run / "trials.csv", index=False)
    assert report(["--run", str(run), "--out", str(tmp_path / "pruned"), "--quiet"], capsys)[0] == 0
    assert "mobilenet_v2" not in set(leaderboard_of(tmp_path / "pruned").backbone)
    md = (tmp_path / "pruned" / "index.md").read_text()
    assert "mobilenet_v2: not ranked, no complete trial (0 complete / 2 pruned / 0 failed, 24.0 s)" in md


def test_runs_copied_from_two_machines_merge_into_one_leaderboard(run_dir, tmp_path, capsys):
    reference = tmp_path / "reference"
    assert report(["--run", str(run_dir), "--out", str(reference), "--quiet"], capsys)[0] == 0
    numbers = sorted(RunDir.open(run_dir).table("trials").number)
    parent = tmp_path / "machines"
    a, b = copy_run(run_dir, parent / "a"), copy_run(run_dir, parent / "b")
    drop_trials(a, set(numbers[len(numbers) // 2 + 1:]))  # a: the first half and one more
    drop_trials(b, set(numbers[: len(numbers) // 2]))  # b: the rest (one trial in both)
    assert report(["--runs-dir", str(parent), "--out", str(tmp_path / "merged"), "--quiet"], capsys)[0] == 0
    merged, single = leaderboard_of(tmp_path / "merged"), leaderboard_of(reference)
    assert len(merged) == len(single)
    cols = ["backbone", "trial", "objective_value", "cv_auc_mean", "cv_mcc_std", "test_value"]
    pd.testing.assert_frame_equal(merged[cols], single[cols])
    trials = next((tmp_path / "merged" / "tables").glob("trials_*.csv"))
    assert sorted(pd.read_csv(trials).trial) == numbers  # every trial once
    md = (tmp_path / "merged" / "index.md").read_text()
    assert "`a`" in md and "`b`" in md


def test_missing_metrics_file_gives_a_note_not_a_traceback(run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path / "runs" / "broken")
    (run / "metrics.csv").unlink()
    (run / "history.csv").unlink()
    trials = pd.read_csv(run / "trials.csv", dtype=str, keep_default_na=False)
    trials.iloc[1:].to_csv(run / "trials.csv", index=False)  # and trial 0's row lost: study.db still has it
    code, _, err = report(["--run", str(run), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 0 and "Traceback" not in err
    md = (tmp_path / "out" / "index.md").read_text()
    assert "metrics.csv is missing" in md and "history.csv is missing" in md and "No training curves" in md
    recovered = [line for line in md.splitlines() if "which study.db records as finished" in line]
    assert len(recovered) == 1 and str(trials.number.iloc[0]) in recovered[0].split("trial(s)")[1]
    board = leaderboard_of(tmp_path / "out")  # the objective still comes from trials.csv
    assert board.objective_value.notna().all() and board.cv_auc_mean.isna().all()


def test_strict_report_fails_naming_each_missing_figure_or_record(synthetic_run, tmp_path, capsys):
    run = copy_run(synthetic_run, tmp_path / "runs" / "strict")
    backbones = sorted(json.loads((run / "final.json").read_text())["backbones"])
    for backbone in backbones:  # the Grad-CAM grids `bench final` draws with a real model
        (run / "figures").mkdir(exist_ok=True)
        Image.new("RGB", (64, 48), (200, 40, 40)).save(run / "figures" / f"gradcam_{backbone}.png")
    code, _, err = report(["--run", str(run), "--out", str(tmp_path / "clean"), "--quiet", "--strict"], capsys)
    assert code == 0, err  # every section drawn, nothing missing

    (run / "figures" / f"gradcam_{backbones[0]}.png").unlink()
    (run / "history.csv").unlink()
    code, _, err = report(["--run", str(run), "--out", str(tmp_path / "broken"), "--quiet", "--strict"], capsys)
    message = " ".join(err.split())
    assert code == 1 and "Traceback" not in err
    assert "bench report --strict: " in message and str(tmp_path / "broken" / "index.html") in message
    assert f"No Grad-CAM grid for {backbones[0]}" in message and f"No Grad-CAM grid for {backbones[1]}" not in message
    assert "history.csv is missing" in message and "No training curves for" in message
    assert (tmp_path / "broken" / "index.html").is_file()  # written anyway, to look at


def test_run_without_a_completed_trial(run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path / "runs" / "failed")
    trials = pd.read_csv(run / "trials.csv", dtype=str, keep_default_na=False)
    trials["state"] = "FAIL"
    trials.to_csv(run / "trials.csv", index=False)
    code, _, err = report(["--run", str(run), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 0 and "Traceback" not in err
    md = (tmp_path / "out" / "index.md").read_text()
    assert "No completed trial" in md and "there is no leaderboard" in md


def test_interrupted_run_reports_what_it_finished(run_dir, tmp_path, capsys):
    run = copy_run(run_dir, tmp_path / "runs" / "interrupted")
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["status"] = "interrupted"
    (run / "manifest.json").write_text(json.dumps(manifest))
    last = int(pd.read_csv(run / "folds.csv").trial.max())
    trials = pd.read_csv(run / "trials.csv", dtype=str, keep_default_na=False)
    trials[trials.number.astype(int) < last].to_csv(run / "trials.csv", index=False)  # `last` was in flight
    (run / "study.db").unlink()  # (the study lived in a shared storage: nothing says how `last` ended)
    code, _, err = report(["--run", str(run), "--out", str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 0 and "Traceback" not in err
    md = (tmp_path / "out" / "index.md").read_text()
    assert "was interrupted" in md and "trials in flight are not counted" in md
    shown = pd.read_csv(next((tmp_path / "out" / "tables").glob("trials_*.csv")))
    assert shown[shown.trial == last].state.tolist() == ["INTERRUPTED"]
    for board in (tmp_path / "out" / "tables").glob("leaderboard_*.csv"):
        assert last not in set(pd.read_csv(board).trial)


def test_empty_or_missing_runs_folder_is_a_clear_error(tmp_path, capsys):
    empty = tmp_path / "nothing-here"
    empty.mkdir()
    code, _, err = report(["--runs-dir", str(empty), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and str(empty) in " ".join(err.split()) and "Traceback" not in err
    code, _, err = report(["--runs-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "does not exist" in err
    not_a_run = tmp_path / "plain"
    not_a_run.mkdir()
    (not_a_run / "notes.txt").write_text("hi")
    code, _, err = report(["--run", str(not_a_run), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and "not a bench run directory" in err


def test_default_runs_folder_is_bench_runs(synthetic_run, tmp_path, monkeypatch, capsys):
    runs = tmp_path / "runs"
    copy_run(synthetic_run, runs / "synthetic-xray" / "tpe")
    monkeypatch.setenv("BENCH_RUNS", str(runs))
    monkeypatch.chdir(tmp_path)
    assert report([], capsys)[0] == 0
    assert (tmp_path / "reports" / "index.html").is_file()


def test_datasets_strategies_engines_and_cv_runs_together(tmp_path, capsys):
    """Three datasets (Friedman + CD diagram), two samplers on one, a KerasTuner-style run, a cv run."""
    runs = tmp_path / "runs"
    for name, shift in (("set-a", 0.0), ("set-b", 0.3), ("set-c", -0.6)):
        make_synthetic_run(runs / name / "tpe", dataset=name, skill_shift=shift)
    make_synthetic_run(runs / "set-a" / "random", dataset="set-a", study_name="set-a-random", sampler="random",
                       skill_shift=0.5)
    kt = make_synthetic_run(runs / "set-b" / "kt", dataset="set-b", study_name="set-b-kt")
    manifest = json.loads((kt / "manifest.json").read_text())
    manifest.update(engine="kerastuner", tuner="hyperband")
    (kt / "manifest.json").write_text(json.dumps(manifest))
    (kt / "study.db").unlink()
    cv = make_synthetic_run(runs / "set-c" / "cv-run", dataset="set-c", study_name="cv-run", skill_shift=2.0)
    manifest = json.loads((cv / "manifest.json").read_text())
    manifest.update(kind="cv", seconds=12.5)
    manifest.pop("study")
    (cv / "manifest.json").write_text(json.dumps(manifest))
    for name in ("trials.csv", "study.db", "final.json", "test_metrics.csv", "test_predictions.csv"):
        (cv / name).unlink()
    drop_trials_cv(cv)

    out = tmp_path / "out"
    code, text, err = report(["--runs-dir", str(runs), "--out", str(out)], capsys)
    assert code == 0, err
    names = set(csv_bytes(out))
    assert {"leaderboard_set-a.csv", "leaderboard_set-b.csv", "leaderboard_set-c.csv", "friedman.csv",
            "strategies_set-a.csv", "strategies_set-b.csv"} <= names
    assert (out / "figures" / "cd_diagram.png").is_file() and (out / "figures" / "strategies_set-a.png").is_file()
    cross = pd.read_csv(out / "tables" / "cross_dataset.csv")
    assert set(cross.columns) >= {"backbone", "set-a", "set-b", "set-c", "mean_rank"}
    assert cross.mean_rank.is_monotonic_increasing
    md = (out / "index.md").read_text()
    assert "KerasTuner search" in md and "Friedman chi²" in md
    board_c = pd.read_csv(out / "tables" / "leaderboard_set-c.csv")
    assert "cv-run" in set(board_c.study)  # a `bench cv` run is a one-trial entry
    assert f"bench cv --from-trial 0 --run {cv}" in md


def test_each_dataset_ranks_by_the_direction_of_its_own_objective(tmp_path):
    """set-b minimises log loss, set-a and set-c maximise balanced accuracy: ranks follow each manifest."""
    from bench.report import significance, stats
    from bench.report import tables as T
    from bench.report.collect import collect, find_run_dirs

    runs = tmp_path / "runs"
    for name, shift in (("set-a", 0.0), ("set-b", 0.3), ("set-c", -0.6)):
        run = make_synthetic_run(runs / name / "tpe", dataset=name, skill_shift=shift)
        for held_out in ("final.json", "test_metrics.csv", "test_predictions.csv"):  # rank the CV means (no ties)
            (run / held_out).unlink()
        if name == "set-b":
            manifest = json.loads((run / "manifest.json").read_text())
            manifest["objective"] = {"metric": "log_loss", "direction": "minimize"}
            (run / "manifest.json").write_text(json.dumps(manifest))
    coll = collect(find_run_dirs(runs), runs)
    boards = {d: T.leaderboard(coll, d) for d in coll.datasets}
    cross = T.cross_dataset(coll, boards)
    ranks = cross.data.set_index("backbone")
    expected = {}
    for d, low_is_best in (("set-a", False), ("set-b", True), ("set-c", False)):
        value = boards[d].set_index("backbone").objective_value
        assert value.nunique() == len(value)  # no tie: a wrong direction would change the ranks
        expected[d] = value.rank(ascending=low_is_best)
        assert ranks[f"{d}_rank"].to_dict() == expected[d].to_dict(), d
    mean_rank = pd.DataFrame(expected).mean(axis=1).to_dict()
    assert ranks.mean_rank.to_dict() == pytest.approx(mean_rank)
    table, _, message = significance.friedman_table(coll, cross, stats)
    assert table is not None, message
    assert table.data.set_index("backbone").mean_rank.to_dict() == pytest.approx(mean_rank)

    # By combinations (--by backbone,lr): their own word and one column per factor, not "backbones".
    by = ("backbone", "lr")
    cross = T.cross_dataset(coll, {d: T.leaderboard(coll, d, by) for d in coll.datasets}, by)
    table, _, message = significance.friedman_table(coll, cross, stats, by=by)
    assert table is not None, message
    assert "backbone · lr combinations" in table.caption and "backbones" not in table.caption
    labels = table.data["backbone · lr"]
    assert list(table.data.backbone) == [k.split(" · ")[0] for k in labels]
    assert [str(x) for x in table.data.lr] == [k.split(" · ")[1] for k in labels]


def drop_trials_cv(run: Path) -> None:
    """Keep trial 1 only, renumbered 0, as `bench cv` writes it."""
    for name in ("folds.csv", "metrics.csv", "predictions.csv", "history.csv"):
        frame = pd.read_csv(run / name, dtype=str, keep_default_na=False)
        frame = frame[frame.trial == "1"].assign(trial="0")
        frame.to_csv(run / name, index=False)
    configs = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({"0": configs["1"]}))


def test_html_renders_in_headless_chromium(reported, tmp_path):
    from tests.browser import open_page

    _, out, _ = reported
    page = open_page(out / "index.html", tmp_path / "browser")
    image = Image.open(page.screenshot).convert("RGB")
    assert image.size == (1400, 3000)
    colors = image.getcolors(maxcolors=1 << 20) or []
    assert page.screenshot.stat().st_size > 50_000 and len(colors) > 200  # not blank
    assert 'id="table-leaderboard_' in page.dom and "<img" in page.dom
    assert 'data-rendered="yes"' in page.dom  # the inline script ran
    assert '<pre id="js-errors"></pre>' in page.dom  # and recorded no error
    assert page.console_errors() == []


def test_multiclass_confusion_per_class_and_one_vs_rest_roc(tmp_path):
    from bench.report import details, facts
    from bench.report import figures as F

    rng = np.random.default_rng(0)
    classes = ["polyp", "ulcer", "normal"]
    y = np.repeat(np.arange(3), 20)
    logits = rng.normal(0, 1, (60, 3)) + 2.0 * np.eye(3)[y]
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    ev = details.ModelEval("gi3", "resnet50", "s", "r", 4, "test", facts.test_phrase(60), y, proba, classes, None)
    conf = details.confusion_table(ev)
    assert conf.data["count"].sum() == 60 and len(conf.data) == 9
    assert list(conf.display.columns) == ["truth \\ predicted", *classes] and conf.bold.values.sum() == 3
    per = details.per_class(ev)
    assert list(per.data["class"]) == classes and per.data.support.sum() == 60
    roc = F.roc_figure(y, proba, classes, None, tmp_path, "roc", "ROC", "one-vs-rest")
    assert roc.png.stat().st_size > 10_000 and roc.svg.read_text().count("AUC") == 3
