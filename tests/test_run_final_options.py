"""The held-out step at the end of `bench run` takes `bench final`'s options, and a run directory is
self-contained: a copied or moved one reads its own study (issue 22, items 10 and 5)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.errors import DataError
from bench.results import RunDir
from bench.search.shared import LOCAL_STORAGE, shared_study

SPACE = """
name = "one"
[objective]
metric = "balanced_accuracy"
[params]
backbone = "simple_cnn"
size = 32
epochs = 1
augment = "none"
lr = 0.003
"""


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


@pytest.fixture(scope="module")
def searched(tmp_path_factory) -> Path:
    """One real trial of `bench run`, its held-out step asked for an operating point and flip TTA."""
    home = tmp_path_factory.mktemp("run-final-options")
    space = home / "one.toml"
    space.write_text(SPACE)
    out = home / "run"
    with pytest.MonkeyPatch.context() as mp:
        for var in ("BENCH_CACHE", "BENCH_RUNS", "BENCH_DATA"):
            mp.setenv(var, str(home / var.lower()))
        code = main(["run", "--dataset", "pneumonia-demo", "--space", str(space), "--trials", "1", "--folds", "2",
                     "--pruner", "none", "--out", str(out), "--operating-point", "sens=0.9", "--tta", "flip"])
    assert code == 0
    return out


@pytest.mark.slow
def test_bench_run_passes_operating_points_and_tta_to_its_held_out_step(searched, capsys):
    info = json.loads((searched / "final.json").read_text())["backbones"]["simple_cnn"]
    assert [t["point"] for t in info["operating_points"]] == ["sens=0.9"]
    assert [v["variant"] for v in info["variants"]] == ["refit+tta"]
    ops = pd.read_csv(searched / "operating_points.csv")
    assert set(ops.point) == {"sens=0.9"} and set(ops.split) == {"cv", "test"}
    assert set(pd.read_csv(searched / "test_variants.csv").variant) == {"refit+tta"}

    # Asking for them while skipping the step is a contradiction, said before any training.
    code, _, err = run_cli(capsys, "run", "--dataset", "pneumonia-demo", "--trials", "1", "--no-final", "--tta",
                           "flip", "--out", searched.parent / "never")
    assert code == 2 and "--no-final" in err and "bench final" in err
    assert not (searched.parent / "never").exists()


@pytest.mark.slow
def test_a_copied_or_moved_run_directory_reads_its_own_study(searched, tmp_path, capsys):
    manifest = json.loads((searched / "manifest.json").read_text())
    assert manifest["storage"] == LOCAL_STORAGE  # relative to the directory: a copy is self-contained
    copy = tmp_path / "copy"
    shutil.copytree(searched, copy)
    assert shared_study(RunDir(copy)) is None  # its own study.db, not the original's

    # A manifest of an older bench records the absolute path of the directory it was written in; once
    # that directory is moved away, `bench final` still reads the copy's own study.
    old = tmp_path / "old"
    shutil.copytree(searched, old)
    recorded = {**manifest, "storage": f"sqlite:///{(old / 'study.db').resolve()}"}
    (old / "manifest.json").write_text(json.dumps(recorded))
    moved = shutil.move(str(old), str(tmp_path / "moved"))
    assert shared_study(RunDir(Path(moved))) is None
    code, _, err = run_cli(capsys, "final", "--run", moved, "--boot", "20")
    assert code == 0, err
    assert not old.exists()  # nothing was created at the recorded place
    assert json.loads((Path(moved) / "final.json").read_text())["backbones"]["simple_cnn"]["trial"] == 0

    # Another study file recorded beside the copy's own: ambiguous, so a clear error naming --storage ...
    other = tmp_path / "elsewhere.db"
    shutil.copy(searched / "study.db", other)
    (copy / "manifest.json").write_text(json.dumps({**manifest, "storage": f"sqlite:///{other}"}))
    with pytest.raises(DataError, match=r"copied or moved.*--storage"):
        shared_study(RunDir(copy))
    code, _, err = run_cli(capsys, "final", "--run", copy, "--boot", "20")
    assert code == 2 and "--storage" in err and "elsewhere.db" in err
    # ... and an explicit --storage is used as given.
    study = shared_study(RunDir(copy), str(copy / "study.db"))
    assert study is not None and [t.number for t in study.trials] == [0]
    # A recorded file that is gone, with no study.db of the directory's own: said so, not created empty.
    (copy / "study.db").unlink()
    other.unlink()
    with pytest.raises(DataError, match="does not exist"):
        shared_study(RunDir(copy))
    assert not other.exists()
