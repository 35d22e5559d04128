"""Official test splits that share patients with the rest, per-dataset default folds, small classes,
and data settings that survive from `bench run` to `bench final` (issue 10, points 1, 5 and 6)."""

from __future__ import annotations

import contextlib
import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.cli import main
from bench.errors import ConfigError, DataError
from bench.results import RunDir
from bench.training.experiment import prepare_data
from tests.conftest import REAL_XRAYS, write_image


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def cv_and_report(capsys, tmp_path: Path, dataset: str, reg: Path, *options: str) -> tuple[str, RunDir, str]:
    """A real one-epoch `bench cv` of simple_cnn on 2 folds, then `bench report` on it:
    (what cv printed, its run directory, the report's index.md)."""
    out = tmp_path / "run"
    code, printed, err = run_main(capsys, "cv", "--dataset", dataset, "--registry", str(reg), "--folds", "2",
                                  "--backbone", "simple_cnn", "--epochs", "1", "--augment", "none", "--out", str(out),
                                  *options)
    assert code == 0, err
    code, _, err = run_main(capsys, "report", "--run", str(out), "--out", str(tmp_path / "report"), "--quiet")
    assert code == 0, err
    return printed, RunDir.open(out), (tmp_path / "report" / "index.md").read_text()


def registry(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "datasets.toml"
    path.write_text(body)
    return path


# ---- point 1: the official test set keeps no patient in the CV pool ---------------------------------------

KERMANY_COLUMN = """
[xrays]
title = "The real X-rays, with Kermany's own train/test column"
task = "binary"
classes = ["NORMAL", "PNEUMONIA"]
source = {{ kind = "local", path = "{root}" }}
layout = {{ kind = "manifest", file = "manifest.csv" }}
groups = {{ kind = "column", column = "patient" }}
test = {{ kind = "column", column = "kermany_split", value = "test" }}
"""


def test_kermany_test_column_removes_exactly_the_straddling_patients_from_cv(tmp_path):
    reg = registry(tmp_path, KERMANY_COLUMN.format(root=REAL_XRAYS))
    # The expectation, from the manifest alone: patients with images on both sides of the column.
    m = pd.read_csv(REAL_XRAYS / "manifest.csv", dtype=str)
    in_test = m.kermany_split == "test"
    straddling = set(m.patient[in_test]) & set(m.patient[~in_test])
    expected = set(m.path[~in_test & m.patient.isin(straddling)])
    assert len(straddling) == 23 and len(expected) == 66  # the numbers the issue reports

    data = prepare_data("xrays", folds=5, size=16, registry=reg)
    paths = np.array(data.index.paths)
    s = data.splits
    assert set(paths[s.test]) == set(m.path[in_test])  # the published test set, untouched
    assert set(paths[s.excluded]) == expected
    assert set(paths[s.cv]) == set(m.path[~in_test]) - expected
    assert not set(s.groups[s.cv]) & set(s.groups[s.test])
    split = data.summary()["split"]
    assert (split["official_test"], split["shared_groups"], split["excluded_images"]) == ("clean", 23, 66)
    assert split["cv_images"] == 864 - 66 and split["test_images"] == 112
    assert data.split_lines() == ["removed 66 images of 23 patients from the CV pool: they also have images in "
                                  "the official test set"]

    kept = prepare_data("xrays", folds=5, size=16, registry=reg, official_test="as-published")
    assert not kept.splits.excluded.any() and int(kept.splits.cv.sum()) == 864
    assert kept.splits.shared_groups == 23 and kept.splits_digest != data.splits_digest


def synthetic_official_split(root: Path) -> dict[str, str]:
    """train/ and test/ folders of two classes, patients in file names; one patient straddles, and
    one training image copies the pixels of another patient's test image. Returns their paths."""
    for c, label in enumerate(("A", "B")):
        for p in range(6):
            for i in range(2):
                write_image(root / "train" / label / f"p{c}{p:02d}_{i}.png", 60 + 120 * c, noise_seed=100 * c + 10 * p + i)
        for p in range(6, 9):
            write_image(root / "test" / label / f"p{c}{p:02d}_0.png", 60 + 120 * c, noise_seed=100 * c + 10 * p)
    straddler = "train/A/p007_1.png"  # patient p007 also has test/A/p007_0.png
    write_image(root / straddler, 60, noise_seed=9999)
    duplicate = "train/B/p150_0.png"  # patient p150 has no test image, but the same pixels as one
    shutil.copy(root / "test" / "B" / "p106_0.png", root / duplicate)
    return {"straddler": straddler, "duplicate": duplicate}


SYNTHETIC = """
[official]
title = "train/ and test/ folders"
task = "binary"
classes = ["A", "B"]
image_size = 16
source = {{ kind = "local", path = "{root}" }}
layout = {{ kind = "folders" }}
groups = {{ kind = "regex", pattern = '^(p\\d+)_' }}
test = {{ kind = "folder", folder = "test" }}
"""


def test_a_straddling_patient_and_a_straddling_duplicate_leave_the_cv_pool(tmp_path):
    root = tmp_path / "official"
    leaks = synthetic_official_split(root)
    reg = registry(tmp_path, SYNTHETIC.format(root=root))
    data = prepare_data("official", folds=2, registry=reg)
    paths = np.array(data.index.paths)
    s = data.splits
    assert set(paths[s.test]) == {p for p in paths if p.startswith("test/")}  # test untouched
    assert set(paths[s.excluded]) == set(leaks.values())
    assert not set(paths[s.cv]) & set(leaks.values())
    assert (s.shared_groups, s.shared_images) == (2, 2)
    assert not set(s.groups[s.cv]) & set(s.groups[s.test])


def test_as_published_keeps_them_and_the_cli_manifest_and_report_warn(tmp_path, capsys):
    root = tmp_path / "official"
    leaks = synthetic_official_split(root)
    reg = registry(tmp_path, SYNTHETIC.format(root=root))
    printed, run, report = cv_and_report(capsys, tmp_path, "official", reg, "--official-test", "as-published")
    assert "CV and test share 2 patients (2 CV images; --official-test as-published)" in printed
    split = run.manifest()["split"]
    assert (split["official_test"], split["shared_groups"], split["excluded_images"]) == ("as-published", 2, 0)
    splits = run.table("splits")
    assert set(splits.loc[splits.split == "cv", "path"]) >= set(leaks.values())  # kept in CV
    assert set(splits.split) == {"cv", "test"}
    assert "CV and the held-out test set share 2 patients/groups (2 CV images)" in report


def test_clean_is_the_default_and_splits_csv_says_why(tmp_path, capsys):
    root = tmp_path / "official"
    leaks = synthetic_official_split(root)
    reg = registry(tmp_path, SYNTHETIC.format(root=root))
    printed, run, report = cv_and_report(capsys, tmp_path, "official", reg)
    assert "removed 2 images of 2 patients from the CV pool: they also have images in the official test set" in printed
    splits = run.table("splits").set_index("path")
    assert set(splits.index[splits.split == "excluded"]) == set(leaks.values())
    assert (splits.loc[list(leaks.values()), "fold"] == -1).all()
    assert splits.loc[list(leaks.values()), "excluded_because"].str.contains("test set").all()
    assert not set(run.table("predictions").path) & set(leaks.values())  # never scored, never trained on
    assert "2 images of 2 patients/groups left out of CV" in report and "share 2 patients" not in report


# ---- point 6: small classes and the dataset's default folds ------------------------------------------------

SMALL_CLASS = """
[small]
title = "one small class"
task = "multiclass"
image_size = 16
{folds}
source = {{ kind = "local", path = "{root}" }}
layout = {{ kind = "folders" }}
test = {{ kind = "folder", folder = "test" }}
"""


def small_class_folder(root: Path, rare: int) -> None:
    """Classes a and b of 8 training and 2 test images, c of ``rare`` training and 1 test image."""
    for c, (label, n) in enumerate((("a", 8), ("b", 8), ("c", rare))):
        for i in range(n):
            write_image(root / "train" / label / f"{label}{i}.png", 40 + 80 * c, noise_seed=100 * c + i)
        for i in range(2 if label != "c" else 1):
            write_image(root / "test" / label / f"{label}t{i}.png", 40 + 80 * c, noise_seed=1000 + 100 * c + i)


def test_a_class_too_small_for_the_folds_names_itself_and_the_largest_folds(tmp_path):
    small_class_folder(tmp_path / "d", rare=3)
    reg = registry(tmp_path, SMALL_CLASS.format(root=tmp_path / "d", folds=""))
    with pytest.raises(DataError) as err:
        prepare_data("small", registry=reg)  # the default 5 folds
    message = str(err.value)
    assert "Class 'c' has 3 image(s) from 3 image group(s)" in message and "fewer than --folds 5" in message
    assert "Use --folds 3 (the largest that works)" in message and "--min-class-images 4" in message


def test_a_class_too_small_even_for_two_folds_says_how_to_fix_it(tmp_path):
    small_class_folder(tmp_path / "d", rare=1)
    reg = registry(tmp_path, SMALL_CLASS.format(root=tmp_path / "d", folds=""))
    with pytest.raises(DataError) as err:
        prepare_data("small", folds=2, registry=reg)
    message = str(err.value)
    assert "Class 'c' has 1 image(s)" in message and "Not even 2 folds can work" in message
    assert "add images of 'c'" in message and "--min-class-images 2" in message
    assert "--folds 2 or fewer" not in message and "Use --folds" not in message


def test_min_class_images_drops_the_class_everywhere_and_renumbers(tmp_path, capsys):
    small_class_folder(tmp_path / "d", rare=3)
    reg = registry(tmp_path, SMALL_CLASS.format(root=tmp_path / "d", folds=""))
    data = prepare_data("small", registry=reg, min_class_images=4)
    assert data.index.classes == ("a", "b") and set(data.index.labels) == {0, 1}
    assert all(p.split("/")[1] == data.index.classes[y] for p, y in zip(data.index.paths, data.index.labels))
    assert len(data.index) == len(data.images) == 20 and int(data.splits.test.sum()) == 4  # c's test image gone
    assert data.splits.dropped_classes == {"c": {"cv_images": 3, "test_images": 1}}
    assert data.summary()["split"]["min_class_images"] == 4

    printed, run, report = cv_and_report(capsys, tmp_path, "small", reg, "--min-class-images", "4")
    assert "left out class 'c' (--min-class-images 4): 3 CV and 1 test images" in printed
    manifest = run.manifest()
    assert manifest["dataset"]["classes"] == ["a", "b"]
    assert manifest["split"]["dropped_classes"] == {"c": {"cv_images": 3, "test_images": 1}}
    assert "class 'c' dropped (--min-class-images 4): 3 CV and 1 test images" in report


def test_a_registry_entry_sets_the_default_folds(tmp_path):
    small_class_folder(tmp_path / "d", rare=3)
    reg = registry(tmp_path, SMALL_CLASS.format(root=tmp_path / "d", folds="folds = 3"))
    data = prepare_data("small", registry=reg)
    assert data.splits.folds == 3 and data.folds_from == "datasets.toml"
    assert data.summary()["split"]["folds_from"] == "datasets.toml"
    given = prepare_data("small", folds=2, registry=reg)
    assert given.splits.folds == 2 and given.folds_from == "--folds"
    bad = registry(tmp_path, SMALL_CLASS.format(root=tmp_path / "d", folds="folds = 1"))
    with pytest.raises(ConfigError, match=r"'folds' \(the default --folds\) must be at least 2, got 1"):
        prepare_data("small", registry=bad)


def test_gi23_defaults_to_its_published_two_folds():
    from bench.data.registry import registry as shipped

    assert shipped()["gi23"].folds == 2


# ---- point 5: a search's data settings reach bench final and bench cv --from-trial --------------------------

ONE_BACKBONE_SPACE = """
name = "one"
[objective]
metric = "balanced_accuracy"
[params]
backbone = "simple_cnn"
weights = "none"
size = 16
epochs = 1
augment = "none"
lr = 0.003
"""


@pytest.mark.slow  # a real search, refit and re-run: about 45 s on 2 cores
def test_search_with_group_regex_and_test_fraction_reaches_its_held_out_evaluation(tmp_path, capsys):
    # Without the regex every image is its own group; with it, patients: other folds, other test set.
    root = tmp_path / "pts"
    for c, label in enumerate(("a", "b")):
        for p in range(8):
            for i in range(2):
                write_image(root / label / f"pt{c}{p}-{i}.png", 60 + 120 * c, noise_seed=100 * c + 10 * p + i)
    space = tmp_path / "one.toml"
    space.write_text(ONE_BACKBONE_SPACE)
    out = tmp_path / "search"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["run", "--dataset", str(root), "--group-regex", r"^(pt\d+)-", "--test-fraction", "0.25",
                     "--space", str(space), "--trials", "1", "--folds", "2", "--pruner", "none", "--no-final",
                     "--out", str(out)])
    assert code == 0, printed.getvalue()[-3000:]
    data = RunDir.open(out).manifest()["data"]
    assert (data["group_regex"], data["test_fraction"], data["folds"]) == (r"^(pt\d+)-", 0.25, 2)

    code, final_out, err = run_main(capsys, "final", "--run", str(out), "--boot", "50")
    assert code == 0, err
    final = RunDir.open(out).final()["backbones"]["simple_cnn"]
    # Whole patients: 2 of 8 per class held out; the refit trains on the rest but its inner split.
    assert final["n_test"] == 8 and final["n_train"] + final["n_inner_val"] == 24 and final["n_inner_val"] > 0

    code, _, err = run_main(capsys, "cv", "--from-trial", "0", "--run", str(out), "--out", str(tmp_path / "again"))
    assert code == 0, err
    assert RunDir.open(tmp_path / "again").manifest()["split"]["digest"] == \
        RunDir.open(out).manifest()["split"]["digest"]
