"""Faults a user meets: killed writers, a full disk, Ctrl-C, races between processes, noisy frameworks.

Real files and real processes throughout. The disk-full cases mount a small tmpfs, so the kernel
itself says "No space left on device"; that needs root (as on the development machine), and
where mounting is refused they are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from bench.atomic import atomic_path, write_text_atomic
from bench.cli import main
from bench.data import cache as image_cache
from bench.data.fetch import safe_extract
from bench.data.registry import resolve
from bench.data.sources import build_index
from bench.errors import DataError
from bench.results import RunDir
from tests.conftest import REPO
from tests.test_export import bench_env, final_run  # noqa: F401 (fixture)
from tests.test_search import (
    TINY_SPACE,
    _check_shared_budget,
    _two_workers,
    bench_process,
    run_args,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)
ENV = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def tiny_space(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPACE)
    return path


@contextlib.contextmanager
def small_disk(path: Path, size: str):
    """A tmpfs of ``size`` at ``path``: a disk that really fills up."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}); the disk-full cases need one")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


def _complete(url: str) -> dict[int, float]:
    """Trial number -> value of the COMPLETE trials of the tiny study."""
    study = optuna.load_study(study_name="pneumonia-demo-tiny", storage=url)
    return {t.number: t.value for t in study.trials if t.state == TrialState.COMPLETE}


def _wait_for_trials(url: str, proc: subprocess.Popen) -> None:
    """Until the study has a complete trial."""
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.5)
        with contextlib.suppress(Exception):
            states = {t.state for t in optuna.load_study(study_name="pneumonia-demo-tiny", storage=url).trials}
            if TrialState.COMPLETE in states:
                return


def _rerun_completes_the_budget(args: list[str], url: str, before: dict[int, float], budget: int) -> None:
    rerun = bench_process(args)
    text = rerun.communicate(timeout=900)[0]
    assert rerun.returncode == 0, text
    study = optuna.load_study(study_name="pneumonia-demo-tiny", storage=url)
    assert len([t for t in study.trials if t.state == TrialState.COMPLETE]) == budget
    assert all(study.trials[n].value == v for n, v in before.items())  # finished trials intact
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]


# --------------------------------------------------------------------------- killed writers


