"""`bench probe`: linear probe and kNN on a backbone's cached, pooled frozen features, on the
search's folds and held-out test; the scores equal a scikit-learn pipeline computed by hand."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, log_loss, roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench.cli import main

C_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # written out again: the test must not read the module's


@pytest.fixture(scope="module")
def probed(tmp_path_factory) -> SimpleNamespace:
    """One real `bench probe` on the demo X-rays (simple_cnn, random init, 32 px, 2 folds), and the
    pooled features read straight from the cache file it left."""
    from bench.training.experiment import prepare_data

    base = tmp_path_factory.mktemp("probe")
    out = base / "runs" / "probe-run"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        for var, sub in (("BENCH_CACHE", "cache"), ("BENCH_RUNS", "runs"), ("BENCH_DATA", "data")):
            mp.setenv(var, str(base / sub))
        code = main(["probe", "--dataset", "pneumonia-demo", "--backbones", "simple_cnn", "--sizes", "32",
                     "--weights", "none", "--allow-random", "--folds", "2", "--boot", "200", "--out", str(out)])
        assert code == 0, printed.getvalue()[-3000:]
        data = prepare_data("pneumonia-demo", folds=2, size=32)
        (entry,) = (base / "cache" / "features").glob("simple_cnn-32px-*.npy")
        maps = np.load(entry)
        # A frozen search trial of the same backbone, size, weights and seed finds the probe's entry.
        from bench.training.route import trainer_for
        from bench.training.train import TrainConfig

        config = TrainConfig(backbone="simple_cnn", size=32, unfrozen=0, augment="none", epochs=1, seed=0)
        _, _, found = trainer_for(config, data, n_train_hint=100)
    return SimpleNamespace(out=out, printed=printed.getvalue(), data=data, maps=maps, entry=entry,
                           trial_found=found, base=base)


def _by_hand(probed: SimpleNamespace) -> dict[tuple[str, str], dict[str, float]]:
    """Each probe's balanced accuracy and AUC per fold and on the test set, from splits.csv, the
    cache file and scikit-learn alone (the inner split is the search's: bench's own definition)."""
    from bench.training.experiment import REFIT_SPLIT, inner_split

    data = probed.data
    splits = pd.read_csv(probed.out / "splits.csv", dtype={"path": str})
    assert list(splits.path) == list(data.index.paths)
    x = probed.maps.astype(np.float32).mean(axis=(1, 2))
    y = data.index.labels
    fold, test = splits.fold.to_numpy(), (splits.split == "test").to_numpy()
    cv = fold >= 0

    def linear(fit, stop):
        loss = {}
        for c in C_GRID:
            m = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=2000))
            m.fit(x[fit], y[fit])
            loss[c] = log_loss(y[stop], m.predict_proba(x[stop]), labels=[0, 1])
        best = min(C_GRID, key=lambda c: (loss[c], c))
        rows = fit | stop
        return make_pipeline(StandardScaler(), LogisticRegression(C=best, class_weight="balanced", max_iter=2000)
                             ).fit(x[rows], y[rows])

    def knn(fit, stop):
        rows = fit | stop
        return KNeighborsClassifier(n_neighbors=11, metric="cosine").fit(x[rows], y[rows])

    out = {}
    for name, make in (("linear", linear), ("knn", knn)):
        scores = {"balanced_accuracy": [], "auc": []}
        for k in range(2):
            fit, stop = inner_split(data, cv & (fold != k), 0.15, key=k)
            p = make(fit, stop).predict_proba(x[fold == k])
            scores["balanced_accuracy"].append(balanced_accuracy_score(y[fold == k], p.argmax(1)))
            scores["auc"].append(roc_auc_score(y[fold == k], p[:, 1]))
        fit, stop = inner_split(data, cv, 0.15, key=REFIT_SPLIT)
        p = make(fit, stop).predict_proba(x[test])
        for metric, values in scores.items():
            out[(name, metric)] = {"cv_mean": np.mean(values), "cv_std": np.std(values, ddof=1),
                                   "test": balanced_accuracy_score(y[test], p.argmax(1)) if metric != "auc"
                                   else roc_auc_score(y[test], p[:, 1])}
    return out


def test_probe_scores_equal_a_hand_computed_sklearn_pipeline_on_the_cached_features(probed) -> None:
    rows = pd.read_csv(probed.out / "probes.csv")
    assert set(rows.probe) == {"linear", "knn"} and set(rows.backbone) == {"simple_cnn"}
    hand = _by_hand(probed)
    for (probe, metric), want in hand.items():
        got = rows[(rows.probe == probe) & (rows.metric == metric)].iloc[0]
        for column, value in want.items():
            assert got[column] == pytest.approx(value, abs=1e-9), (probe, metric, column)
        # The held-out CI resamples the demo's patients, around the point value.
        assert got.unit == "patients" and got.n_units < got.n_test == int(probed.data.splits.test.sum())
        assert got.test_low <= got.test <= got.test_high
    # The two probes disagree somewhere: the comparison above could fail.
    assert hand[("linear", "auc")]["cv_mean"] != hand[("knn", "auc")]["cv_mean"]


def test_probe_features_come_from_the_cache_a_frozen_trial_reads(probed) -> None:
    manifest = (probed.out / "manifest.json").read_text()
    assert '"kind": "probe"' in manifest
    assert probed.trial_found is not None and not probed.trial_found.built
    assert probed.trial_found.path == probed.entry


def test_report_shows_the_probes_table(probed, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BENCH_REPORT_STRICT", "1")
    report = tmp_path / "report"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        # --strict: a probe run alone (no search) is not a report with problems.
        assert main(["report", "--run", str(probed.out), "--out", str(report), "--strict"]) == 0, printed.getvalue()
    table = pd.read_csv(report / "tables" / "probes_pneumonia-demo.csv")
    rows = pd.read_csv(probed.out / "probes.csv")
    merged = table.merge(rows, on=["probe", "metric"], suffixes=("", "_run"))
    assert len(merged) == len(rows) and np.allclose(merged.cv_mean, merged.cv_mean_run)
    md = (report / "index.md").read_text()
    linear = rows[(rows.probe == "linear") & (rows.metric == "balanced_accuracy")].iloc[0]
    assert "pneumonia-demo: probes on frozen features" in md
    assert f"{linear.cv_mean:.3f} ± {linear.cv_std:.3f}" in md and f"{linear.test:.3f} [{linear.test_low:.3f}" in md
    assert "so there is no leaderboard" not in md and "study probe-run" not in md


def test_probe_skips_backbones_without_weights_and_refuses_random_init(make_folder, weights_dir, capsys) -> None:
    folder = make_folder({"a": 8, "b": 8})
    runs = weights_dir.parent / "runs"
    base = ["probe", "--dataset", str(folder), "--sizes", "32", "--folds", "2", "--runs-dir", str(runs), "--offline"]
    # No weights on this machine: each backbone skipped with the command that gets its weights.
    assert main([*base, "--backbones", "efficientnet_lite0,mobilenet_v2,simple_cnn"]) == 2
    err = capsys.readouterr().err
    assert "bench weights convert efficientnet_lite0" in err and "bench weights pull mobilenet_v2" in err
    assert "skipped simple_cnn: it has no ImageNet weights" in err and "Nothing to probe" in err
    # Random init only when asked for.
    assert main([*base, "--backbones", "simple_cnn", "--weights", "none"]) == 2
    assert "--allow-random" in capsys.readouterr().err
    # A size a backbone cannot take is skipped, saying why.
    assert main([*base, "--backbones", "mobilenet_v2", "--sizes", "16", "--weights", "none", "--allow-random"]) == 2
    assert "skipped mobilenet_v2 at 16 px" in capsys.readouterr().err
    assert not runs.exists()  # nothing refused left a run directory behind


def test_probe_rows_of_a_pair_replace_only_that_pair(tmp_path: Path) -> None:
    """Each backbone x size is written as soon as it is done; a re-run of one pair replaces its rows
    and keeps every other pair's (an interrupted probe loses nothing finished)."""
    from bench.results import RunDir

    run = RunDir.create(tmp_path, "ds", out=tmp_path / "run")

    def rows(backbone: str, size: int, value: float) -> pd.DataFrame:
        return pd.DataFrame({"backbone": backbone, "size": size, "probe": ["linear", "knn"], "metric": "auc",
                             "cv_mean": value})

    run.append_probes(rows("a", 64, 0.1))
    run.append_probes(rows("a", 128, 0.2))
    run.append_probes(rows("a", 64, 0.3))
    table = run.table("probes").sort_values(["size", "probe"])
    assert list(zip(table["size"], table.cv_mean)) == [(64, 0.3), (64, 0.3), (128, 0.2), (128, 0.2)]


def test_probe_sizes_must_be_whole_numbers(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["probe", "--dataset", "pneumonia-demo", "--sizes", "64,big"])
    assert exit_.value.code == 2 and "--sizes" in capsys.readouterr().err
