"""`--mlflow`: a real tiny `bench run` (two workers, automatic held-out evaluation) logged to a local
MLflow file store, read back with MlflowClient and compared with the study and bench's own files."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import socket
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bench.cli import main
from bench.results import RunDir
from tests.test_search import TINY_SPACE

STUDY = "tracked"


def _client(uri: str):
    from bench.search import tracking

    return tracking._mlflow(uri).MlflowClient(tracking_uri=uri)


def _runs(uri: str, experiment: str) -> list:
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no MLflow experiment {experiment!r}"
    return client.search_runs([found.experiment_id], max_results=1000)


@contextlib.contextmanager
def _no_network():
    """This process may only talk to itself: any other connection is a test failure."""
    real = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else None
        if self.family == socket.AF_UNIX or host in ("127.0.0.1", "::1", "localhost"):
            return real(self, address)
        raise AssertionError(f"network connection attempted to {address}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", connect)
        yield


def _search_args(out: Path, space: Path, uri: str, *extra: str) -> list[str]:
    return ["run", "--dataset", "pneumonia-demo", "--space", str(space), "--trials", "2", "--folds", "2",
            "--out", str(out), "--pruner", "none", "--study", STUDY, "--jobs", "2", "--mlflow", uri, *extra]


@pytest.fixture(scope="module")
def tracked_search(tmp_path_factory) -> tuple[Path, str, Path]:
    """One real `bench run --jobs 2 --mlflow file://... --no-final`: 2 trials of simple_cnn at 32 px,
    1 epoch, 2 folds, one per worker process. Returns (run directory, tracking URI, space file)."""
    base = tmp_path_factory.mktemp("tracked")
    out = base / "run"
    uri = (base / "mlruns").as_uri()
    space = base / "tiny.toml"
    space.write_text(TINY_SPACE)
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        for var, sub in (("BENCH_CACHE", "cache"), ("BENCH_RUNS", "runs"), ("BENCH_DATA", "data")):
            mp.setenv(var, str(base / sub))
        code = main(_search_args(out, space, uri, "--no-final"))
    assert code == 0, printed.getvalue()[-3000:]
    return out, uri, space


def test_each_trial_is_an_mlflow_run_with_its_params_and_value(tracked_search):
    out, uri, _ = tracked_search
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{out / 'study.db'}")
    trials = {t.number: t for t in study.get_trials() if t.state.is_finished() and not t.user_attrs.get("surplus")}
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials.values())
    runs = [r for r in _runs(uri, STUDY) if r.data.tags.get("source") == "bench run"]  # experiment = study name
    by_number = {int(r.data.tags["number"]): r for r in runs}
    assert len(runs) == len(by_number) == len(trials) and set(by_number) == set(trials)
    metrics = RunDir.open(out).table("metrics")
    client = _client(uri)
    for number, trial in trials.items():
        run = by_number[number]
        assert run.info.run_name == f"trial/{number}" and run.info.status == "FINISHED"
        assert run.data.params == {k: str(v) for k, v in trial.params.items()}
        assert run.data.metrics["cv_balanced_accuracy"] == pytest.approx(trial.value, abs=1e-12)
        tags = run.data.tags
        assert tags["state"] == "COMPLETE" and tags["dataset"] == "pneumonia-demo" and tags["study"] == STUDY
        assert tags["backbone"] == "simple_cnn" and Path(tags["run_dir"]) == out.resolve()
        assert json.loads(tags["config"]) == trial.user_attrs["config"]
        # bench's extras: each fold's objective as steps, every metric's fold mean and std
        folds = metrics[(metrics.trial == number) & (metrics.metric == "balanced_accuracy")].sort_values("fold")
        history = client.get_metric_history(run.info.run_id, "fold_balanced_accuracy")
        assert [m.step for m in history] == [0, 1]
        assert [m.value for m in history] == pytest.approx(folds.value.tolist())
        assert run.data.metrics["cv_auc"] == pytest.approx(trial.user_attrs["cv_mean"]["auc"])
        assert run.data.metrics["cv_std_balanced_accuracy"] == pytest.approx(
            trial.user_attrs["cv_std"]["balanced_accuracy"])


def _new_final_run(uri: str, before: set[str]):
    new = [r for r in _runs(uri, STUDY) if r.info.run_id not in before]
    assert [r.info.run_name for r in new] == ["final/simple_cnn"]
    return new[0]


def _check_final_run(logged, run: RunDir, uri: str, tmp_path: Path) -> None:
    """The MLflow run of `bench final` against the files bench final wrote."""
    final = run.final()["backbones"]["simple_cnn"]
    test_metrics = run.table("test_metrics")
    assert len(test_metrics) >= 7
    for r in test_metrics.itertuples():
        assert logged.data.metrics[f"test_{r.metric}"] == pytest.approx(r.value, abs=1e-12)
        assert logged.data.metrics[f"test_{r.metric}_low"] == pytest.approx(r.low, abs=1e-12)
        assert logged.data.metrics[f"test_{r.metric}_high"] == pytest.approx(r.high, abs=1e-12)
    splits = run.table("splits")
    test_rows = splits[splits.split == "test"]
    tags = logged.data.tags
    assert tags["split"] == "test" and int(tags["n_images"]) == len(test_rows) == final["n_test"]
    assert int(tags["n_patients"]) == test_rows.group.nunique()  # the demo has patient ids
    assert int(tags["trial"]) == final["trial"] and tags["study"] == STUDY and tags["backbone"] == "simple_cnn"
    assert logged.data.params["lr"] == str(final["config"]["lr"])
    client = _client(uri)
    model = Path(client.download_artifacts(logged.info.run_id, "model/simple_cnn.keras", str(tmp_path)))
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert digest == hashlib.sha256((run.path / final["model"]).read_bytes()).hexdigest()
    card = json.loads(Path(client.download_artifacts(logged.info.run_id, "model_card/simple_cnn.card.json",
                                                      str(tmp_path))).read_text())
    assert card["model"]["sha256"] == digest
    assert card["evaluation"]["test"]["metrics"]["balanced_accuracy"]["value"] == pytest.approx(
        logged.data.metrics["test_balanced_accuracy"])
    names = {a.path for a in client.list_artifacts(logged.info.run_id, "model_card")}
    assert names == {"model_card/simple_cnn.card.json", "model_card/simple_cnn.card.md"}


def test_bench_final_logs_held_out_metrics_card_and_model(tracked_search, monkeypatch, capsys, tmp_path):
    out, uri, _ = tracked_search
    monkeypatch.setenv("BENCH_MLFLOW_URI", uri)  # the environment's URI, no --mlflow
    before = {r.info.run_id for r in _runs(uri, STUDY)}
    with _no_network():
        assert main(["final", "--run", str(out), "--boot", "50"]) == 0
    run = RunDir.open(out)
    assert (run.table("test_metrics").n_boot == 50).all()  # the files of this very evaluation
    _check_final_run(_new_final_run(uri, before), run, uri, tmp_path)
    assert "MLflow: final/simple_cnn logged to experiment 'tracked'" in " ".join(capsys.readouterr().out.split())


@pytest.mark.slow  # a second refit in a child process that imports TensorFlow again (20-30 s on 2 busy cores)
def test_the_evaluation_that_ends_a_search_is_logged(tracked_search, capfd, tmp_path):
    out, uri, space = tracked_search
    for name in ("final.json", "test_metrics.csv", "test_predictions.csv"):  # as if the search had just ended
        (out / name).unlink(missing_ok=True)
    before = {r.info.run_id for r in _runs(uri, STUDY)}
    assert main(_search_args(out, space, uri)) == 0  # budget met: straight to the held-out evaluation
    assert "MLflow: final/simple_cnn logged" in " ".join(capfd.readouterr().out.split())  # the child's line
    run = RunDir.open(out)
    assert (run.table("test_metrics").n_boot == 1000).all()
    _check_final_run(_new_final_run(uri, before), run, uri, tmp_path)


def test_pruned_failed_and_surplus_trials_do_not_break_the_callback(tmp_path, monkeypatch):
    """The callback on a real study: a pruned and a failed trial are logged without a value, a surplus
    one (stepped back before training) is not logged, and a store gone mid-search is reported, not raised."""
    from bench.search import tracking

    for key in tracking.QUIET_ENV:
        monkeypatch.delenv(key, raising=False)
    uri = (tmp_path / "mlruns").as_uri()
    tracking.check(uri)
    assert all(os.environ[k] == v for k, v in tracking.QUIET_ENV.items())  # set by bench itself
    errors: list[tuple[int, str]] = []
    logger = tracking.trial_logger(uri, metric="auc", dataset="ds", study="s1", run_dir=str(tmp_path),
                                   on_error=lambda n, e: errors.append((n, e)))
    study = optuna.create_study(study_name="s1", direction="maximize")

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("config", {"backbone": "simple_cnn", "x": x})
        trial.set_user_attr("fold_values", [0.5, 0.7])
        trial.set_user_attr("cv_mean", {"auc": 0.6, "accuracy": 0.55})
        if trial.number == 1:
            trial.set_user_attr("pruned_at_fold", 1)
            raise optuna.TrialPruned()
        if trial.number == 2:
            trial.set_user_attr("fail_reason", "NaN loss")
            raise RuntimeError("NaN loss")
        if trial.number == 3:
            trial.set_user_attr("surplus", True)
            raise RuntimeError("surplus")
        return 0.6

    with _no_network():
        study.optimize(objective, n_trials=4, catch=(Exception,), callbacks=[logger])
    assert errors == []
    runs = {r.info.run_name: r for r in _runs(uri, "s1")}
    assert set(runs) == {"trial/0", "trial/1", "trial/2"}
    assert runs["trial/0"].data.metrics["cv_auc"] == 0.6 and runs["trial/0"].data.metrics["cv_accuracy"] == 0.55
    assert runs["trial/1"].data.tags["state"] == "PRUNED" and runs["trial/1"].data.tags["pruned_at_fold"] == "1"
    assert "cv_auc" not in runs["trial/1"].data.metrics and "cv_accuracy" not in runs["trial/1"].data.metrics
    assert runs["trial/2"].data.tags["state"] == "FAIL" and runs["trial/2"].data.tags["fail_reason"] == "NaN loss"
    for name in ("trial/0", "trial/1", "trial/2"):
        assert runs[name].data.params["x"] == str(study.trials[int(name[-1])].params["x"])
    # The store disappears mid-search: the trial still finishes, the error is reported.
    store = tmp_path / "mlruns"
    store.rename(tmp_path / "gone")
    store.write_text("not a folder")
    study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[logger])
    assert study.trials[-1].state == TrialState.COMPLETE
    assert [n for n, _ in errors] == [4]


def test_missing_mlflow_is_named_with_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError
    uri = (tmp_path / "mlruns").as_uri()
    assert main(["run", "--dataset", "pneumonia-demo", "--trials", "1", "--out", str(tmp_path / "run"),
                 "--mlflow", uri]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "mlflow package is not installed" in err and "pip install -e '.[tracking]'" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()
    monkeypatch.setenv("BENCH_MLFLOW_URI", uri)
    assert main(["final", "--run", str(tmp_path / "run")]) == 2
    assert "pip install -e '.[tracking]'" in capsys.readouterr().err


def test_a_bad_tracking_uri_fails_before_the_search(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    closed = socket.socket()  # a local port nobody listens on
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    for uri, words in (((blocker / "mlruns").as_uri(), "Give a folder you can write"),
                       (f"http://127.0.0.1:{port}", "that the server is up")):
        out = tmp_path / "run"
        code = main(["run", "--dataset", "pneumonia-demo", "--trials", "1", "--out", str(out), "--mlflow", uri])
        err = " ".join(capsys.readouterr().err.split())
        assert code == 2 and f"--mlflow {uri}: cannot use this MLflow tracking store" in err and words in err, err
        assert "Traceback" not in err and not out.exists()  # refused before anything was prepared
    code = main(["run", "--dataset", "pneumonia-demo", "--trials", "1", "--engine", "kerastuner",
                 "--mlflow", (tmp_path / "ok").as_uri()])
    assert code == 2 and "--engine optuna" in capsys.readouterr().err
