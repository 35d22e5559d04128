"""The index of a dataset: which files, which labels, which groups, which are official test images.

Building the index reads directory listings and CSVs only, never pixels; decoding happens once,
in ``cache.py``. Every way a folder or manifest can be unusable is a ``DataError`` that names
the path, the line or the class.

A source kind whose images are not files in a folder (MedMNIST's npz arrays) builds its own
index (``bench.data.sources``): its paths are then virtual (``train/000123.png``) and its
``pixels`` tell the cache how to read them.
"""

from __future__ import annotations

import csv
import fnmatch
import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Protocol

import numpy as np

from bench.data.images import is_image_file
from bench.data.spec import DatasetSpec, TestSpec
from bench.data.walk import walk_files
from bench.errors import DataError

OnError = Callable[[int, str], None]  # (row, reason) of an image that could not be read


class PixelSource(Protocol):
    """How the image cache gets an index's pixels (the default reads ``root / path`` files)."""

    def fingerprint(self, index: DatasetIndex, size: int | None) -> str:
        """A digest that changes whenever the pixels the cache would hold at ``size`` could."""
        ...

    def fill(self, index: DatasetIndex, size: int, resize: str, out: np.ndarray, on_error: OnError,
             workers: int | None) -> str:
        """Write row i of ``index`` into ``out[i]`` as (size, size, 3) uint8; return what was read."""
        ...


@dataclass(frozen=True)
class DatasetIndex:
    """Files of one dataset in a fixed order (sorted relative paths)."""

    name: str
    root: Path
    paths: tuple[str, ...]  # relative to root, POSIX separators
    labels: np.ndarray  # int, index into classes
    classes: tuple[str, ...]
    groups: tuple[str, ...]  # one group id per image (its own path when the dataset has none)
    official_test: np.ndarray | None  # bool per image, when the dataset defines its test split
    spec: DatasetSpec
    ignored: tuple[str, ...] = field(default=())  # non-image files seen (hidden files not listed)
    # (path, reason) of what the folder walk did not enter or list: links that leave the folder or
    # lead somewhere already listed, names that are not UTF-8 (see bench.data.walk)
    passed_over: tuple[tuple[str, str], ...] = field(default=())
    pixels: PixelSource | None = None  # None: the image files at root / path
    # bool per image, when the registry names a published validation split (--validation official)
    official_validation: np.ndarray | None = None
    warnings: tuple[str, ...] = field(default=())  # what the user should know about the index (printed)

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}

    def subset(self, keep: np.ndarray) -> DatasetIndex:
        """The same index restricted to ``keep`` (bool mask); used to drop unreadable files."""
        idx = np.flatnonzero(keep)
        return DatasetIndex(
            name=self.name,
            root=self.root,
            paths=tuple(self.paths[i] for i in idx),
            labels=self.labels[idx],
            classes=self.classes,
            groups=tuple(self.groups[i] for i in idx),
            official_test=None if self.official_test is None else self.official_test[idx],
            spec=self.spec,
            ignored=self.ignored,
            passed_over=self.passed_over,
            pixels=self.pixels,
            official_validation=None if self.official_validation is None else self.official_validation[idx],
            warnings=self.warnings,
        )

    def without_classes(self, names: set[str] | list[str]) -> tuple[DatasetIndex, np.ndarray]:
        """The index without every image of these classes, labels re-numbered over the classes left.

        Returns ``(index, keep)``; ``keep`` (bool per row of this index) selects the same rows elsewhere.
        """
        kept_classes = tuple(c for c in self.classes if c not in names)
        renumber = np.array([kept_classes.index(c) if c in kept_classes else -1 for c in self.classes])
        keep = renumber[self.labels] >= 0
        index = self.subset(keep)
        return replace(index, labels=renumber[index.labels], classes=kept_classes), keep


@dataclass(frozen=True)
class _Walk:
    images: list[str]
    others: list[str]  # non-image files
    passed_over: list[tuple[str, str]]


def _walk_images(root: Path, ignore: tuple[str, ...]) -> _Walk:
    files, passed_over = walk_files(root)
    images: list[str] = []
    others: list[str] = []
    for rel in files:
        if any(fnmatch.fnmatch(rel, pat) for pat in ignore):
            continue
        (images if is_image_file(Path(PurePosixPath(rel).name)) else others).append(rel)
    return _Walk(images, others, passed_over)