def test_the_image_cache_removes_a_temporary_left_by_a_killed_writer(make_folder, tmp_path):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    code = ("import os, signal, sys\nfrom pathlib import Path\nfrom bench.atomic import atomic_path\n"
            "with atomic_path(Path(sys.argv[1]) / 'x.npy') as tmp:\n"
            "    tmp.write_bytes(b'0' * 100000)\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(cache_dir)], env=ENV)
    assert proc.returncode == -signal.SIGKILL
    (orphan,) = cache_dir.glob("*.tmp")
    with atomic_path(cache_dir / "y.npy") as live:  # a writer still at work (this process) keeps its own
        spec, root = resolve(str(make_folder({"a": 4, "b": 4})))
        built = image_cache.load_or_build(build_index(spec, root), 16, cache_dir=cache_dir)
        assert built.built and not orphan.exists() and live.exists()


def test_files_written_whole_get_the_mode_of_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run = RunDir.create(tmp_path / "runs", "ds", out=tmp_path / "run")
        run.write_manifest({"status": "running"})
        run.write_config(0, {"lr": 0.1})
        card = tmp_path / "m.card.json"  # model cards go through the same writer
        write_text_atomic(card, "{}")

        archive = tmp_path / "ds.zip"
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("a/x.txt", "x")
        target = tmp_path / "data" / "ds"
        target.parent.mkdir()
        safe_extract(archive, target)
    finally:
        os.umask(old)
    for path in (run.file("manifest"), run.file("config"), card):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
    assert stat.S_IMODE(target.stat().st_mode) == 0o755


# --------------------------------------------------------------------------- bench final killed mid-commit

# `bench final --run RUN`, killed (SIGKILL: no finally runs) the moment it is about to rename a
# file onto the name given: the gaps between writing a model and writing the record of it.
_KILLED_AT = """
import os, signal, sys
from pathlib import Path
replace = os.replace
def killing_replace(src, dst, *args, **kwargs):
    if Path(dst).name == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)
    return replace(src, dst, *args, **kwargs)
os.replace = killing_replace
from bench.cli import main
sys.exit(main(["final", "--run", sys.argv[2]]))
"""


def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize("killed_at", ["final.json", "simple_cnn.keras"])
def test_bench_final_killed_mid_commit_never_pairs_a_record_with_another_model(final_run, tmp_path, killed_at,
                                                                             capsys):
    # Before: the model was saved under its own name about 4 s before final.json; killed in that gap
    # the run held the new weights under the old record, and `bench export` wrote a card claiming the
    # old trial's configuration and held-out score over them, its sha256 check passing.
    run = tmp_path / "run"
    shutil.copytree(final_run, run)
    model = run / "models" / "simple_cnn.keras"
    before = _sha(model)
    env = {**bench_env(tmp_path), "PYTHONUNBUFFERED": "1"}
    killed = subprocess.run([sys.executable, "-c", _KILLED_AT, killed_at, str(run)], env=env,
                            capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-2000:] + killed.stderr[-2000:]
    out = tmp_path / "export" / "m.keras"
    code = main(["export", "--run", str(run), "--out", str(out)])
    err = " ".join(capsys.readouterr().err.split())
    if killed_at == "final.json":  # the record was not replaced: neither was the model it describes
        assert code == 0, err
        assert _sha(model) == before == _sha(out)
    else:  # the record is new, the model under its name the old one: refused, and said how to fix it
        assert code == 2 and not out.exists()
        assert f"{model} is not the model {run / 'final.json'} describes" in err
        assert "was interrupted" in err and f"Re-run `bench final --run {run} --backbone simple_cnn`" in err
        assert subprocess.run([sys.executable, "-m", "bench", "final", "--run", str(run)], env=env,
                              capture_output=True, text=True, timeout=600).returncode == 0
        assert main(["export", "--run", str(run), "--out", str(out)]) == 0
        assert _sha(out) == _sha(model) == json.loads((run / "final.json").read_text())[
            "backbones"]["simple_cnn"]["model_sha256"]


# --------------------------------------------------------------------------- a run CSV torn mid-append


def _fold(run: RunDir, trial: int, fold: int, reason: str = "") -> None:
    """One fold's rows, through the writer a search uses (folds, metrics, predictions, history)."""
    predictions = pd.DataFrame({"path": [f"img{trial}-{fold}-{i}.png" for i in range(4)], "group": ["p1", "p1", "p2", "p3"],
                                "truth": ["a", "b", "a", "b"], "target": [0, 1, 0, 1],
                                "p_a": [0.9, 0.2, 0.7, 0.4], "p_b": [0.1, 0.8, 0.3, 0.6]})
    run.append_fold(trial=trial, fold=fold, backbone="simple_cnn", status="ok" if not reason else "failed",
                    info={"epochs": 1, "reason": reason}, metrics={"auc": 0.75},
                    predictions=predictions, history={"loss": [0.7, 0.6]})


def _trial(run: RunDir, number: int, reason: str | None = None) -> None:
    run.append_trial({"number": number, "state": "FAIL" if reason else "COMPLETE", "value": None if reason else 0.8,
                      "backbone": "simple_cnn", "params": {"lr": 0.01}, "fail_reason": reason})


def _tear(path: Path, keep_of_last_row: float = 0.5) -> bytes:
    """Cut ``path`` inside its last row, as a writer killed mid-append (or a full disk) leaves it."""
    whole = path.read_bytes()
    start = whole.rstrip(b"\n").rfind(b"\n") + 1
    torn = whole[: start + int((len(whole) - start) * keep_of_last_row)]
    path.write_bytes(torn)
    return torn


@pytest.mark.parametrize("name", ["trials", "folds", "predictions"])
def test_a_run_csv_torn_mid_append_is_cut_back_and_the_resumed_search_appends_whole_rows(tmp_path, name, caplog):
    # Before: the resumed search glued its next row onto the torn one; pandas then read a row of the
    # wrong width (or failed), and the report dropped the run's confusion matrix and ROC.
    run = RunDir.create(tmp_path / "runs", "ds", out=tmp_path / "run")
    for n in range(2):
        _trial(run, n)
        _fold(run, n, 0)
    path = run.file(name)
    whole_rows = len(run.table(name))
    torn = _tear(path)
    caplog.set_level("WARNING", logger="bench.results")

    # A reader (the report, `bench export`) takes the complete rows and leaves the file alone.
    assert len(run.table(name)) == whole_rows - 1 and path.read_bytes() == torn
    assert "torn row" in caplog.text and not list(path.parent.glob(f"{path.name}.torn-*"))

    _trial(run, 2)  # the resumed search's next trial and fold
    _fold(run, 2, 0)
    (copy,) = path.parent.glob(f"{path.name}.torn-*")
    assert copy.read_bytes() == torn
    assert f"{path} ended in a torn row" in caplog.text and str(copy) in caplog.text
    table = run.table(name)
    assert len(table) == whole_rows - 1 + (4 if name == "predictions" else 1)
    assert not table.isna().all(axis=1).any()
    if name == "predictions":
        assert table.p_a.dtype.kind == "f" and set(table.trial) == {0, 1, 2}
    else:
        assert table.iloc[-1].to_dict()["number" if name == "trials" else "trial"] == 2


def test_a_torn_row_inside_a_quoted_multiline_reason_is_cut_before_that_row(tmp_path):
    run = RunDir.create(tmp_path / "runs", "ds", out=tmp_path / "run")
    _trial(run, 0)
    _trial(run, 1, reason="ValueError: the loss is NaN\nat epoch 3\nof fold 1")
    whole = run.file("trials").read_bytes()
    run.file("trials").write_bytes(whole[: whole.index(b"at epoch") + 3])  # cut after a newline inside quotes
    _trial(run, 2)
    table = run.table("trials")
    assert list(table.number) == [0, 2] and list(table.state) == ["COMPLETE", "COMPLETE"]


def test_a_torn_header_is_cut_back_to_nothing_and_written_again(tmp_path):
    run = RunDir.create(tmp_path / "runs", "ds", out=tmp_path / "run")
    run.file("trials").write_bytes(b"number,sta")  # killed while writing the very first row's header
    assert run.table("trials").empty
    _trial(run, 0)
    assert list(run.table("trials").number) == [0]


# --------------------------------------------------------------------------- errors that end a command


def test_a_setup_error_marks_the_run_failed_with_its_reason(tmp_path, capsys):
    out = tmp_path / "run"
    # (A size the backbone cannot take is refused before the run directory exists: test_faults_23.)
    code = main(["cv", "--dataset", "pneumonia-demo", "--size", "32", "--backbone", "simple_cnn", "--weights", "none",
                 "--unfrozen", "500", "--folds", "2", "--epochs", "1", "--out", str(out)])
    assert code == 2
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "Unfrozen depth 500 is out of range" in manifest["reason"]


@pytest.mark.parametrize("content", [b"hello", b"PK\x05\x06" + b"\0" * 18])  # text; an empty zip
def test_a_keras_file_that_is_not_a_model_is_called_that(tmp_path, content):
    from bench.deploy.export import load_model

    path = tmp_path / "model.keras"
    path.write_bytes(content)
    with pytest.raises(DataError, match="is not a Keras model") as err:
        load_model(path)
    assert "not found" not in str(err.value).lower()


def test_tensorflow_start_up_lines_go_to_a_log_not_the_terminal(tmp_path):
    env = {**ENV, "BENCH_CACHE": str(tmp_path / "cache"), "BENCH_RUNS": str(tmp_path / "runs")}
    proc = subprocess.run([sys.executable, "-m", "bench", "cv", "--dataset", "pneumonia-demo", "--size", "16",
                           "--backbone", "simple_cnn", "--folds", "2", "--epochs", "1", "--augment", "none"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for noise in ("I0000", "E0000", "absl::InitializeLog", "retracing", "oneDNN"):
        assert noise not in proc.stderr, proc.stderr
    log = (tmp_path / "cache" / "logs" / "tensorflow.log").read_text()
    assert "I0000" in log or "oneDNN" in log


# --------------------------------------------------------------------------- a full disk


def test_a_full_disk_under_the_image_cache_is_a_clear_error_and_leaves_nothing_partial(tmp_path):
    # Before: the sparse memmap's pages hit the full disk and the process died of SIGBUS (exit 135).
    with small_disk(tmp_path / "small", "256k") as disk:
        env = {**ENV, "BENCH_CACHE": str(disk / "cache"), "BENCH_RUNS": str(tmp_path / "runs")}
        args = [sys.executable, "-m", "bench", "cv", "--dataset", "pneumonia-demo", "--size", "32", "--backbone",
                "simple_cnn", "--folds", "2", "--epochs", "1", "--augment", "none"]
        proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert "No space left in" in proc.stderr and "BENCH_CACHE" in proc.stderr and "Traceback" not in proc.stderr
        assert not list((disk / "cache").glob("*.npy*"))  # no partial cache, no temporary
        # the next run, with room, builds the cache and trains
        env["BENCH_CACHE"] = str(tmp_path / "roomy")
        assert subprocess.run(args, capture_output=True, text=True, env=env, timeout=300).returncode == 0


@pytest.mark.slow
def test_a_full_disk_while_bench_final_saves_the_model_leaves_no_partial_model_and_says_so(final_run, tmp_path):
    # Before: Keras left a partial models/simple_cnn.keras and the CLI said "files are written whole,
    # so nothing partial is read back", naming no file.
    run = tmp_path / "run"
    shutil.copytree(final_run, run)
    record = (run / "final.json").read_bytes()
    with small_disk(run / "models", "64k") as models:  # a disk too small for the model, and only for it
        proc = subprocess.run([sys.executable, "-m", "bench", "final", "--run", str(run)], env=bench_env(tmp_path),
                              capture_output=True, text=True, timeout=600)
        err = " ".join(proc.stderr.split())
        assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert f"no space left on the disk while writing {models / 'simple_cnn.keras'}" in err
        assert "nothing partial is read back" not in err and "Traceback" not in err
        assert list(models.iterdir()) == []  # no partial model, no temporary
    assert (run / "final.json").read_bytes() == record  # the old record, still with its (old) model
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "m.keras")]) == 0


