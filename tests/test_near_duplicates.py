"""Near-duplicate audit and ``--dedupe near``, on image files made here (real decoding, real hashes)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cli import main
from bench.data.near import HASH_BITS, merge_groups, near_clusters
from bench.data.spec import DEFAULT_NEAR_THRESHOLD
from bench.training.audit import run_audit
from bench.training.experiment import prepare_data, prepare_data_from_manifest

SIZE = 64  # the cache size every test decodes at
BASES = 12  # distinct images; each comes with three near-copies


def _texture(seed: int, side: int = 96) -> np.ndarray:
    """A smooth random texture with a random bright shape: unrelated to any other seed's."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    arr = np.asarray(coarse.resize((side, side), Image.BICUBIC)).copy()
    y, x = rng.integers(10, side - 30, 2)
    h, w = rng.integers(10, 25, 2)
    arr[y:y + h, x:x + w] = 255 - arr[y:y + h, x:x + w]
    return arr


def _near_copies(arr: np.ndarray) -> dict[str, Image.Image]:
    """JPEG re-encoded, shifted by one pixel, and resized: other pixels, the same picture."""
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=70)
    shifted = np.roll(arr, 1, axis=1)
    shifted[:, 0] = arr[:, 0]
    return {"jpeg": Image.open(io.BytesIO(buf.getvalue())), "shift": Image.fromarray(shifted),
            "small": Image.fromarray(arr).resize((arr.shape[1] * 3 // 4, arr.shape[0] * 3 // 4), Image.BILINEAR)}


def make_near_dataset(root: Path, *, conflict: bool = False) -> Path:
    """``root/{a,b}/``: BASES textures, each with its three near-copies, plus lone images.

    With ``conflict``, base 0's JPEG copy is filed under the other class.
    """
    for b in range(BASES):
        label = "ab"[b % 2]
        arr = _texture(b)
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / label / f"base{b:02d}.png")
        for kind, image in _near_copies(arr).items():
            where = "ab"[(b + 1) % 2] if conflict and b == 0 and kind == "jpeg" else label
            (root / where).mkdir(parents=True, exist_ok=True)
            image.save(root / where / f"base{b:02d}_{kind}.png")
    for k in range(6):  # unrelated images with no copy
        Image.fromarray(_texture(1000 + k)).save(root / "ab"[k % 2] / f"lone{k}.png")
    return root


def test_near_copies_cluster_together_and_different_images_do_not(tmp_path):
    root = make_near_dataset(tmp_path / "ds")
    data = prepare_data(str(root), folds=2, size=SIZE)
    paths = data.index.paths
    # The copies really are other pixels: exact-duplicate grouping cannot catch them.
    assert data.splits.duplicates == 0
    cluster, _ = near_clusters(data.images, DEFAULT_NEAR_THRESHOLD)
    by_path = dict(zip(paths, cluster))
    ids = []
    for b in range(BASES):
        members = [by_path[p] for p in paths if Path(p).name.startswith(f"base{b:02d}")]
        assert len(members) == 4 and members[0] >= 0 and len(set(members)) == 1, (b, members)
        ids.append(members[0])
    assert len(set(ids)) == BASES  # no two different textures merged
    assert all(by_path[p] == -1 for p in paths if "lone" in p)


def test_audit_reports_label_conflicts_and_straddling_clusters(tmp_path, capsys):
    root = make_near_dataset(tmp_path / "ds", conflict=True)
    out = tmp_path / "audit"
    assert main(["audit", "--dataset", str(root), "--folds", "2", "--size", str(SIZE), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    with open(out / "near_duplicates.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * BASES
    clusters: dict[str, list[dict]] = {}
    for row in rows:
        clusters.setdefault(row["cluster"], []).append(row)
    conflicting = [c for c in clusters.values() if c[0]["label_conflict"] == "1"]
    assert len(conflicting) == 1
    assert {r["label"] for r in conflicting[0]} == {"a", "b"}
    assert all(Path(r["path"]).name.startswith("base00") for r in conflicting[0])
    # Worst first: the conflicting cluster is number 1 only if it also straddles; either way it
    # comes before every cluster that neither conflicts nor straddles.
    order = [int(c[0]["cluster"]) for c in clusters.values() if c[0]["label_conflict"] == "0" and c[0]["straddles"] == "0"]
    assert all(int(conflicting[0][0]["cluster"]) < n for n in order)
    for members in clusters.values():  # distances are to the cluster's first image, itself at 0
        assert int(members[0]["distance"]) == 0
        assert all(0 <= int(r["distance"]) <= DEFAULT_NEAR_THRESHOLD * 2 for r in members)
        sides = {r["split"] if r["split"] != "cv" else "fold " + r["fold"] for r in members}
        assert (members[0]["straddles"] == "1") == (len(sides) > 1)
    straddling = sum(c[0]["straddles"] == "1" for c in clusters.values())
    assert straddling > 0  # images alone in their groups: random folds split most clusters
    assert Image.open(out / "near_duplicates.png").size[0] > 200
    assert "conflicting clusters" in printed and f"{DEFAULT_NEAR_THRESHOLD} of {HASH_BITS}" in printed


def test_dedupe_near_keeps_each_cluster_on_one_side_and_the_manifest_records_it(tmp_path):
    root = make_near_dataset(tmp_path / "ds")
    exact = prepare_data(str(root), folds=2, size=SIZE)
    assert run_audit(exact, DEFAULT_NEAR_THRESHOLD).counts()["straddling_clusters"] > 0
    data = prepare_data(str(root), folds=2, size=SIZE, dedupe="near")
    audit = run_audit(data, DEFAULT_NEAR_THRESHOLD)
    assert len(audit.clusters) == BASES and audit.counts()["straddling_clusters"] == 0
    summary = data.summary()
    assert summary["data"]["dedupe"] == "near" and summary["data"]["near_threshold"] == DEFAULT_NEAR_THRESHOLD
    assert summary["split"]["near_duplicates"] == {"threshold": DEFAULT_NEAR_THRESHOLD, "hash_bits": HASH_BITS,
                                                   "clusters": BASES, "images": 4 * BASES,
                                                   "groups_merged": 3 * BASES}
    assert any("--dedupe near: 48 images in 12 near-duplicate clusters" in line for line in data.split_lines())
    # bench final / cv --from-trial rebuild the same splits from the manifest (digest checked).
    again = prepare_data_from_manifest(summary)
    assert again.splits_digest == data.splits_digest and again.near == data.near
    assert exact.summary()["split"]["near_duplicates"] is None


def test_merge_groups_joins_the_patients_of_a_cluster():
    groups = ("p1", "p1", "p2", "p3", "p4")
    cluster = np.array([-1, 0, 0, 1, -1])  # p1's second image is a copy of p2's; p3 alone in its own
    merged, info = merge_groups(groups, cluster, 10)
    assert merged[0] == merged[1] == merged[2] and len(set(merged)) == 3
    assert (info.clusters, info.images, info.groups_merged) == (2, 3, 1)


@pytest.mark.parametrize("argv", [
    ["audit", "--near-threshold", "200"],
    ["audit", "--near-threshold", "-1"],
    ["cv", "--dedupe", "near", "--near-threshold", "65", "--backbone", "simple_cnn", "--epochs", "1"],
])
def test_a_bad_near_threshold_is_a_clear_error(tmp_path, capsys, argv):
    root = make_near_dataset(tmp_path / "ds")
    assert main([*argv, "--dataset", str(root)]) == 2
    err = capsys.readouterr().err
    assert "--near-threshold must be a whole number of bits from 0 to 64" in err and "Traceback" not in err


def _weights_in(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BENCH_WEIGHTS", str(folder))
    monkeypatch.setenv("KERAS_HOME", str(folder / "keras"))
    return folder


def test_audit_features_without_lite0_weights_says_so_and_uses_hashes(tmp_path, monkeypatch, capsys):
    _weights_in(tmp_path / "no-weights", monkeypatch)
    root = make_near_dataset(tmp_path / "ds")
    out = tmp_path / "audit"
    assert main(["audit", "--dataset", str(root), "--folds", "2", "--size", str(SIZE), "--features",
                 "--out", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "no ImageNet weights for efficientnet_lite0" in printed and "perceptual hashes only" in printed
    with open(out / "near_duplicates.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * BASES and all(r["cosine"] == "" for r in rows)


@pytest.mark.slow  # Lite0 features of 60 images at 64 px: about 13 s
def test_audit_features_link_copies_by_lite0_cosine(tmp_path, monkeypatch):
    from bench.models import convert_lite0

    convert_lite0.convert(_weights_in(tmp_path / "weights", monkeypatch))  # the pretrained extra (make test)
    root = make_near_dataset(tmp_path / "ds")
    data = prepare_data(str(root), folds=2, size=SIZE)
    # Threshold 0: the hashes link nothing but identical hashes, so the clusters are the features' work.
    audit = run_audit(data, 0, min_cosine=0.95)
    assert audit.notes == () and audit.cosine is not None
    names = [{Path(data.index.paths[r]).name.split("_")[0].removesuffix(".png") for r in c.rows}
             for c in audit.clusters]
    assert all(len(n) == 1 and next(iter(n)).startswith("base") for n in names)  # never two textures
    # Lite0 at 64 px misses a few of the copies at cosine 0.95 (the hashes catch all of them).
    assert len(audit.clusters) == BASES and sum(len(c.rows) for c in audit.clusters) >= 3 * BASES
    first = [c.rows[0] for c in audit.clusters]
    assert np.allclose(audit.cosine[first], 1.0, atol=1e-5)  # each image against its cluster's first