def _from_folders(spec: DatasetSpec, walk: _Walk) -> tuple[list[str], list[str], list[dict]]:
    images = walk.images
    test_folder = spec.test.folder if spec.test.kind == "folder" else None
    if test_folder is None and spec.validation is not None and spec.validation.kind == "folder":
        test_folder = spec.validation.folder  # only turns on reading the split folder
    paths, labels, rows = [], [], []
    level = spec.layout.class_level
    for rel in images:
        parts = PurePosixPath(rel).parts[:-1]
        split_folders = (test_folder, spec.validation.folder if spec.validation else None,
                         "train", "val", "valid", "validation")
        if test_folder is not None and parts and parts[0] in split_folders:
            split, parts = parts[0], parts[1:]
        else:
            split = None
        if not parts:
            continue  # a file directly in the root has no class folder
        try:
            label = parts[level]
        except IndexError:
            continue
        paths.append(rel)
        labels.append(label)
        rows.append({"split": split})
    return paths, labels, rows


def _read_csv(path: Path, delimiter: str) -> list[dict[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            return list(csv.DictReader(f, delimiter=delimiter))
    except FileNotFoundError:
        raise DataError(f"{path} does not exist.") from None
    except (csv.Error, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not a readable CSV file ({err}).") from None


def _from_manifest(spec: DatasetSpec, root: Path) -> tuple[list[str], list[str], list[dict]]:
    lay = spec.layout
    manifest = root / lay.file
    rows = _read_csv(manifest, lay.delimiter)
    if not rows:
        raise DataError(f"{manifest} has no rows. It needs a header '{lay.path_column},{lay.label_column}[,group]'.")
    for column in (lay.path_column, lay.label_column):
        if column not in rows[0]:
            raise DataError(
                f"{manifest} has no column '{column}' (columns: {', '.join(rows[0])}). "
                f"Name the columns in datasets.toml: layout = {{ path_column = ..., label_column = ... }}."
            )
    root_resolved = root.resolve()
    paths, labels = [], []
    first_line: dict[str, int] = {}
    for line, row in enumerate(rows, start=2):
        rel = (row[lay.path_column] or "").strip()
        label = (row[lay.label_column] or "").strip()
        where = f"{manifest}, line {line}"
        if not rel or not label:
            raise DataError(f"{where}: empty path or label.")
        target = (root / rel).resolve()
        if not target.is_relative_to(root_resolved) or PurePosixPath(rel).is_absolute():
            raise DataError(f"{where}: path '{rel}' lies outside the dataset folder {root}. Use paths relative to it.")
        if not target.is_file():
            raise DataError(f"{where}: label '{label}' names '{rel}', but there is no such file under {root}.")
        clean = posixpath.normpath(PurePosixPath(rel).as_posix())
        if clean in first_line:
            # One file listed twice would sit in two rows, possibly two classes, in the same fold.
            raise DataError(f"{where}: '{rel}' is already listed on line {first_line[clean]}. List each image "
                            f"once, with its one label.")
        first_line[clean] = line
        paths.append(clean)
        labels.append(label)
    return paths, labels, rows


def _groups(spec: DatasetSpec, paths: list[str], rows: list[dict]) -> list[str]:
    g = spec.groups
    if g.kind == "column":
        if g.column not in rows[0]:
            raise DataError(
                f"{spec.name}: groups column '{g.column}' is not in the manifest (columns: {', '.join(rows[0])})."
            )
        return [str(row[g.column]).strip() or path for row, path in zip(rows, paths)]
    if g.kind == "regex":
        pattern = re.compile(g.pattern or "")
        out = []
        for path in paths:
            name = PurePosixPath(path).name
            m = pattern.search(name)
            # An image whose name does not match stands alone: safer than lumping strays together.
            out.append((m.group(1) if m.groups() else m.group(0)) if m else path)
        return out
    return list(paths)


def _unused_id_columns(spec: DatasetSpec, root: Path, rows: list[dict], n_classes: int) -> list[str]:
    """A warning per manifest column that is not used yet whose values repeat like patient ids.

    Without a group rule every image is its own group, so a patient id under a name nobody
    recognised would let one patient's images sit in several folds without a word.
    """
    if spec.layout.kind != "manifest" or spec.groups.kind != "none" or not rows:
        return []
    used = {spec.layout.path_column, spec.layout.label_column,
            *(t.column for t in (spec.test, spec.validation) if t is not None and t.column)}
    out = []
    for column in rows[0]:
        if column is None or column in used:
            continue
        values = [str(row.get(column) or "").strip() for row in rows]
        distinct = len(set(v for v in values if v))
        # Repeats (fewer distinct values than rows), yet more values than a category like sex or
        # the label would have: that is what an id with several images per patient looks like.
        if max(3, n_classes + 1) <= distinct < len(values):
            out.append(f"{root / spec.layout.file}: column '{column}' is not used, yet its values repeat "
                       f"across rows ({distinct} distinct in {len(values)} rows) as patient ids do; every "
                       f"image is its own group now, so one patient's images can land in several folds. "
                       f"If it identifies patients, pass --group-column '{column}'.")
    return out


def _official_test(spec: DatasetSpec, root: Path, paths: list[str], rows: list[dict]) -> np.ndarray | None:
    return _published_split(spec, spec.test, root, paths, rows)


def _published_split(spec: DatasetSpec, t: TestSpec | None, root: Path, paths: list[str],
                     rows: list[dict]) -> np.ndarray | None:
    """bool per image: in the published split ``t`` (test or validation); None when not published."""
    if t is None:
        return None
    if t.kind == "folder":
        return np.array([row.get("split") == t.folder for row in rows], dtype=bool)
    if t.kind == "column":
        if t.column not in rows[0]:
            raise DataError(f"{spec.name}: split column '{t.column}' is not in the manifest.")
        return np.array([str(row[t.column]).strip() == t.value for row in rows], dtype=bool)
    if t.kind == "file":
        split_file = (root / (t.file or "")).resolve()
        if not split_file.is_file():
            raise DataError(
                f"{spec.name}: the official split file {split_file} is missing. {spec.notes}".strip()
            )
        listed = _read_csv(split_file, t.delimiter)
        if listed and t.key not in listed[0]:
            raise DataError(f"{split_file} has no column '{t.key}' (columns: {', '.join(listed[0])}).")
        names = {
            PurePosixPath(r[t.key].strip()).name
            for r in listed
            if t.column is None or str(r.get(t.column, "")).strip() == t.value
        }
        return np.array([PurePosixPath(p).name in names for p in paths], dtype=bool)
    return None


def build_folder_index(spec: DatasetSpec, root: Path) -> DatasetIndex:
    """List the image files of a dataset's folder with labels, groups and official test membership.

    Source kinds that store pixels otherwise (MedMNIST npz) have their own builder: call
    ``bench.data.sources.build_index``, which chooses.
    """
    if not root.exists():
        raise DataError(f"Dataset folder {root} does not exist. {_hint(spec)}".strip())
    if not root.is_dir():
        raise DataError(f"{root} is not a folder. Give a folder with one subfolder per class.")
    if spec.layout.kind == "manifest":
        paths, names, rows = _from_manifest(spec, root)
        walk = _Walk([], [], [])
    else:
        walk = _walk_images(root, spec.layout.ignore)
        paths, names, rows = _from_folders(spec, walk)
    if not paths:
        raise DataError(
            f"{root} holds no images in class folders (looked for {', '.join(sorted(_suffixes()))} "
            f"files in subfolders, one per class)."
        )
    classes = spec.classes or tuple(sorted(set(names)))
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise DataError(
            f"{spec.name}: found images of class(es) {unknown} that datasets.toml does not list "
            f"(classes = {list(classes)}). Add them to 'classes' or remove those folders."
        )
    present = sorted(set(names))
    if len(present) < 2:
        raise DataError(
            f"{root}: all {len(paths)} images are of one class ('{present[0]}'). "
            f"Classification needs at least two class folders."
        )
    missing = [c for c in classes if c not in present]
    if missing:
        raise DataError(f"{spec.name}: no images of class(es) {missing} under {root}.")
    lookup = {c: i for i, c in enumerate(classes)}
    labels = np.array([lookup[n] for n in names], dtype=np.int64)
    groups = _groups(spec, paths, rows)
    official = _official_test(spec, root, paths, rows)
    return DatasetIndex(
        name=spec.name,
        root=root,
        paths=tuple(paths),
        labels=labels,
        classes=tuple(classes),
        groups=tuple(groups),
        official_test=official,
        spec=spec,
        ignored=tuple(walk.others),
        passed_over=tuple(walk.passed_over),
        official_validation=_published_split(spec, spec.validation, root, paths, rows),
        warnings=tuple(_unused_id_columns(spec, root, rows, len(classes))),
    )


def _suffixes() -> set[str]:
    from bench.data.images import IMAGE_SUFFIXES

    return set(IMAGE_SUFFIXES)


def _hint(spec: DatasetSpec) -> str:
    if spec.source.kind == "archive":
        return f"Run `bench fetch {spec.name}` to download it, or unpack it there by hand. {spec.notes}"
    return spec.notes
