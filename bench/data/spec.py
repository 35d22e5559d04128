"""Typed loading and validation of the dataset registry (datasets.toml).

Each ``[name]`` table becomes a frozen ``DatasetSpec``. Validation happens here, at the
boundary: an unknown field, a missing one, or a value of the wrong kind raises ``ConfigError``
naming the file, the entry, the field and what is allowed, so nothing downstream has to guess.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path, PurePosixPath
from typing import Any

from bench.data import baselines as published
from bench.errors import ConfigError, close_matches

# Tasks bench trains and scores: one label per image, softmax over the classes.
SUPPORTED_TASKS = ("binary", "multiclass")
# Tasks a registry entry may name so that it can be listed (ChestMNIST is multi-label), but that
# `require_supported` refuses before anything is trained: a multi-label set needs sigmoid outputs
# and per-label metrics, which bench does not have.
TASKS = (*SUPPORTED_TASKS, "multilabel")
SOURCE_KINDS = ("embedded", "local", "archive", "medmnist")
LAYOUT_KINDS = ("folders", "manifest")
GROUP_KINDS = ("none", "column", "regex")
TEST_KINDS = ("fraction", "folder", "column", "file")
# An official test split sharing patients with the rest: "clean" takes the rest's images of those
# patients out of the CV pool, "as-published" keeps them (and the report warns). See data/splits.py.
OFFICIAL_TEST_POLICIES = ("clean", "as-published")
# --dedupe: which copies share a group before splitting: identical pixels, or also near-copies
# within DEFAULT_NEAR_THRESHOLD bits of a shift-tolerant perceptual hash (data/phash.py measures it).
DEDUPE_MODES = ("exact", "near")
DEFAULT_NEAR_THRESHOLD = 32
RESIZE_MODES = ("squash", "pad", "crop")


@dataclass(frozen=True)
class NpzFile:
    """One published npz of a MedMNIST data flag: the image size it holds, its URL and checksum.

    The file is ``<flag>.npz`` for 28 px and ``<flag>_<size>.npz`` otherwise (MedMNIST+), the
    names the ``medmnist`` package uses.
    """

    size: int
    url: str | None = None
    md5: str | None = None  # what Zenodo publishes
    sha256: str | None = None


@dataclass(frozen=True)
class SourceSpec:
    """Where the images come from.

    embedded: ``path`` inside the package's data/demo folder. local: ``path`` on disk (``~`` and
    ``$VARS`` expanded, relative paths are under BENCH_DATA). archive: ``url`` (+ ``sha256``)
    downloaded and extracted into BENCH_DATA/<name>; ``root`` is the folder inside the archive
    that holds the images. medmnist: npz arrays in the MedMNIST layout (``train_images``,
    ``train_labels``, ``val_*``, ``test_*``) named after ``flag`` (default: the entry's name), read
    from the folder ``path`` (default BENCH_DATA/medmnist), else from the ``medmnist`` package's
    ``~/.medmnist``; ``files`` lists the published sizes with their URLs and checksums.
    """

    kind: str
    path: str | None = None
    url: str | None = None
    sha256: str | None = None
    root: str | None = None
    size_mb: float | None = None
    flag: str | None = None
    files: tuple[NpzFile, ...] = ()


@dataclass(frozen=True)
class LayoutSpec:
    """How files map to labels: class-per-folder, or a CSV manifest ``path,label[,group]``."""

    kind: str = "folders"
    # folders: which folder names the class. -1 = the folder holding the file (works for nested
    # trees like HyperKvasir's), 0 = the first folder below the root (for trees like
    # COVID/images/x.png).
    class_level: int = -1
    # Glob patterns (on paths relative to the root) of files to leave out, e.g. "*/masks/*".
    ignore: tuple[str, ...] = ()
    file: str = "manifest.csv"
    path_column: str = "path"
    label_column: str = "label"
    delimiter: str = ","


@dataclass(frozen=True)
class GroupSpec:
    """Which images belong together (a patient, a video) and must never straddle folds."""

    kind: str = "none"
    column: str | None = None
    pattern: str | None = None


@dataclass(frozen=True)
class TestSpec:
    """How the held-out test set is chosen.

    fraction: a stratified, group-aware fraction of the images (seeded). folder: images under a
    folder of this name (an official ``test/`` split). column: manifest rows whose ``column``
    equals ``value``. file: a CSV in the dataset listing the test images (``key`` column matched
    against file names; ``column``/``value`` select rows when the file holds several splits).
    """

    __test__ = False  # not a pytest test class, despite the name

    kind: str = "fraction"
    fraction: float = 0.2
    seed: int = 0
    folder: str = "test"
    column: str | None = None
    value: str | None = None
    file: str | None = None
    key: str = "path"
    delimiter: str = ","


@dataclass(frozen=True)
class BaselineSpec:
    """Published results to print beside bench's: a table shipped in ``bench/data/baselines/`` and the
    dataset's name in it (default: the entry's name)."""

    table: str
    dataset: str | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    task: str
    source: SourceSpec
    layout: LayoutSpec = field(default_factory=LayoutSpec)
    groups: GroupSpec = field(default_factory=GroupSpec)
    test: TestSpec = field(default_factory=TestSpec)
    classes: tuple[str, ...] | None = None
    positive: str | None = None
    image_size: int = 224
    resize: str = "squash"
    # Default --folds for this dataset (e.g. a published 2-fold split, or classes too small for 5).
    folds: int | None = None
    images: int | None = None
    license: str = "unknown"
    citation: str = ""
    homepage: str = ""
    notes: str = ""
    baselines: BaselineSpec | None = None
    # The published validation split (``--validation official``): the rules of ``test`` except
    # ``fraction``, e.g. { kind = "folder", folder = "val" } or { kind = "column", ... }.
    validation: TestSpec | None = None


# Fields that hold a table ({ key = value, ... }) or a list of tables, per dataclass.
_SUBTABLES: dict[type, dict[str, type]] = {
    DatasetSpec: {"source": SourceSpec, "layout": LayoutSpec, "groups": GroupSpec, "test": TestSpec,
                  "baselines": BaselineSpec, "validation": TestSpec},
}
_TABLE_LISTS: dict[type, dict[str, type]] = {
    SourceSpec: {"files": NpzFile},
}


def _field_types(cls: type) -> dict[str, Any]:
    return {f.name: f.type for f in fields(cls)}


def _check_type(where: str, key: str, value: Any, annotation: str) -> Any:
    """Coerce/validate one scalar against the dataclass annotation string."""
    ann = annotation.replace(" ", "")
    if ann.startswith("tuple"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: field '{key}' must be a list of strings, got {value!r}.")
        if len(set(value)) != len(value):
            raise ConfigError(f"{where}: field '{key}' lists a class twice: {value!r}.")
        return tuple(value)
    if ann.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: field '{key}' must be a whole number, got {value!r}.")
        return value
    if ann.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: field '{key}' must be a number, got {value!r}.")
        return float(value)
    if ann.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: field '{key}' must be a string, got {value!r}.")
        return value
    return value


def _build(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table ({{ key = value, ... }}), got {table!r}.")
    types = _field_types(cls)
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        if key not in types:
            allowed = ", ".join(types)
            raise ConfigError(
                f"{where}: unknown field '{key}'.{close_matches(key, types)} Allowed: {allowed}."
            )
        if key in _SUBTABLES.get(cls, {}):
            kwargs[key] = _build(_SUBTABLES[cls][key], value, f"{where}.{key}")
        elif key in _TABLE_LISTS.get(cls, {}):
            if not isinstance(value, list):
                raise ConfigError(f"{where}: field '{key}' must be a list of tables [{{ ... }}, ...], got {value!r}.")
            kwargs[key] = tuple(_build(_TABLE_LISTS[cls][key], v, f"{where}.{key}[{i}]") for i, v in enumerate(value))
        else:
            kwargs[key] = _check_type(where, key, value, str(types[key]))
    try:
        return cls(**kwargs)
    except TypeError as err:  # a required field is missing
        missing = [f.name for f in fields(cls) if f.name not in kwargs and f.name != "name"]
        raise ConfigError(f"{where}: missing required field(s) {missing}: {err}.") from None


def _one_of(where: str, key: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(
            f"{where}: field '{key}' is {value!r};{close_matches(str(value), allowed)} "
            f"allowed: {', '.join(allowed)}."
        )


def _check_split_rule(spec: DatasetSpec, rule: TestSpec, where: str) -> None:
    """What a published split (test or validation) needs beyond its kind."""
    if rule.kind == "column" and not (rule.column and rule.value is not None):
        raise ConfigError(f"{where}: kind 'column' needs 'column' and 'value'.")
    if rule.kind == "column" and spec.layout.kind != "manifest":
        raise ConfigError(f"{where}: kind 'column' needs layout kind 'manifest'.")
    if rule.kind == "file" and not rule.file:
        raise ConfigError(f"{where}: kind 'file' needs 'file' (a CSV listing the images).")


def validate(spec: DatasetSpec, where: str) -> DatasetSpec:
    """Cross-field checks that the types alone cannot express."""
    _one_of(where, "task", spec.task, TASKS)
    _one_of(where + ".source", "kind", spec.source.kind, SOURCE_KINDS)
    _one_of(where + ".layout", "kind", spec.layout.kind, LAYOUT_KINDS)
    _one_of(where + ".groups", "kind", spec.groups.kind, GROUP_KINDS)
    _one_of(where + ".test", "kind", spec.test.kind, TEST_KINDS)
    _one_of(where, "resize", spec.resize, RESIZE_MODES)
    src = spec.source
    if src.kind == "archive" and not src.url:
        raise ConfigError(f"{where}.source: kind 'archive' needs 'url'.")
    if src.kind in ("embedded", "local") and not src.path:
        raise ConfigError(f"{where}.source: kind '{src.kind}' needs 'path'.")
    if src.root and (PurePosixPath(src.root).is_absolute() or ".." in PurePosixPath(src.root.replace("\\", "/")).parts):
        # The folder is joined to BENCH_DATA/<name>: '..' would reach another entry's data, or any folder.
        raise ConfigError(f"{where}.source: 'root' is {src.root!r}; it names a folder inside the unpacked archive, "
                          f"so it can be neither absolute nor contain '..'. Give the folder as the archive holds "
                          f"it (e.g. 'histo' or 'data/images'), or '' for the archive's top.")
    if src.sha256 and not re.fullmatch(r"[0-9a-f]{64}", src.sha256):
        raise ConfigError(f"{where}.source: 'sha256' must be 64 lowercase hex digits, got {src.sha256!r}.")
    if src.kind == "medmnist":
        spec = _medmnist(spec, where)
    else:
        for key in ("flag", "files"):
            if getattr(src, key):
                raise ConfigError(f"{where}.source: '{key}' is only for kind 'medmnist' (this entry is '{src.kind}').")
    if spec.baselines is not None:
        spec = _baselines(spec, where)
    if spec.groups.kind == "column" and not spec.groups.column:
        raise ConfigError(f"{where}.groups: kind 'column' needs 'column' (the manifest column).")
    if spec.groups.kind == "column" and spec.layout.kind != "manifest":
        raise ConfigError(f"{where}.groups: kind 'column' needs layout kind 'manifest'.")
    if spec.groups.kind == "regex":
        if not spec.groups.pattern:
            raise ConfigError(f"{where}.groups: kind 'regex' needs 'pattern'.")
        try:
            re.compile(spec.groups.pattern)
        except re.error as err:
            raise ConfigError(f"{where}.groups: 'pattern' is not a valid regex ({err}).") from None
    test = spec.test
    if test.kind == "fraction" and not 0.0 < test.fraction < 1.0:
        raise ConfigError(f"{where}.test: 'fraction' must be between 0 and 1, got {test.fraction}.")
    _check_split_rule(spec, test, where + ".test")
    if spec.validation is not None:
        _one_of(where + ".validation", "kind", spec.validation.kind, TEST_KINDS[1:])
        _check_split_rule(spec, spec.validation, where + ".validation")
    if spec.folds is not None and spec.folds < 2:
        raise ConfigError(f"{where}: 'folds' (the default --folds) must be at least 2, got {spec.folds}.")
    if spec.image_size < 16:
        raise ConfigError(f"{where}: 'image_size' must be at least 16, got {spec.image_size}.")
    if spec.classes is not None:
        if len(spec.classes) < 2:
            raise ConfigError(f"{where}: 'classes' needs at least two classes, got {list(spec.classes)}.")
        if spec.task == "binary" and len(spec.classes) != 2:
            raise ConfigError(f"{where}: task 'binary' needs exactly 2 classes, got {len(spec.classes)}.")
    if spec.positive is not None:
        if spec.task != "binary":
            raise ConfigError(f"{where}: 'positive' only applies to task 'binary'.")
        if spec.classes is not None and spec.positive not in spec.classes:
            raise ConfigError(
                f"{where}: 'positive' is {spec.positive!r}, not one of classes {list(spec.classes)}."
            )
    return spec


def _medmnist(spec: DatasetSpec, where: str) -> DatasetSpec:
    """Checks and defaults for an npz source: its flag, its files, and the official split."""
    src, at = spec.source, f"{where}.source"
    for key in ("url", "sha256", "root"):
        if getattr(src, key):
            raise ConfigError(f"{at}: kind 'medmnist' takes no '{key}'; give each file's url and md5/sha256 in "
                              f"'files' = [{{ size = 28, url = ..., md5 = ... }}, ...].")
    flag = src.flag or spec.name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", flag):
        raise ConfigError(f"{at}: 'flag' is {flag!r}; it names the npz file (<flag>.npz), so it takes letters, "
                          f"digits, '_', '-' and '.' only.")
    sizes = [f.size for f in src.files]
    for i, f in enumerate(src.files):
        here = f"{at}.files[{i}]"
        if f.size < 8:
            raise ConfigError(f"{here}: 'size' is {f.size}; MedMNIST files hold 28, 64, 128 or 224 px images.")
        if sizes.count(f.size) > 1:
            raise ConfigError(f"{at}: 'files' lists size {f.size} twice.")
        if f.md5 and not re.fullmatch(r"[0-9a-f]{32}", f.md5):
            raise ConfigError(f"{here}: 'md5' must be 32 lowercase hex digits, got {f.md5!r}.")
        if f.sha256 and not re.fullmatch(r"[0-9a-f]{64}", f.sha256):
            raise ConfigError(f"{here}: 'sha256' must be 64 lowercase hex digits, got {f.sha256!r}.")
    if spec.layout != LayoutSpec():
        raise ConfigError(f"{where}.layout: kind 'medmnist' has no layout: the npz file holds the images and labels.")
    if spec.groups.kind != "none":
        raise ConfigError(f"{where}.groups: kind 'medmnist' has no patient ids (the npz holds none), so 'groups' "
                          f"must be kind 'none'; exact duplicate images are still kept together.")
    # The official split is the point of MedMNIST: its test arrays are the held-out set. The npz
    # index names each image after its split (test/000123.png), so the folder rule selects them.
    official = TestSpec(kind="folder", folder="test")
    if spec.test == TestSpec():
        test = official
    elif spec.test.kind == "folder" and spec.test.folder == "test":
        test = spec.test
    else:
        raise ConfigError(f"{where}.test: kind 'medmnist' always holds out the npz's official test split; leave "
                          f"'test' out (or write test = {{ kind = \"folder\", folder = \"test\" }}).")
    return replace(spec, source=replace(src, flag=flag), test=test)


def _baselines(spec: DatasetSpec, where: str) -> DatasetSpec:
    ref, at = spec.baselines, f"{where}.baselines"
    assert ref is not None
    tables = published.tables()
    _one_of(at, "table", ref.table, tables)
    dataset = ref.dataset or spec.name
    known = published.datasets(ref.table)
    if dataset not in known:
        raise ConfigError(f"{at}: table '{ref.table}' has no rows for dataset {dataset!r};"
                          f"{close_matches(dataset, known)} it has: {', '.join(known)}.")
    return replace(spec, baselines=replace(ref, dataset=dataset))


def require_supported(spec: DatasetSpec) -> DatasetSpec:
    """``spec`` when bench can train on its task; otherwise a ``ConfigError`` saying why not."""
    if spec.task not in SUPPORTED_TASKS:
        raise ConfigError(
            f"{spec.name}: task '{spec.task}' is not supported. bench trains single-label classifiers (softmax over "
            f"the classes, one label per image) and scores them with single-label metrics; a multi-label set needs "
            f"sigmoid outputs and per-label metrics, which bench does not have. Supported tasks: "
            f"{', '.join(SUPPORTED_TASKS)}; `bench datasets` lists each entry's task."
        )
    return spec


def parse_registry(text: str, origin: str) -> dict[str, DatasetSpec]:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{origin}: not valid TOML ({err}).") from None
    specs: dict[str, DatasetSpec] = {}
    for name, table in doc.items():
        where = f"{origin}: [{name}]"
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", name):
            raise ConfigError(f"{where}: dataset names use lowercase letters, digits, '-', '_' and '.'.")
        spec = _build(DatasetSpec, {**table, "name": name}, where)
        specs[name] = validate(spec, where)
    return specs


def load_registry(path: Path) -> dict[str, DatasetSpec]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"Dataset registry {path} does not exist (set BENCH_DATASETS or --registry).") from None
    return parse_registry(text, str(path))


def with_overrides(spec: DatasetSpec, **changes: Any) -> DatasetSpec:
    """A copy with some fields changed, validated again (used for command-line overrides)."""
    return validate(replace(spec, **changes), f"[{spec.name}]")
