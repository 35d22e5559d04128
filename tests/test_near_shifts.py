"""``--dedupe near`` on real X-rays: shifted and cropped copies merge, different patients never do.

The copies are made from the real 128 px files of tests/data/pneumonia the way consecutive video
frames and re-framed exports differ from their original: shifted by 1-3 px (the border repeats
its edge pixels) or cropped by 5% and resized back. The plain pHash caught a 1 px shift only
(3 px moved it by up to 90 of 256 bits, past any threshold that keeps different patients apart).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.data.images import resize_array
from bench.data.near import near_clusters, pairs_file
from bench.data.spec import DEFAULT_NEAR_THRESHOLD
from bench.training.experiment import prepare_data

ORIGINALS = 10  # real X-rays of different patients, each with every copy below


def _shift(arr: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``arr`` moved by (dx, dy) pixels, the uncovered border filled with the edge it came from."""
    out = np.roll(arr, (dy, dx), axis=(0, 1))
    if dx > 0:
        out[:, :dx] = out[:, dx:dx + 1]
    if dy > 0:
        out[:dy] = out[dy:dy + 1]
    if dy < 0:
        out[dy:] = out[dy - 1:dy]
    return out


def _crop(arr: np.ndarray, where: str) -> np.ndarray:
    """5% of the side cut off (centred, or at one corner) and resized back to the original size."""
    side = arr.shape[0]
    keep = round(side * 0.95)
    at = {"centre": (side - keep) // 2, "top-left": 0, "bottom-right": side - keep,
          "off-centre": (side - keep) // 4}[where]  # between the windows hashed: the hardest
    return np.asarray(Image.fromarray(arr[at:at + keep, at:at + keep]).resize((side, side), Image.BILINEAR))


COPIES = {
    **{f"shift{k}x": (lambda a, k=k: _shift(a, k, 0)) for k in (1, 2, 3)},
    **{f"shift{k}y": (lambda a, k=k: _shift(a, 0, k)) for k in (1, 2, 3)},
    **{f"shift{k}d": (lambda a, k=k: _shift(a, k, -k)) for k in (1, 2, 3)},
    **{f"crop-{w}": (lambda a, w=w: _crop(a, w)) for w in ("centre", "top-left", "bottom-right", "off-centre")},
}


def _originals(real_xrays: Path) -> list[dict[str, str]]:
    """ORIGINALS images of different patients, half of each class, spread over the manifest."""
    with open(real_xrays / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    picked: dict[str, dict[str, str]] = {}
    for label in ("NORMAL", "PNEUMONIA"):
        mine = [r for r in rows if r["label"] == label]
        for row in mine[::len(mine) // ORIGINALS]:
            if sum(r["label"] == label for r in picked.values()) < ORIGINALS // 2:
                picked.setdefault(row["patient"], row)
    assert len(picked) == ORIGINALS
    return list(picked.values())


def make_copies_dataset(real_xrays: Path, root: Path) -> Path:
    """``root``: ORIGINALS real X-rays and all their COPIES, each copy filed as a patient of its own."""
    lines = ["path,label,patient"]
    for n, row in enumerate(_originals(real_xrays)):
        arr = np.asarray(Image.open(real_xrays / row["path"]).convert("RGB"))
        (root / row["label"]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(root / row["label"] / f"x{n:02d}.png")
        lines.append(f"{row['label']}/x{n:02d}.png,{row['label']},{row['patient']}")
        for kind, make in COPIES.items():
            Image.fromarray(make(arr)).save(root / row["label"] / f"x{n:02d}_{kind}.png")
            lines.append(f"{row['label']}/x{n:02d}_{kind}.png,{row['label']},copy-{n:02d}-{kind}")
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("kind", COPIES)
def test_each_kind_of_copy_alone_is_within_the_default_of_its_original(real_xrays, kind):
    """One kind of copy at a time, so no chain of smaller shifts can link a 3 px copy to its original."""
    originals = [np.asarray(Image.open(real_xrays / r["path"]).convert("RGB")) for r in _originals(real_xrays)]
    for size in (32, 64, 224):  # decoded as the image cache would decode the files
        images = np.stack([resize_array(a, size) for o in originals for a in (o, COPIES[kind](o))])
        cluster, _ = near_clusters(images, DEFAULT_NEAR_THRESHOLD)
        assert cluster.tolist() == [n for n in range(ORIGINALS) for _ in (0, 1)], (size, cluster)


@pytest.mark.parametrize("size", [32, 224])
def test_shifted_and_cropped_real_xrays_merge_with_their_original(real_xrays, tmp_path, size):
    root = make_copies_dataset(real_xrays, tmp_path / "copies")
    exact = prepare_data(str(root), folds=2, size=size)
    assert exact.splits.duplicates == 0  # other pixels: exact grouping cannot catch them
    data = prepare_data(str(root), folds=2, size=size, dedupe="near")
    family = np.array([Path(p).name[:3] for p in data.index.paths])  # "x03" for x03.png and its copies
    groups = data.splits.groups
    for name in np.unique(family):
        members = family == name
        assert len(set(groups[members])) == 1, (name, sorted(Path(p).name for p in np.asarray(data.index.paths)[
            members & (groups != groups[members][0])]))
        # ... and that group holds no other family: different patients never merge
        assert set(family[groups == groups[members][0]]) == {name}
        sides = {("test" if data.splits.test[r] else f"fold {data.splits.fold[r]}") for r in np.flatnonzero(members)}
        assert len(sides) == 1, (name, sides)
    per_family = 1 + len(COPIES)
    assert (data.near.clusters, data.near.images, data.near.groups_merged) == \
           (ORIGINALS, ORIGINALS * per_family, ORIGINALS * len(COPIES))
    # Without --dedupe near the copies are patients of their own and the split scatters them.
    exact_sides = [{(exact.splits.test[r], exact.splits.fold[r]) for r in np.flatnonzero(family == name)}
                   for name in np.unique(family)]
    assert any(len(s) > 1 for s in exact_sides)


def test_no_two_patients_of_the_real_xrays_merge_at_the_default(real_xrays):
    data = prepare_data(str(real_xrays), folds=2, size=64)
    assert len(data.index) == 976
    cluster, hashes = near_clusters(data.images, DEFAULT_NEAR_THRESHOLD)
    patients = np.asarray(data.index.groups)
    mixed = [sorted(set(patients[cluster == c])) for c in range(int(cluster.max(initial=-1)) + 1)
             if len(set(patients[cluster == c])) > 1]
    assert mixed == []
    assert len(hashes) == 976


def test_the_near_pairs_are_found_once_per_image_cache_and_threshold(real_xrays, tmp_path):
    root = make_copies_dataset(real_xrays, tmp_path / "copies")
    first = prepare_data(str(root), folds=2, size=32, dedupe="near")
    stored = pairs_file(first.cache.path, DEFAULT_NEAR_THRESHOLD)
    with np.load(stored) as f:
        assert int(f["images"]) == len(first.index) and len(f["i"]) >= ORIGINALS * len(COPIES)
    # A second preparation (a search's worker, bench final) reads the stored pairs instead of
    # comparing again: with the file emptied by hand it finds no cluster at all.
    np.savez(stored, images=len(first.index), i=np.zeros(0, np.int64), j=np.zeros(0, np.int64))
    assert prepare_data(str(root), folds=2, size=32, dedupe="near").near.clusters == 0
    # Another threshold is another file; an unreadable one is found again, not an error.
    stored.write_bytes(b"not an npz")
    again = prepare_data(str(root), folds=2, size=32, dedupe="near")
    assert again.near == first.near and again.splits_digest == first.splits_digest
    assert not pairs_file(first.cache.path, 28).exists()
    assert prepare_data(str(root), folds=2, size=32, dedupe="near", near_threshold=28).near.clusters == ORIGINALS
    assert pairs_file(first.cache.path, 28).exists()