@pytest.mark.slow
def test_a_full_disk_in_the_held_out_step_of_bench_run_reaches_the_terminal(tiny_space, tmp_path):
    # Before: under `bench run` the held-out step's stderr is TensorFlow's log, and the reason was only there.
    out = tmp_path / "run"
    with small_disk(out / "models", "64k") as models:
        args = [a for a in run_args(tiny_space, out, 1) if a != "--no-final"]
        proc = bench_process(args)
        text = proc.communicate(timeout=900)[0]
        flat = " ".join(text.split())
        assert proc.returncode != 0, text
        assert f"no space left on the disk while writing {models / 'simple_cnn.keras'}" in flat, text
        assert "The held-out evaluation failed" in flat and list(models.iterdir()) == []


# --------------------------------------------------------------------------- several processes, one study


def _trials_csv_once(out: Path, study_trials: list) -> None:
    rows = RunDir.open(out).table("trials")
    finished = {t.number for t in study_trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    recorded = rows[rows.state.isin(["COMPLETE", "PRUNED"])].number.tolist()
    assert sorted(recorded) == sorted(set(recorded)), rows  # no trial twice
    assert set(recorded) == finished


@pytest.mark.slow
def test_two_bench_run_on_one_sqlite_study_record_every_trial_once(tiny_space, tmp_path):
    trials, _ = _two_workers(f"sqlite:///{tmp_path / 'shared.db'}", tiny_space, tmp_path, 6)
    _check_shared_budget(trials, 6)
    seen = pd.concat([RunDir.open(tmp_path / f"machine{i}").table("trials") for i in range(2)])
    done = seen[seen.state == "COMPLETE"].number.tolist()
    assert sorted(done) == sorted(set(done)) and len(done) == 6  # each machine records its own trials, once


@pytest.mark.slow
def test_four_workers_for_twelve_trials_record_each_trial_once(tiny_space, tmp_path):
    out = tmp_path / "run"
    # 12 trials: three per worker, each worker taking trials after others finished theirs (20 took
    # 85 s of CI's 30 minutes for the same check)
    proc = bench_process(run_args(tiny_space, out, 12, "--jobs", "4"))
    text = proc.communicate(timeout=1500)[0]
    assert proc.returncode == 0, text
    url = f"sqlite:///{out / 'study.db'}"
    trials = optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url).get_trials()
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(numbers)))
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 12
    _trials_csv_once(out, trials)


