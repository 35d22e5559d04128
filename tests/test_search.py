"""`bench run`: real searches on tiny configurations (simple_cnn, 32 px, 1 epoch, 2 folds)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from bench.cli import main
from bench.results import RunDir
from tests.postgres import postgres_url  # noqa: F401  (fixture: a real PostgreSQL server)

REPO = Path(__file__).resolve().parents[1]

TINY_SPACE = """
name = "tiny"
[objective]
metric = "balanced_accuracy"
[params]
backbone = "simple_cnn"
weights = "none"
size = 32
epochs = 1
augment = "none"
[params.lr]
type = "float"
low = 1e-3
high = 1e-2
log = true
"""


@pytest.fixture
def tiny_space(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPACE)
    return path


def run_args(space: Path, out: Path, trials: int, *extra: str) -> list[str]:
    return ["run", "--dataset", "pneumonia-demo", "--space", str(space), "--trials", str(trials), "--folds", "2",
            "--out", str(out), "--pruner", "none", "--no-final", *extra]


def bench_process(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "bench", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def load(out: Path) -> optuna.Study:
    url = f"sqlite:///{out / 'study.db'}"
    return optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)


def finished(study: optuna.Study) -> list:
    return [t for t in study.get_trials() if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


@pytest.mark.slow  # over 30 s on 2 cores: CI runs it with the slow suite
def test_search_then_resume_to_a_larger_budget(tiny_space, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(tiny_space, out, 2)) == 0
    text = capsys.readouterr().out
    assert "Best trial per backbone" in text and "simple_cnn" in text and str(out) in text
    study = load(out)
    first = {t.number: t.value for t in finished(study)}
    assert len(first) == 2
    assert main(run_args(tiny_space, out, 3)) == 0  # the same command, a larger budget: one more trial
    study = load(out)
    assert len(finished(study)) == 3
    assert {t.number: t.value for t in finished(study) if t.number in first} == first  # earlier trials intact
    assert main(run_args(tiny_space, out, 3)) == 0  # budget met: nothing to run
    assert "nothing to run" in capsys.readouterr().out
    run = RunDir.open(out)
    trials = run.table("trials")
    assert sorted(trials.number) == [0, 1, 2] and set(trials.state) == {"COMPLETE"}
    configs = run.configs()
    assert set(configs) == {0, 1, 2} and len({c["seed"] for c in configs.values()}) == 3
    metrics = run.table("metrics")
    for t in finished(study):
        folds = metrics[(metrics.trial == t.number) & (metrics.metric == "balanced_accuracy")].value
        assert len(folds) == 2 and t.value == pytest.approx(folds.mean())
        assert t.user_attrs["cv_mean"]["auc"] == pytest.approx(
            metrics[(metrics.trial == t.number) & (metrics.metric == "auc")].value.mean())
    manifest = run.manifest()
    assert manifest["kind"] == "search" and len(manifest["sessions"]) == 3
    assert manifest["environment"]["backend"] == "tensorflow"


def test_resume_refuses_a_changed_space_or_folds(tiny_space, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(tiny_space, out, 1)) == 0
    tiny_space.write_text(TINY_SPACE.replace("high = 1e-2", "high = 2e-2"))
    assert main(run_args(tiny_space, out, 2)) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "space_fingerprint" in err and "new --study name" in err
    tiny_space.write_text(TINY_SPACE)
    code = main(["run", "--dataset", "pneumonia-demo", "--space", str(tiny_space), "--trials", "2", "--folds", "3",
                 "--out", str(out)])
    assert code == 2 and "folds" in capsys.readouterr().err


@pytest.mark.slow  # over 30 s on 2 cores: CI runs it with the slow suite
def test_rerun_a_trial_exactly_with_cv_from_trial(tiny_space, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(run_args(tiny_space, out, 1)) == 0
    again = tmp_path / "again"
    assert main(["cv", "--from-trial", "0", "--run", str(out), "--out", str(again)]) == 0
    a = RunDir.open(out).table("metrics")
    b = RunDir.open(again).table("metrics")
    merged = a[a.trial == 0].merge(b, on=["fold", "metric"], suffixes=("_search", "_rerun"))
    assert len(merged) >= 16
    assert (merged.value_search - merged.value_rerun).abs().max() < 1e-6
    assert main(["cv", "--from-trial", "7", "--run", str(out)]) == 2
    assert "no trial 7" in capsys.readouterr().err


def test_a_bad_space_is_rejected_before_any_training(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(TINY_SPACE.replace("low = 1e-3", "low = 0"))
    code = main(run_args(bad, tmp_path / "run", 2))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "bad.toml" in err and "line" in err and "low" in err
    assert not (tmp_path / "run" / "study.db").exists()


def test_missing_optional_sampler_package_is_named(tiny_space, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    code = main(run_args(tiny_space, tmp_path / "run", 1, "--sampler", "gp"))
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "--sampler gp needs the package(s) torch" in err


def test_trial_timeout_and_max_failures_stop_the_search_with_reasons(tiny_space, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(run_args(tiny_space, out, 3, "--trial-timeout", "1", "--max-failures", "2"))
    text = capsys.readouterr().out
    assert code == 1
    assert "--max-failures 2 reached" in text and "timeout: exceeded --trial-timeout 1 s" in text
    trials = RunDir.open(out).table("trials")
    assert (trials.state == "FAIL").sum() >= 2 and trials.fail_reason.str.contains("timeout").all()


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _running_trial(out: Path):
    if not (out / "study.db").exists():
        return None
    try:
        study = load(out)
    except Exception:
        return None
    running = [t for t in study.get_trials() if t.state == TrialState.RUNNING and "worker" in t.user_attrs]
    return running[0] if running else None


@pytest.mark.slow
def test_sigkill_mid_trial_then_rerun_completes_the_budget(tiny_space, tmp_path):
    out = tmp_path / "run"
    space = tmp_path / "slow.toml"  # 3 epochs so that a trial is surely in flight when killed
    space.write_text(TINY_SPACE.replace("epochs = 1", "epochs = 3"))
    args = run_args(space, out, 4)
    proc = bench_process(args)
    # 1. Kill the worker in the middle of a trial: the supervisor fails it, re-queues it, replaces the worker.
    victim = _wait_for(lambda: _running_trial(out), 240, "a running trial")
    time.sleep(1.0)
    os.kill(victim.user_attrs["worker"]["pid"], signal.SIGKILL)
    # 2. Then kill the supervisor itself (kill -9) while a later trial runs.
    _wait_for(lambda: (t := _running_trial(out)) is not None and t.number > victim.number and t, 240,
              "a later running trial")
    completed_before = {t.number: t.value for t in load(out).get_trials() if t.state == TrialState.COMPLETE}
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    # 3. The same command again: stale trials are failed with a reason, the budget is completed.
    rerun = bench_process(args)
    output = rerun.communicate(timeout=600)[0]
    assert rerun.returncode == 0, output
    study = load(out)
    done = finished(study)
    assert len(done) == 4
    numbers = [t.number for t in study.get_trials()]
    assert len(numbers) == len(set(numbers))
    failed = [t for t in study.get_trials() if t.state == TrialState.FAIL]
    reasons = " | ".join(t.user_attrs.get("fail_reason", "") for t in failed)
    assert "killed by signal 9" in reasons and "died" in reasons, reasons
    retried = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == victim.number]
    # The killed trial's parameters as the storage kept them (the snapshot above may predate its suggestions).
    assert retried and retried[0].params == study.trials[victim.number].params
    for number, value in completed_before.items():  # completed trials intact
        assert study.trials[number].value == value and study.trials[number].state == TrialState.COMPLETE
    assert not [t for t in study.get_trials() if t.state == TrialState.RUNNING]


def _two_workers(storage: str, tiny_space: Path, tmp_path: Path, trials: int) -> tuple[list, list[str]]:
    procs = [bench_process(["run", "--dataset", "pneumonia-demo", "--space", str(tiny_space), "--trials", str(trials),
                            "--folds", "2", "--pruner", "none", "--storage", storage, "--study", "shared",
                            "--out", str(tmp_path / f"machine{i}")]) for i in range(2)]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text
    study = optuna.load_study(study_name="shared", storage=_storage_for_optuna(storage))
    return study.get_trials(), outputs


def _storage_for_optuna(storage: str):
    if storage.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        return JournalStorage(JournalFileBackend(storage[len("journal:"):]))
    return storage


def _check_shared_budget(trials: list, n: int) -> None:
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(numbers)))  # each number once, none lost
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(done) == n
    others = [t for t in trials if t not in done]
    assert all(t.user_attrs.get("surplus") for t in others), [t.user_attrs for t in others]
    hosts_pids = {(t.user_attrs["worker"]["pid"]) for t in done}
    assert len(hosts_pids) == 2  # both workers ran trials


@pytest.mark.slow
def test_two_bench_run_workers_share_a_journal_study(tiny_space, tmp_path):
    trials, _ = _two_workers(f"journal:{tmp_path / 'study.log'}", tiny_space, tmp_path, 6)
    _check_shared_budget(trials, 6)


@pytest.mark.slow
def test_two_machines_share_a_postgres_study(tiny_space, tmp_path, postgres_url):
    """Two "machines": separate process trees, each with its own BENCH_CACHE and BENCH_RUNS, one
    PostgreSQL study. Every trial runs once; the report merged from both run directories lists
    every trial of the study once with the study's values; `bench final` on one machine refits the
    best trial of the whole study, including trials the other machine ran."""
    password = postgres_url.split(":")[2].split("@")[0]
    machines = [tmp_path / f"machine{i}" for i in range(2)]
    args = ["run", "--dataset", "pneumonia-demo", "--space", str(tiny_space), "--trials", "6", "--folds", "2",
            "--pruner", "none", "--storage", postgres_url, "--study", "shared"]
    procs = [subprocess.Popen([sys.executable, "-m", "bench", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                                   "BENCH_CACHE": str(m / "cache"), "BENCH_RUNS": str(m / "runs")})
             for m in machines]
    outputs = [p.communicate(timeout=900)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text
        assert password not in text and "bench final --run" in text  # told to evaluate once, at the end
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    _check_shared_budget(study.get_trials(), 6)
    runs = [m / "runs" / "pneumonia-demo" / "shared" for m in machines]
    for m, run in zip(machines, runs):
        manifest = (run / "manifest.json").read_text()
        assert password not in manifest and "***" in json.loads(manifest)["storage"]
        assert any((m / "cache").iterdir())  # each machine decoded the images into its own cache
    mine = [set(pd.read_csv(run / "trials.csv").number) for run in runs]
    assert mine[0] and mine[1] and not mine[0] & mine[1]  # each machine's run directory: its own trials

    best = max(finished(study), key=lambda t: (t.value, -t.number))
    # The held-out evaluation once, at the end, on the machine that did NOT run the best trial
    # (the password from the environment).
    other = runs[0] if best.number in mine[1] else runs[1]
    final = subprocess.run([sys.executable, "-m", "bench", "final", "--run", str(other)], capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(REPO), "BENCH_STORAGE_PASSWORD": password})
    assert final.returncode == 0, final.stdout + final.stderr
    assert "best trials chosen among every machine's trials" in final.stdout
    assert json.loads((other / "final.json").read_text())["backbones"]["simple_cnn"]["trial"] == best.number

    # The report merged from both directories: every trial of the study once, with its value,
    # and the held-out numbers of the best.
    report = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "bench", "report", "--run", str(runs[0]), "--run", str(runs[1]),
                           "--out", str(report), "--strict"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stdout + done.stderr
    table = pd.read_csv(report / "tables" / "trials_pneumonia-demo_shared.csv")
    expected = {t.number: t.value for t in finished(study)}
    assert dict(zip(table.trial, table.value)) == pytest.approx(expected)
    board = pd.read_csv(report / "tables" / "leaderboard_pneumonia-demo.csv")
    assert board.trial.tolist() == [best.number] and board.objective_value.iloc[0] == pytest.approx(best.value)
    assert board.test_images.iloc[0] > 0

    status = subprocess.run([sys.executable, "-m", "bench", "status", "--storage", postgres_url],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert status.returncode == 0 and "shared" in status.stdout and password not in status.stdout + status.stderr


def test_command_lines_recorded_without_passwords():
    from bench.search.storage import redact_command

    line = redact_command(["bench", "run", "--storage", "postgresql://bench:hunter2@db/bench", "--trials", "5"])
    assert "hunter2" not in line and "bench:***@db" in line and "--trials 5" in line


@pytest.mark.slow  # the shared two-backbone search (about 2 minutes): CI runs it with the slow suite
def test_search_ends_with_the_held_out_evaluation(demo_search):
    out, text = demo_search
    run = RunDir.open(out)
    final = run.final()["backbones"]
    trials = run.table("trials")
    best = trials.sort_values("value", ascending=False).groupby("backbone").number.first().to_dict()
    assert set(final) == {"simple_cnn", "mobilenet_v2"}  # a new study tries every backbone first
    assert {b: info["trial"] for b, info in final.items()} == best  # the best trial of each backbone
    test_metrics = run.table("test_metrics")
    splits = run.table("splits")
    n_test = int((splits.split == "test").sum())
    assert set(test_metrics.split) == {"test"} and (test_metrics.n_images == n_test).all()
    bal = test_metrics[test_metrics.metric == "balanced_accuracy"]
    assert ((bal.low <= bal.value) & (bal.value <= bal.high)).all()
    preds = run.table("test_predictions")
    assert set(preds.path) == set(splits.loc[splits.split == "test", "path"])  # only held-out images
    assert not set(run.table("predictions").path) & set(preds.path)  # the search never saw them
    for info in final.values():
        assert (out / info["model"]).is_file() and info["refit_epochs"] >= 1
        # The refit ran the recipe CV scored: an inner split to stop on, the LR of every epoch kept.
        assert info["n_inner_val"] > 0 and info["n_train"] + info["n_inner_val"] == int((splits.fold >= 0).sum())
        assert len(info["history"]["learning_rate"]) == info["refit_epochs"] == len(info["history"]["val_loss"])
    assert "Held-out evaluation" in text  # the refit itself runs (and prints) in a child process
