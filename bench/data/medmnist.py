"""MedMNIST npz files as a dataset source: official splits, no image files, no decoding.

A MedMNIST file ``<flag>.npz`` (28 px; MedMNIST+ adds ``<flag>_64.npz``, ``_128``, ``_224``)
holds six arrays: ``train_images``, ``train_labels``, ``val_images``, ``val_labels``,
``test_images`` and ``test_labels``, the images uint8 ``(n, h, w)`` grayscale or
``(n, h, w, 3)`` RGB, the labels ``(n, 1)`` class indices. Here that becomes

* an index whose rows are virtual paths ``train/000123.png``, ``val/...``, ``test/...`` (so that
  splits.csv and the prediction files read as for a folder), labels from the npz, each image its
  own group (MedMNIST publishes no patient ids) and the ``test/`` rows as the official held-out
  set: train + val is the cross-validation pool, test never reaches the search;
* a pixel source for the image cache that streams the arrays out of the npz (no stat() per
  image: the fingerprint is the npz file's name, size and mtime), gray to RGB, and resizes only
  when the requested size differs from the file's, preferring the file whose native size is
  the one asked for (``_64`` for 64 px) and otherwise the smallest larger one.

Files are looked for in the entry's folder (``source.path``, default BENCH_DATA/medmnist), then
in ``~/.medmnist``, where the ``medmnist`` package keeps them. ``fetch`` downloads one from the
URL in datasets.toml and checks its md5 (what Zenodo publishes); the ``medmnist`` package itself
(which pulls in torch) is never needed.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench import paths
from bench.data.images import resize_array
from bench.data.index import DatasetIndex, OnError
from bench.data.sources import Source, register_source
from bench.data.spec import DatasetSpec, NpzFile, require_supported
from bench.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
DEFAULT_FOLDER = "medmnist"  # under BENCH_DATA
NATIVE_SIZE = 28  # the size of <flag>.npz, the file without a size suffix
_CHUNK_BYTES = 64 << 20  # read image arrays this much at a time, so a 224 px file never sits in memory
_PATH = re.compile(r"(train|val|test)/(\d+)\.png")


def package_root() -> Path:
    """The ``medmnist`` package's default root (its ``DEFAULT_ROOT``)."""
    return Path.home() / ".medmnist"


def primary_folder(spec: DatasetSpec) -> Path:
    """Where ``bench fetch`` puts the files: ``source.path`` (relative: under BENCH_DATA)."""
    raw = Path(os.path.expandvars(spec.source.path or DEFAULT_FOLDER)).expanduser()
    return raw if raw.is_absolute() else paths.data_dir() / raw


def folders(spec: DatasetSpec) -> list[Path]:
    """Folders searched for the npz files, in order."""
    return list(dict.fromkeys([primary_folder(spec), package_root()]))


def flag_of(spec: DatasetSpec) -> str:
    return spec.source.flag or spec.name


def file_name(flag: str, size: int) -> str:
    """MedMNIST's file name for ``flag`` at ``size`` px (the medmnist package's ``size_flag``)."""
    return f"{flag}.npz" if size == NATIVE_SIZE else f"{flag}_{size}.npz"


def _sizes(spec: DatasetSpec) -> list[int]:
    """The sizes the entry lists, else 28 only (a custom set in the MedMNIST layout: <flag>.npz)."""
    return sorted({f.size for f in spec.source.files}) or [NATIVE_SIZE]


def _entry(spec: DatasetSpec, size: int) -> NpzFile | None:
    return next((f for f in spec.source.files if f.size == size), None)


# ---- reading npz members without loading them ------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran: bool


def _unreadable(path: Path, err: BaseException) -> DataError:
    return DataError(f"{path} is not a readable npz file ({type(err).__name__}: {err}). It may be a truncated "
                     f"download: delete it and run `bench fetch` again, or download it afresh by hand.")


def _read_header(f) -> _Header:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise ValueError(f"npy format version {version} is not supported")
    return _Header(tuple(shape), np.dtype(dtype), bool(fortran))


def _members(path: Path) -> dict[str, _Header]:
    """The header (shape, dtype) of every array in the npz, read without loading any array."""
    try:
        with zipfile.ZipFile(path) as z:
            out = {}
            for name in z.namelist():
                if name.endswith(".npy"):
                    with z.open(name) as f:
                        out[name[:-4]] = _read_header(f)
            return out
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as err:
        raise _unreadable(path, err) from err


