"""Every command-line number is checked where it enters: exit 2, the option and the value named, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bench.cli import main
from tests.conftest import REPO

CV = ["cv", "--dataset", "pneumonia-demo"]
RUN = ["run", "--dataset", "pneumonia-demo", "--trials", "1"]

BAD = [
    (CV, "--size", "0"), (CV, "--size", "-5"), (CV, "--size", "abc"),
    (CV, "--test-fraction", "0"), (CV, "--test-fraction", "-0.5"), (CV, "--test-fraction", "nan"),
    (CV, "--test-fraction", "1"), (CV, "--folds", "1"), (CV, "--folds", "0"), (CV, "--seed", "-1"),
    (CV, "--epochs", "0"), (CV, "--batch-size", "-2"), (CV, "--lr", "0"), (CV, "--lr", "inf"),
    (CV, "--dropout", "1.5"), (CV, "--label-smoothing", "-0.1"), (CV, "--patience", "-1"),
    (RUN, "--size", "0"), (RUN, "--test-fraction", "nan"), (RUN, "--folds", "1"), (RUN, "--jobs", "0"),
    (RUN, "--timeout", "-1"), (RUN, "--timeout", "nan"), (RUN, "--trial-timeout", "0"),
    (RUN, "--max-failures", "0"), (RUN, "--heartbeat", "0"),
    (["run", "--dataset", "pneumonia-demo"], "--trials", "0"),
    (["backbones"], "--size", "0"), (["fetch", "histo"], "--max-gb", "-1"), (["fetch", "histo"], "--size", "0"),
    (["final", "--run", "x"], "--boot", "0"),
    (["predict", "m.keras", "x.png"], "--batch-size", "0"), (["predict", "m.keras", "x.png"], "--show", "-1"),
    (["explain", "m.keras", "x.png", "--out", "o"], "--display-size", "0"),
]


@pytest.mark.parametrize("command, option, value", BAD, ids=[f"{c[0]} {o} {v}" for c, o, v in BAD])
def test_bad_values_are_refused_alike_in_every_command(capsys, command, option, value):
    with pytest.raises(SystemExit) as exc:
        main([*command, option, value])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert f"argument {option}:" in err and repr(value) in err, err
    assert "Traceback" not in err


def test_a_real_process_refuses_size_zero_before_training(tmp_path):
    # Before the fix `bench cv --size 0` trained at the dataset's 224 px and exited 0.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bench", "cv", "--dataset", "pneumonia-demo", "--size", "0",
                           "--backbone", "simple_cnn", "--epochs", "1", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "argument --size: must be a positive whole number, got '0'" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "run").exists()


def test_good_values_still_parse():
    from bench.cli import build_parser

    args = build_parser().parse_args([*CV, "--size", "32", "--test-fraction", "0.25", "--folds", "2", "--lr", "1e-4",
                                      "--dropout", "0", "--seed", "0"])
    assert (args.size, args.test_fraction, args.folds, args.lr, args.dropout) == (32, 0.25, 2, 1e-4, 0.0)