# --------------------------------------------------------------------------- Ctrl-C


def _until_one_complete_and_one_running(proc: subprocess.Popen) -> str:
    """Read ``bench run``'s log lines until a trial has completed and another is running; the text read."""
    lines, started, complete = [], set(), set()
    for line in proc.stdout:
        lines.append(line)
        words = line.split()
        if len(words) > 3 and words[1] == "trial" and words[2].isdigit():
            (complete if words[3] == "complete:" else started if words[3] == "started" else set()).add(words[2])
        if complete and started - complete:
            break
    return "".join(lines)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


@pytest.mark.slow
def test_ctrl_c_during_a_trial_keeps_finished_trials_stops_workers_and_resumes(tiny_space, tmp_path):
    out = tmp_path / "run"
    # 12 epochs, no early stop: a trial takes seconds even on an idle machine (3 epochs did not:
    # all three trials finished between two looks at the study), so one is surely in flight at Ctrl-C.
    space = tmp_path / "slow.toml"
    space.write_text(TINY_SPACE.replace("epochs = 1", "epochs = 12\nearly_stopping = 0"))
    args = run_args(space, out, 3, "--jobs", "2")
    proc = bench_process(args)
    url = f"sqlite:///{out / 'study.db'}"
    # Read the search's own log rather than poll the study: on CI polling SQLite while two workers
    # wrote to it missed a 10 s window (each look failed or came too late), and the search finished.
    seen = _until_one_complete_and_one_running(proc)
    workers = _children(proc.pid)
    assert workers
    proc.send_signal(signal.SIGINT)
    text = seen + proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, text
    assert "Interrupted" in text and "Traceback" not in text
    time.sleep(1)
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()
                and "Z" not in (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0])]
    before = _complete(url)
    assert before
    assert json.loads((out / "manifest.json").read_text())["status"] == "interrupted"
    _rerun_completes_the_budget(args, url, before, 3)


