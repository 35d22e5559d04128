"""Validation protocols (issue 11, section 3): k-fold, one hold-out split, the published validation
split; each on a small registry entry, group-aware, recorded in the manifest and rebuilt from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.data.splits import Protocol
from bench.errors import ConfigError, DataError
from bench.results import RunDir
from bench.search.pruners import make_pruner
from bench.training.experiment import prepare_data, prepare_data_from_manifest
from tests.conftest import write_image
from tests.test_search import TINY_SPACE

ENTRY = """
[tiny]
title = "Two patients' worth of images each, with a published split column"
task = "binary"
classes = ["a", "b"]
source = {{ kind = "local", path = "{root}" }}
layout = {{ kind = "manifest", file = "manifest.csv" }}
groups = {{ kind = "column", column = "patient" }}
test = {{ kind = "column", column = "split", value = "test" }}
{validation}
"""
VALIDATION = 'validation = { kind = "column", column = "split", value = "val" }'


def tiny_registry(tmp_path: Path, validation: str = VALIDATION) -> Path:
    """40 patients of 2 images (one class each): patients 0-7 test, 8-15 val, the rest train; one
    image of val patient 8 is filed under train (as published splits sometimes do)."""
    root = tmp_path / "tiny"
    rows = ["path,label,patient,split"]
    for p in range(40):
        label = "ab"[p % 2]
        for i in range(2):
            split = "test" if p < 8 else "val" if p < 16 and not (p == 8 and i == 1) else "train"
            name = f"{label}/p{p:02d}_{i}.png"
            write_image(root / name, 60 + 120 * (p % 2), noise_seed=100 * p + i)
            rows.append(f"{name},{label},P{p},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    reg = tmp_path / "datasets.toml"
    reg.write_text(ENTRY.format(root=root, validation=validation))
    return reg


def sides(data) -> tuple[np.ndarray, np.ndarray]:
    return data.splits.fold_masks(0)


def test_holdout_is_one_stratified_group_aware_split_recorded_and_rebuilt(tmp_path):
    data = prepare_data("tiny", registry=tiny_registry(tmp_path), size=16, validation="holdout:0.25")
    train, val = sides(data)
    s, labels = data.splits, data.index.labels
    assert s.folds == 1 and s.protocol == "holdout:0.25"
    assert not (train & val).any() and (train | val).sum() == s.cv.sum() == 64
    for c in (0, 1):  # about a quarter of each class's CV images
        assert (val & (labels == c)).sum() == pytest.approx(0.25 * (s.cv & (labels == c)).sum(), abs=2)
    assert not set(s.groups[train]) & set(s.groups[val])  # no patient on both sides
    summary = data.summary()
    assert summary["data"]["validation"] == "holdout:0.25"
    assert summary["split"]["protocol_label"] == f"hold-out 25% ({int(val.sum())} images, {int(val.sum()) // 2} patients)"
    again = prepare_data_from_manifest(summary)
    assert again.splits_digest == data.splits_digest and again.splits.protocol == "holdout:0.25"


def test_official_scores_the_published_validation_split_and_keeps_patients_whole(tmp_path):
    data = prepare_data("tiny", registry=tiny_registry(tmp_path), size=16, validation="official")
    train, val = sides(data)
    s = data.splits
    published = np.array(["/p" in p and 8 <= int(p.split("/p")[1][:2]) < 16 and p != "a/p08_1.png"
                          for p in data.index.paths])
    assert s.folds == 1 and np.array_equal(val, published)
    assert not set(s.groups[train]) & set(s.groups[val])
    # Patient 8's image filed under train is out of training, with its reason.
    leftover = np.array([p == "a/p08_1.png" for p in data.index.paths])
    assert s.excluded[leftover].all() and s.excluded_because()[leftover][0].endswith("official validation split")
    assert any("validation split" in line for line in data.split_lines())
    assert data.summary()["split"]["protocol"] == "official"


def test_official_without_a_published_split_names_the_entry_and_the_fix(tmp_path):
    with pytest.raises(DataError, match=r"entry 'tiny' names no published validation split.*validation = "):
        prepare_data("tiny", registry=tiny_registry(tmp_path, validation=""), size=16, validation="official")


def test_kfold_stays_the_default_and_bad_protocols_are_config_errors(tmp_path):
    data = prepare_data("tiny", registry=tiny_registry(tmp_path), size=16, folds=3)
    assert data.splits.protocol == "kfold" and data.splits.folds == 3 and data.splits.describe() == "3-fold CV"
    assert "protocol_label" in data.summary()["split"]
    assert str(Protocol.parse("holdout")) == "holdout:0.2"
    for bad in ("holdout:1.5", "holdout:x", "official:0.2", "loo"):
        with pytest.raises(ConfigError, match="--validation"):
            Protocol.parse(bad)


def test_a_fold_score_pruner_is_refused_on_a_single_split():
    with pytest.raises(ConfigError, match="--pruner wilcoxon .* never prune"):
        make_pruner("wilcoxon", folds=1)
    make_pruner("median", folds=1)  # the epoch rules work on one split




@pytest.mark.slow  # a real hold-out search, then k-fold re-training and a report: about a minute on 2 cores
def test_rescore_retrains_the_best_holdout_trials_by_kfold_and_the_report_ranks_on_them(tmp_path, capsys):
    space = tmp_path / "tiny.toml"
    space.write_text(TINY_SPACE)
    out = tmp_path / "search"
    code = main(["run", "--dataset", "pneumonia-demo", "--space", str(space), "--trials", "3", "--validation",
                 "holdout:0.25", "--out", str(out), "--pruner", "none", "--no-final"])
    printed = capsys.readouterr().out
    assert code == 0, printed[-2000:]
    assert "hold-out 25% (" in printed
    search = RunDir.open(out)
    assert search.manifest()["split"]["protocol"] == "holdout:0.25"
    assert set(search.table("folds").fold) == {0}  # one scored split per trial
    trials = search.table("trials")
    best = trials.sort_values("value", ascending=False).number.head(2).tolist()

    assert main(["rescore", "--run", str(out), "--top", "2", "--folds", "3"]) == 0
    rescored = RunDir.open(out / "rescore-k3")
    manifest = rescored.manifest()
    assert manifest["split"]["protocol"] == "kfold" and manifest["split"]["folds"] == 3
    assert manifest["rescore"]["search_protocol"] == "holdout:0.25"
    folds = rescored.table("folds")
    assert sorted(set(folds.trial)) == sorted(best) and set(folds.fold) == {0, 1, 2}
    compared = pd.read_csv(rescored.path / "rescore.csv")
    assert sorted(compared.trial) == sorted(best) and compared.kfold_mean.between(0, 1).all()
    # The same held-out test set as the search's.
    was, now = search.table("splits"), rescored.table("splits")
    assert set(was.path[was.split == "test"]) == set(now.path[now.split == "test"])
    # A second rescore at the same k refuses to overwrite.
    assert main(["rescore", "--run", str(out), "--top", "2", "--folds", "3"]) == 2
    assert "not empty" in capsys.readouterr().err

    code = main(["report", "--run", str(rescored.path), "--out", str(tmp_path / "report"), "--quiet"])
    assert code == 0, capsys.readouterr().err[-2000:]
    assert "3-fold CV" in (tmp_path / "report" / "index.md").read_text()
