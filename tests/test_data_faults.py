"""Bad input found by trying what a new user might (issue 14): links, manifests, file names.

Every case uses real files made here: real symlinks, real PNGs, real non-UTF-8 names on disk.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.data.registry import resolve
from bench.data.sources import build_index
from bench.deploy.predict import collect_images
from bench.errors import DataError
from bench.training.experiment import prepare_data
from tests.conftest import write_image


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


# ---- symbolic links -----------------------------------------------------------------------------
@pytest.fixture
def linked(make_folder, tmp_path) -> Path:
    """20 + 20 real images, a loop back to the root, a second route into a class, a link outside."""
    root = make_folder({"NORMAL": 20, "PNEUMONIA": 20})
    (root / "NORMAL" / "up").symlink_to("..")
    (root / "NORMAL" / "pn").symlink_to("../PNEUMONIA")
    outside = tmp_path / "elsewhere" / "NORMAL"
    for i in range(3):
        write_image(outside / f"x{i}.png", 90, noise_seed=500 + i)
    (root / "PNEUMONIA" / "more").symlink_to(outside)
    return root


def test_links_that_loop_or_repeat_a_class_are_not_followed(linked, capsys):
    spec, root = resolve(str(linked))
    index = build_index(spec, root)
    # Today: thousands of images and a third class `pn`; now the 40 real files, two classes.
    assert index.classes == ("NORMAL", "PNEUMONIA")
    assert index.counts() == {"NORMAL": 20, "PNEUMONIA": 20}
    passed = dict(index.passed_over)
    assert set(passed) == {"NORMAL/up", "NORMAL/pn", "PNEUMONIA/more"}
    assert "the dataset folder itself" in passed["NORMAL/up"]
    assert "PNEUMONIA, which is already listed" in passed["NORMAL/pn"]
    assert "outside the dataset folder" in passed["PNEUMONIA/more"]

    data = prepare_data(str(linked), folds=2, size=16)
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("warning: passed over") == 3 and "NORMAL/pn" in err
    summary = json.loads(json.dumps(data.summary()))
    assert summary["dataset"]["images"] == 40
    assert sorted(p for p, _ in summary["dataset"]["passed_over"]) == ["NORMAL/pn", "NORMAL/up", "PNEUMONIA/more"]


def test_predict_walks_folders_by_the_same_rule(linked):
    items, unreadable = collect_images([linked], ["NORMAL", "PNEUMONIA"])
    assert len(items) == 40
    assert sorted(it.truth for it in items) == ["NORMAL"] * 20 + ["PNEUMONIA"] * 20
    assert sorted(Path(p).relative_to(linked).as_posix() for p, _ in unreadable) == [
        "NORMAL/pn", "NORMAL/up", "PNEUMONIA/more"]


def test_a_link_to_a_file_counts_as_that_file(make_folder, capsys):
    # Folders of links into an image store are a common way to build a dataset: still allowed. A
    # link filing one image under both classes is then an exact duplicate with a label conflict.
    root = make_folder({"a": 6, "b": 6})
    (root / "b" / "from_a.png").symlink_to(root / "a" / "p000_a.png")
    data = prepare_data(str(root), folds=2, size=16)
    assert data.index.counts() == {"a": 6, "b": 7}
    assert [c.paths for c in data.conflicts] == [("a/p000_a.png", "b/from_a.png")]


# ---- manifests ----------------------------------------------------------------------------------
def write_manifest(root: Path, header: tuple[str, ...], rows: list[tuple]) -> Path:
    with open(root / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return root / "manifest.csv"


def test_a_manifest_with_other_column_names_is_rejected_not_ignored(make_folder, capsys):
    root = make_folder({"a": 3, "b": 3})
    write_manifest(root, ("file", "label", "patient"),
                   [(f"{c}/p{i:03d}_{c}.png", c, f"pat{i}") for c in "ab" for i in range(3)])
    with pytest.raises(DataError) as info:
        resolve(str(root))
    msg = str(info.value)
    assert "manifest.csv, line 1" in msg and "'file', 'label', 'patient'" in msg and "'path' is missing" in msg
    assert "path,label,patient" in msg and "rename or remove" in msg
    # Through the command line: a message and exit 2, not a run on folder names without patients.
    code, out, err = run_main(capsys, "cv", "--dataset", root, "--backbone", "simple_cnn", "--size", "32",
                              "--folds", "2", "--epochs", "1")
    assert code == 2 and "'path' is missing" in err and "Traceback" not in err


def test_a_manifest_listing_one_image_twice_names_both_lines(make_folder):
    root = make_folder({"a": 3, "b": 3})
    rows = [(f"{c}/p{i:03d}_{c}.png", c, f"pat{c}{i}") for c in "ab" for i in range(3)]
    rows.append(("./a/p001_a.png", "b", "patX"))  # the same file, spelt differently, under the other class
    write_manifest(root, ("path", "label", "patient"), rows)
    with pytest.raises(DataError) as info:
        build_index(*resolve(str(root)))
    msg = str(info.value)
    assert "line 8" in msg and "'./a/p001_a.png' is already listed on line 3" in msg


def test_identical_images_under_two_labels_are_reported_and_fail_strict(make_folder, capsys, tmp_path):
    root = make_folder({"a": 8, "b": 8})
    shutil.copy(root / "a" / "p002_a.png", root / "b" / "copy_of_a2.png")
    shutil.copy(root / "a" / "p005_a.png", root / "a" / "same_class_copy.png")  # a duplicate, no conflict
    code, out, err = run_main(capsys, "cv", "--dataset", root, "--backbone", "simple_cnn", "--size", "32",
                              "--folds", "2", "--epochs", "1", "--augment", "none", "--out", tmp_path / "run")
    assert code == 0, err
    assert "warning: identical images with different labels: a/p002_a.png (a), b/copy_of_a2.png (b)" in err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["dataset"]["label_conflicts"] == [
        {"paths": ["a/p002_a.png", "b/copy_of_a2.png"], "labels": ["a", "b"]}]
    assert manifest["dataset"]["duplicates"] == 2

    from bench.report.collect import collect
    from bench.report.tables import dataset_overview

    coll = collect([tmp_path / "run"])
    table = dataset_overview(coll, coll.datasets[0]).data.set_index("field")["value"]
    assert table["identical images with different labels"].startswith("1: a/p002_a.png (a) = b/copy_of_a2.png (b)")

    with pytest.raises(DataError, match=r"1 set\(s\) of identical images .* carry different labels \(--strict\)"):
        prepare_data(str(root), folds=2, size=32, strict=True)


# ---- file names that are not UTF-8 --------------------------------------------------------------
def test_non_utf8_names_are_reported_and_skipped_by_cv(make_folder, capsys, tmp_path):
    root = make_folder({"NORMAL": 10, "PNEUMONIA": 10})
    raw = os.fsencode(root)
    shutil.copy(root / "NORMAL" / "p000_NORMAL.png", raw + b"/NORMAL/caf\xe9.png")
    os.mkdir(raw + b"/PNEUMONIA/d\xfcsseldorf")
    shutil.copy(root / "PNEUMONIA" / "p000_PNEUMONIA.png", raw + b"/PNEUMONIA/d\xfcsseldorf/x.png")
    code, out, err = run_main(capsys, "cv", "--dataset", root, "--backbone", "simple_cnn", "--size", "32",
                              "--folds", "2", "--epochs", "1", "--augment", "none", "--out", tmp_path / "run")
    assert code == 0, err  # today: UnicodeEncodeError in the cache fingerprint
    assert "NORMAL/caf\\xe9.png" in err and "PNEUMONIA/d\\xfcsseldorf" in err and "not valid UTF-8" in err
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert sorted(p for p, _ in manifest["dataset"]["passed_over"]) == ["NORMAL/caf\\xe9.png", "PNEUMONIA/d\\xfcsseldorf"]
    assert manifest["dataset"]["images"] == 20
    splits = pd.read_csv(tmp_path / "run" / "splits.csv")
    assert len(splits) == 20


def test_an_output_file_is_replaced_whole_or_not_at_all(tmp_path):
    from bench.atomic import write_atomic

    target = tmp_path / "pred.csv"
    target.write_text("old,complete\n")

    def fails_half_way(f):
        f.write("path,predicted\n")
        f.write("caf\udce9.png,a\n")  # a surrogate cannot be written as UTF-8

    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, fails_half_way)
    assert target.read_text() == "old,complete\n"
    assert list(tmp_path.iterdir()) == [target]  # no temporary left behind