# --------------------------------------------------------------------------- a journal cut mid-write


@pytest.mark.slow
def test_a_real_journal_cut_mid_record_is_repaired_and_the_search_goes_on(tiny_space, tmp_path):
    journal = tmp_path / "study.log"
    args = run_args(tiny_space, tmp_path / "run", 1, "--storage", f"journal:{journal}")
    first = bench_process(args)
    assert first.wait(600) == 0, first.stdout.read()
    whole = journal.read_bytes()
    last = whole.rstrip(b"\n").rfind(b"\n") + 1
    journal.write_bytes(whole[: last + (len(whole) - last) // 2])  # as a writer killed mid-record leaves it
    args[args.index("--trials") + 1] = "2"
    second = bench_process(args)
    text = second.communicate(timeout=600)[0]
    assert second.returncode == 0, text
    assert "incomplete record" in text and len(list(tmp_path.glob("study.log.torn-*"))) == 1
    status = subprocess.run([sys.executable, "-m", "bench", "status", "--storage", f"journal:{journal}"],
                            capture_output=True, text=True, env=ENV, timeout=120)
    assert status.returncode == 0 and "pneumonia-demo-tiny" in status.stdout, status.stderr


# --------------------------------------------------------------------------- --timeout


@pytest.mark.slow
def test_a_search_stopped_by_timeout_still_gets_its_held_out_evaluation(tiny_space, tmp_path):
    out = tmp_path / "run"
    # 40 s: long enough for the first trial to start (workers take ~10 s to set up), far short of 50 trials
    args = [a for a in run_args(tiny_space, out, 50, "--timeout", "40") if a != "--no-final"]
    proc = bench_process(args)
    text = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, text
    assert "--timeout 40 s reached" in text and "held-out evaluation uses the best trials so far" in text
    final = json.loads((out / "final.json").read_text())
    assert final["backbones"]["simple_cnn"]["trial"] is not None
    assert json.loads((out / "manifest.json").read_text())["status"] == "stopped"


@pytest.mark.slow
def test_a_disk_filling_up_mid_search_stops_it_clearly_and_the_rerun_keeps_finished_trials(tiny_space, tmp_path):
    # Before: the worker died at its next write, was replaced, died again ... for ever (exit only by kill).
    with small_disk(tmp_path / "small", "8m") as disk:
        out = disk / "run"
        args = run_args(tiny_space, out, 3)
        proc = bench_process(args)
        url = f"sqlite:///{out / 'study.db'}"
        _wait_for_trials(url, proc)
        filler = _fill(disk)
        text = proc.communicate(timeout=300)[0]
        assert proc.returncode not in (0, None), text
        assert "no space left" in text.lower() and "Traceback" not in text.split("stopped")[-1], text
        before = _complete(url)
        assert before
        filler.unlink()
        _rerun_completes_the_budget(args, url, before, 3)
        json.loads((out / "manifest.json").read_text())  # whole, not half-written
