"""Index, registry resolution, decode-once cache and patient-aware splits, on files made here."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.data import cache as image_cache
from bench.data import images
from bench.data.registry import resolve
from bench.data.sources import build_index
from bench.data.spec import DatasetSpec, GroupSpec, LayoutSpec, SourceSpec, TestSpec
from bench.data.splits import build_splits, merge_duplicates, stratified_group_fraction
from bench.errors import DataError
from bench.training.experiment import prepare_data
from tests.conftest import write_image


def folder_spec(**kw) -> DatasetSpec:
    return DatasetSpec(name="ds", title="t", task="multiclass", source=SourceSpec(kind="local", path="x"), **kw)


def write_manifest(root: Path, rows: list[tuple], header=("path", "label", "patient")) -> None:
    with open(root / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


# ---- index -----------------------------------------------------------------------------------
def test_folder_index_ignores_hidden_and_non_images(make_folder):
    root = make_folder({"a": 3, "b": 4})
    (root / "a" / ".hidden.png").write_bytes(b"x")
    (root / "a" / "._mac.png").write_bytes(b"x")
    (root / "b" / "notes.txt").write_text("hello")
    (root / ".DS_Store").write_text("x")
    idx = build_index(folder_spec(), root)
    assert len(idx) == 7 and idx.classes == ("a", "b")
    assert idx.counts() == {"a": 3, "b": 4}
    assert all(not Path(p).name.startswith(".") for p in idx.paths)
    assert "b/notes.txt" in idx.ignored


def test_nested_tree_uses_leaf_or_top_folder(tmp_path):
    root = tmp_path / "tree"
    for cls in ("x", "y"):
        for i in range(2):
            write_image(root / "upper" / "findings" / cls / f"{i}.png", 50)
            write_image(root / cls.upper() / "images" / f"{i}.png", 50)
            write_image(root / cls.upper() / "masks" / f"{i}.png", 50)
    leaf = build_index(folder_spec(layout=LayoutSpec(ignore=("*/masks/*", "*/images/*"))), root)
    assert leaf.classes == ("x", "y") and len(leaf) == 4
    top = build_index(folder_spec(layout=LayoutSpec(class_level=0, ignore=("*/masks/*", "upper/*"))), root)
    assert top.classes == ("X", "Y") and len(top) == 4


def test_official_test_folder_and_filename_groups(tmp_path):
    root = tmp_path / "chest_xray"
    for split in ("train", "test"):
        for cls, stem in (("NORMAL", "IM-00{0}-0001.jpeg"), ("PNEUMONIA", "person{0}_bacteria_1.jpeg")):
            for i in range(3):
                write_image(root / split / cls / stem.format(i + (10 if split == "test" else 20)), 80)
    spec = folder_spec(groups=GroupSpec(kind="regex", pattern=r"^(person\d+|NORMAL2-IM-\d+|IM-\d+)"),
                       test=TestSpec(kind="folder", folder="test"))
    idx = build_index(spec, root)
    assert idx.classes == ("NORMAL", "PNEUMONIA")
    assert idx.official_test.sum() == 6
    assert all(g.startswith(("IM-", "person")) and "_" not in g for g in idx.groups)


def test_manifest_layout_with_groups_and_test_column(make_folder):
    root = make_folder({"a": 4, "b": 4})
    rows = [(f"{c}/p{i:03d}_{c}.png", c, f"pt{i // 2}", "test" if i == 0 else "train") for c in "ab" for i in range(4)]
    write_manifest(root, rows, ("path", "label", "patient", "split"))
    spec = folder_spec(layout=LayoutSpec(kind="manifest"), groups=GroupSpec(kind="column", column="patient"),
                       test=TestSpec(kind="column", column="split", value="test"))
    idx = build_index(spec, root)
    assert len(set(idx.groups)) == 2 and idx.official_test.sum() == 2


# ---- bad input: each a DataError naming the problem -----------------------------------------
def test_unknown_dataset_suggests_close_matches():
    with pytest.raises(DataError, match=r"Unknown dataset 'pneumonia-dem'.*'pneumonia-demo'"):
        resolve("pneumonia-dem")


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        resolve(str(tmp_path / "nowhere"))


def test_empty_folder(tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        build_index(folder_spec(), tmp_path / "empty")


def test_single_class(make_folder):
    root = make_folder({"only": 5})
    with pytest.raises(DataError, match="all 5 images are of one class \\('only'\\)"):
        build_index(folder_spec(), root)


def test_manifest_label_with_no_file(make_folder):
    root = make_folder({"a": 2, "b": 2})
    write_manifest(root, [("a/p000_a.png", "a", "1"), ("a/ghost.png", "a", "2"), ("b/p000_b.png", "b", "3")])
    with pytest.raises(DataError, match=r"manifest.csv, line 3: label 'a' names 'a/ghost.png', but there is no such file"):
        build_index(folder_spec(layout=LayoutSpec(kind="manifest")), root)


def test_manifest_path_outside_root(make_folder, tmp_path):
    root = make_folder({"a": 2, "b": 2})
    write_image(tmp_path / "secret.png", 10)
    write_manifest(root, [("a/p000_a.png", "a", "1"), ("../secret.png", "b", "2")])
    with pytest.raises(DataError, match=r"line 3: path '../secret.png' lies outside the dataset folder"):
        build_index(folder_spec(layout=LayoutSpec(kind="manifest")), root)


def test_class_with_fewer_images_than_folds(make_folder):
    root = make_folder({"big": 12, "small": 3})
    with pytest.raises(DataError, match=r"Class 'small' has \d image\(s\).*fewer than --folds 5"):
        prepare_data(str(root), folds=5, size=16, test_fraction=0.2)


def test_unreadable_file_is_skipped_and_counted_or_fails_strict(make_folder):
    root = make_folder({"a": 6, "b": 6})
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    data = prepare_data(str(root), folds=2, size=16)
    assert len(data.index) == 12 and data.skipped[0][0] == "a/broken.png"
    assert data.summary()["dataset"]["skipped"][0][0] == "a/broken.png"
    with pytest.raises(DataError, match=r"(?s)1 unreadable image file\(s\).*broken.png"):
        prepare_data(str(root), folds=2, size=16, strict=True)


# ---- cache -------------------------------------------------------------------------------------
def test_cache_decodes_once_and_second_run_reads_it(make_folder, monkeypatch):
    root = make_folder({"a": 5, "b": 5})
    first = prepare_data(str(root), folds=2, size=16)
    assert first.cache.built

    def boom(*a, **k):
        raise AssertionError("decode path taken on a cached dataset")

    monkeypatch.setattr(images, "decode_many", boom)
    monkeypatch.setattr(images, "decode_image", boom)
    second = prepare_data(str(root), folds=2, size=16)
    assert not second.cache.built
    assert isinstance(second.cache.array, np.memmap)
    np.testing.assert_array_equal(first.images, second.images)


def test_cache_is_invalidated_by_a_changed_file(make_folder):
    root = make_folder({"a": 4, "b": 4})
    spec = folder_spec()
    a = image_cache.load_or_build(build_index(spec, root), 16)
    target = root / "a" / "p000_a.png"
    write_image(target, 250)
    os.utime(target, ns=(1, 1))
    b = image_cache.load_or_build(build_index(spec, root), 16)
    assert b.built and a.key != b.key
    c = image_cache.load_or_build(build_index(spec, root), 32)
    assert c.built and c.array.shape[1:] == (32, 32, 3)


def test_two_processes_building_the_same_cache(make_folder, isolated_dirs):
    root = make_folder({"a": 40, "b": 40}, size=64)
    code = (
        "import sys, json; from pathlib import Path\n"
        "from bench.data.registry import resolve; from bench.data.sources import build_index\n"
        "from bench.data.cache import load_or_build\n"
        "spec, r = resolve(sys.argv[1]); c = load_or_build(build_index(spec, r), 48)\n"
        "print(json.dumps([c.built, int(c.array.sum())]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], stdout=subprocess.PIPE, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].decode().strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    results = [eval(o.replace("true", "True").replace("false", "False")) for o in outs]
    assert sorted(r[0] for r in results) == [False, True]  # exactly one process decoded
    assert results[0][1] == results[1][1]
    leftovers = [p for p in Path(os.environ["BENCH_CACHE"]).iterdir() if p.suffix == ".tmp"]
    assert not leftovers


# ---- splits ------------------------------------------------------------------------------------
def test_duplicates_are_merged_into_one_group():
    groups = ("p1", "p2", "p3", "p4")
    hashes = ("h1", "h2", "h1", "h4")  # p3's image duplicates p1's
    ids, dups, merged = merge_duplicates(groups, hashes)
    assert dups == 1 and merged == 1 and ids[0] == ids[2] and len(set(ids)) == 3


def test_fraction_split_is_stratified_and_grouped():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [300, 200, 100])
    groups = np.array([f"{y}-{i // 3}" for i, y in enumerate(labels)])
    _, ids = np.unique(groups, return_inverse=True)
    test = stratified_group_fraction(labels, ids, 0.2, seed=rng.integers(100))
    for c, n in ((0, 300), (1, 200), (2, 100)):
        assert abs(test[labels == c].sum() - 0.2 * n) <= 3
    assert not set(ids[test]) & set(ids[~test])


def test_folds_never_share_a_group_and_cover_every_class():
    labels = np.repeat([0, 1], [120, 80])
    groups = tuple(f"pt{i // 4}" for i in range(200))
    splits = build_splits(labels, groups, tuple(str(i) for i in range(200)), ("a", "b"), folds=5, seed=3)
    assert (splits.fold[splits.test] == -1).all() and (splits.fold[~splits.test] >= 0).all()
    for k in range(5):
        train, val = splits.fold_masks(k)
        assert not set(splits.groups[train]) & set(splits.groups[val])
        assert set(labels[val]) == {0, 1}
    assert not set(splits.groups[splits.test]) & set(splits.groups[~splits.test])


def test_no_patient_in_two_folds_on_the_real_xrays(real_xrays):
    data = prepare_data(str(real_xrays), folds=5, size=32)
    assert data.spec.groups.kind == "column" and data.spec.groups.column == "patient"
    assert len(data.index) == 976
    n_patients = len(set(data.index.groups))
    assert n_patients == 447 + 201
    patient = np.array(data.index.groups)
    where = {}
    for p, f in zip(patient, data.splits.fold):
        where.setdefault(p, set()).add(int(f))
    assert all(len(folds) == 1 for folds in where.values())  # test (-1) included