def _load(path: Path, key: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return npz[key]
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, KeyError) as err:
        raise _unreadable(path, err) from err


def _image_chunks(path: Path, key: str) -> Iterator[np.ndarray]:
    """``key``'s rows in order, a few thousand at a time, straight from the (compressed) zip stream."""
    try:
        with zipfile.ZipFile(path) as z, z.open(f"{key}.npy") as f:
            header = _read_header(f)
            if header.fortran:  # never written by MedMNIST; numpy's reader copes with it
                yield _load(path, key)
                return
            row_shape = header.shape[1:]
            row_bytes = int(np.prod(row_shape, dtype=np.int64)) * header.dtype.itemsize
            per_chunk = max(1, _CHUNK_BYTES // max(row_bytes, 1))
            left = header.shape[0]
            while left > 0:
                take = min(per_chunk, left)
                buf = f.read(take * row_bytes)
                if len(buf) != take * row_bytes:
                    raise EOFError(f"{key} ends after {header.shape[0] - left + len(buf) // row_bytes} of "
                                   f"{header.shape[0]} images")
                yield np.frombuffer(buf, dtype=header.dtype).reshape(take, *row_shape)
                left -= take
    except (OSError, zipfile.BadZipFile, ValueError, EOFError, KeyError) as err:
        raise _unreadable(path, err) from err


# ---- one npz file -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class NpzData:
    """One npz file of the flag, checked: its native image size and split sizes."""

    path: Path
    size: int  # native side in pixels (0 when the images are not square)
    channels: int  # 1 (grayscale) or 3 (RGB)
    counts: tuple[int, int, int]  # images in train, val, test

    @property
    def images(self) -> int:
        return sum(self.counts)


def inspect(path: Path) -> NpzData:
    """Check that ``path`` is in the MedMNIST layout; a ``DataError`` naming the file and the array if not."""
    members = _members(path)
    wanted = [f"{s}_{kind}" for s in SPLITS for kind in ("images", "labels")]
    missing = [k for k in wanted if k not in members]
    if missing:
        raise DataError(f"{path} has no array(s) {', '.join(missing)} (it has: {', '.join(sorted(members)) or 'none'}). "
                        f"A MedMNIST npz holds {', '.join(wanted)}.")
    sides, channels, counts = set(), set(), []
    for split in SPLITS:
        img, lab = members[f"{split}_images"], members[f"{split}_labels"]
        where = f"{path}: {split}_images"
        if img.dtype != np.uint8:
            raise DataError(f"{where} holds {img.dtype} values; bench reads uint8 images (0-255), as MedMNIST stores them.")
        if len(img.shape) == 3 or (len(img.shape) == 4 and img.shape[3] == 1):
            channels.add(1)
        elif len(img.shape) == 4 and img.shape[3] == 3:
            channels.add(3)
        else:
            raise DataError(f"{where} has shape {img.shape}; expected (n, h, w) grayscale or (n, h, w, 3) RGB images.")
        sides.add(img.shape[1:3])
        if len(lab.shape) == 2 and lab.shape[1] > 1:
            raise DataError(f"{path}: {split}_labels has shape {lab.shape}, one column per label: a multi-label set "
                            f"(like ChestMNIST). bench needs one class index per image.")
        if len(lab.shape) not in (1, 2) or lab.shape[0] != img.shape[0]:
            raise DataError(f"{path}: {split}_labels has shape {lab.shape} but {split}_images holds {img.shape[0]} "
                            f"images; expected ({img.shape[0]}, 1).")
        if lab.dtype.kind not in "iu":
            raise DataError(f"{path}: {split}_labels holds {lab.dtype} values; expected integer class indices.")
        counts.append(img.shape[0])
    if len(sides) > 1 or len(channels) > 1:
        raise DataError(f"{path}: the splits' images differ in size or channels ({sorted(sides)}); they must agree.")
    (h, w), = sides
    return NpzData(path=path, size=h if h == w else 0, channels=channels.pop(), counts=tuple(counts))


def _labels(path: Path) -> dict[str, np.ndarray]:
    return {s: _load(path, f"{s}_labels").reshape(-1).astype(np.int64) for s in SPLITS}


def find(spec: DatasetSpec, search: list[Path] | None = None) -> list[NpzData]:
    """The flag's npz files on disk (one per size, the first folder that has it), checked."""
    flag, found = flag_of(spec), []
    for size in _sizes(spec):
        name = file_name(flag, size)
        for folder in search or folders(spec):
            if (folder / name).is_file():
                found.append(inspect(folder / name))
                break
    return found


def choose(files: list[NpzData] | tuple[NpzData, ...], size: int) -> NpzData:
    """The file to make ``size`` px images from: native size first, else the smallest larger, else the largest."""
    exact = [f for f in files if f.size == size]
    if exact:
        return exact[0]
    larger = sorted((f for f in files if f.size > size), key=lambda f: f.size)
    return larger[0] if larger else max(files, key=lambda f: f.size)


# ---- the index and its pixels -----------------------------------------------------------------------


@dataclass(frozen=True)
class NpzPixels:
    """The image cache's pixel source for an npz index (see ``bench.data.index.PixelSource``)."""

    files: tuple[NpzData, ...]
    labels_file: Path  # the file the index's labels were read from (every other file holds the same)

    def pick(self, size: int | None) -> NpzData:
        return choose(self.files, size) if size else next(f for f in self.files if f.path == self.labels_file)

    def fingerprint(self, index: DatasetIndex, size: int | None) -> str:
        f = self.pick(size)
        st = f.path.stat()
        h = hashlib.sha256(f"npz\0{f.path.name}\0{st.st_size}\0{st.st_mtime_ns}\0{f.size}\0{f.channels}\n".encode())
        for rel, label in zip(index.paths, index.labels):
            h.update(f"{rel}\0{index.classes[label]}\n".encode())
        return h.hexdigest()

    def fill(self, index: DatasetIndex, size: int, resize: str, out: np.ndarray, on_error: OnError,
             workers: int | None) -> str:
        f = self.pick(size)
        rows: dict[str, dict[int, int]] = {s: {} for s in SPLITS}
        for row, rel in enumerate(index.paths):
            m = _PATH.fullmatch(rel)
            if m is None:  # only this module makes these indexes; anything else is a bug
                raise ValueError(f"not an npz index path: {rel!r}")
            rows[m.group(1)][int(m.group(2))] = row
        for split in SPLITS:
            start = 0
            for chunk in _image_chunks(f.path, f"{split}_images"):
                for j in range(len(chunk)):
                    row = rows[split].get(start + j)
                    if row is not None:
                        out[row] = resize_array(chunk[j], size, resize)
                start += len(chunk)
        how = "as stored" if f.size == size else f"resized from {f.size or 'non-square'} px to {size} px ({resize})"
        return f"{f.path} ({'grayscale' if f.channels == 1 else 'RGB'}, {how})"


def _digest(labels: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for split in SPLITS:
        h.update(split.encode() + labels[split].tobytes())
    return h.hexdigest()


def build_index(spec: DatasetSpec, root: Path) -> DatasetIndex:
    """The index of a MedMNIST entry: virtual paths, labels and the official test split from the npz."""
    require_supported(spec)
    files = find(spec, list(dict.fromkeys([root, *folders(spec)])))
    if not files:
        raise DataError(missing_message(spec))
    first = choose(files, spec.image_size)
    labels = _labels(first.path)
    digest = _digest(labels)
    for other in files:  # labels are small: check every size now, not when a trial asks for it
        if other is not first and _digest(_labels(other.path)) != digest:
            raise DataError(f"{other.path} and {first.path} hold different labels (or the images in another "
                            f"order): they are not the same MedMNIST set at two sizes. Remove the one that does "
                            f"not belong.")
    n_classes = len(spec.classes) if spec.classes else int(max(int(a.max(initial=0)) for a in labels.values())) + 1
    classes = spec.classes or tuple(str(i) for i in range(n_classes))
    for split, values in labels.items():
        bad = values[(values < 0) | (values >= len(classes))]
        if bad.size:
            raise DataError(f"{first.path}: {split}_labels holds class index {int(bad[0])}, but {spec.name} has "
                            f"{len(classes)} classes ({', '.join(classes)}): the file is not this dataset, or "
                            f"'classes' in datasets.toml is wrong.")
    width = max(6, len(str(max(first.counts))))
    paths_, label_rows, test, val = [], [], [], []
    for split in SPLITS:
        paths_ += [f"{split}/{i:0{width}d}.png" for i in range(len(labels[split]))]
        label_rows.append(labels[split])
        test += [split == "test"] * len(labels[split])
        val += [split == "val"] * len(labels[split])
    label_array = np.concatenate(label_rows)
    present = set(np.unique(label_array).tolist())
    missing = [c for i, c in enumerate(classes) if i not in present]
    if missing:
        raise DataError(f"{spec.name}: {first.path} has no images of class(es) {missing}.")
    return DatasetIndex(
        name=spec.name,
        root=first.path.parent,
        paths=tuple(paths_),
        labels=label_array,
        classes=tuple(classes),
        groups=tuple(paths_),  # no patient ids; exact duplicates are merged later
        official_test=np.array(test, dtype=bool),
        official_validation=np.array(val, dtype=bool),  # the npz's own val arrays: --validation official
        spec=spec,
        pixels=NpzPixels(files=tuple(files), labels_file=first.path),
    )


# ---- where it is, and getting it --------------------------------------------------------------------


def dataset_root(spec: DatasetSpec) -> Path:
    """The folder that holds the flag's files (the first that has any), else where fetch would put them."""
    flag = flag_of(spec)
    for folder in folders(spec):
        if any((folder / file_name(flag, s)).is_file() for s in _sizes(spec)):
            return folder
    return primary_folder(spec)


def _wanted_size(spec: DatasetSpec) -> int:
    """The file the entry's default size asks for (the nearest listed size when it is not listed)."""
    sizes = _sizes(spec)
    return spec.image_size if spec.image_size in sizes else min(sizes, key=lambda s: (abs(s - spec.image_size), -s))


def missing_message(spec: DatasetSpec, size: int | None = None) -> str:
    size = size or _wanted_size(spec)
    name, entry = file_name(flag_of(spec), size), _entry(spec, size)
    where = primary_folder(spec)
    others = [str(f) for f in folders(spec) if f != where]
    fetch = f"`bench fetch {spec.name}" + ("`" if size == _wanted_size(spec) else f" --size {size}`")
    by_hand = f"download {entry.url}" if entry is not None and entry.url else "get it from the MedMNIST site"
    check = f" (md5 {entry.md5})" if entry is not None and entry.md5 else ""
    return (f"MedMNIST file {name} for {spec.name} is not in {where}"
            + (f" (nor in {', '.join(others)}, the medmnist package's folder)" if others else "")
            + f". Run {fetch} to download it, or {by_hand}{check} by hand and put it at {where / name}."
            + (f" Other sizes: {', '.join(file_name(flag_of(spec), s) for s in _sizes(spec) if s != size)}."
               if len(_sizes(spec)) > 1 else ""))


def location(spec: DatasetSpec) -> tuple[str, int | None]:
    """What `bench datasets` shows: the files found and their images, or the file to put there."""
    found = find(spec)
    if not found:
        return f"not downloaded (needs {file_name(flag_of(spec), _wanted_size(spec))})", None
    root = dataset_root(spec)
    names = [f.path.name if f.path.parent == root else str(f.path) for f in found]
    return f"npz {', '.join(names)}", found[0].images


def fetch(spec: DatasetSpec, *, size: int | None = None, progress: bool = True) -> str:
    """Download the flag's npz for ``size`` (default: the entry's image size) unless it is there; say where it is."""
    from bench.download import download  # urllib and friends: only when downloading

    require_supported(spec)
    size = size or _wanted_size(spec)
    entry = _entry(spec, size)
    if entry is None:
        listed = ", ".join(str(s) for s in _sizes(spec)) or "none"
        raise ConfigError(f"{spec.name}: no file of {size} px in datasets.toml (sizes listed: {listed}); "
                          f"use --size with one of those.")
    name, where = file_name(flag_of(spec), size), primary_folder(spec)
    for folder in folders(spec):
        if (folder / name).is_file() and (folder != where or paths.offline()):
            inspect(folder / name)
            return f"{spec.name}: {folder / name} is there already ({size} px); nothing to download."
    if paths.offline():
        raise DataError(f"{missing_message(spec, size)} bench is offline (BENCH_OFFLINE=1 or --offline), so "
                        f"nothing was downloaded.")
    if not entry.url:
        raise DataError(missing_message(spec, size))
    hint = f"Or download {entry.url} by hand" + (f" (md5 {entry.md5})" if entry.md5 else "") + \
           f" and put it at {where / name}."
    path = download(entry.url, where / name, sha256=entry.sha256, md5=entry.md5, progress=progress,
                    manual_hint=hint)
    data = inspect(path)
    return f"{spec.name}: ready in {path} ({data.images:,} images, {size} px)."


register_source(Source("medmnist", dataset_root, build_index, location, fetch))
