"""Finding a dataset: a registry name from datasets.toml, or a plain folder on disk."""

from __future__ import annotations

import csv
import os
import re
from dataclasses import replace
from pathlib import Path

from bench import paths
from bench.data.sources import special_source
from bench.data.spec import (
    DatasetSpec,
    GroupSpec,
    LayoutSpec,
    SourceSpec,
    TestSpec,
    load_registry,
    require_supported,
    validate,
)
from bench.errors import DataError, close_matches

# Manifest columns recognised as the group (patient) column in a plain folder's manifest.csv, in
# order of preference. Headers are compared case- and separator-insensitively (``column_key``):
# `PatientID`, `Patient`, `patient id` and `subject_id` are all common spellings, and a missed one
# silently gives every image its own group, so one patient's images can land in several folds.
GROUP_COLUMNS = ("group", "patient", "patient_id", "subject", "subject_id", "case", "case_id", "video",
                 "video_id", "participant", "participant_id", "group_id")


def column_key(name: str) -> str:
    """A header name without case, spaces, dashes or underscores: 'Patient ID' -> 'patientid'."""
    return re.sub(r"[^0-9a-z]", "", name.casefold())


def find_column(header: list[str], wanted: tuple[str, ...]) -> str | None:
    """The first header column (as written there) matching one of ``wanted``, by ``column_key``."""
    by_key = {column_key(c): c for c in reversed(header)}  # the first of two spellings wins
    return next((by_key[column_key(w)] for w in wanted if column_key(w) in by_key), None)


def registry(path: Path | None = None) -> dict[str, DatasetSpec]:
    return load_registry(path or paths.registry_file())


def dataset_root(spec: DatasetSpec) -> Path:
    """Where a registry dataset's images are (or would be, once fetched)."""
    src = spec.source
    source = special_source(src.kind)
    if source is not None:
        return source.root(spec)
    if src.kind == "embedded":
        return paths.DEMO_DIR / (src.path or spec.name)
    if src.kind == "archive":
        return paths.data_dir() / spec.name / (src.root or "")
    raw = Path(os.path.expandvars(src.path or spec.name)).expanduser()
    return raw if raw.is_absolute() else paths.data_dir() / raw


def _looks_like_path(name: str) -> bool:
    return os.sep in name or "/" in name or name.startswith(".") or Path(name).is_dir()


def folder_spec(folder: Path, *, group_regex: str | None = None, group_column: str | None = None) -> DatasetSpec:
    """A spec for a folder with no registry entry.

    Class-per-folder by default; a ``manifest.csv`` in the folder is used instead when present
    (it must have ``path`` and ``label`` columns), and its group column (``group_column``, else
    the first of GROUP_COLUMNS in any spelling) keeps patients together.
    """
    layout = LayoutSpec(kind="folders")
    groups = GroupSpec()
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        # A manifest that is there was put there to be used: ignoring it would silently fall back
        # to folder names and lose its patient column.
        header = _manifest_header(manifest)
        layout = LayoutSpec(kind="manifest", file="manifest.csv")
        column = _named_column(manifest, header, group_column) if group_column else find_column(header, GROUP_COLUMNS)
        if column:
            groups = GroupSpec(kind="column", column=column)
    elif group_column:
        raise DataError(f"--group-column {group_column}: {folder} has no manifest.csv to take the column from. "
                        f"Add a manifest.csv with columns 'path,label,{group_column}', or use --group-regex on "
                        f"the file names.")
    if group_regex:
        groups = GroupSpec(kind="regex", pattern=group_regex)
    name = folder.resolve().name or "folder"
    spec = DatasetSpec(
        name=name,
        title=f"Local folder {folder}",
        task="multiclass",
        source=SourceSpec(kind="local", path=str(folder.resolve())),
        layout=layout,
        groups=groups,
        test=TestSpec(kind="fraction"),
        image_size=224,
        license="unknown (local folder)",
    )
    return validate(spec, f"--dataset {folder}")


def _named_column(manifest: Path, header: list[str], name: str) -> str:
    """``--group-column NAME`` as the manifest spells it; a DataError listing the columns if absent."""
    found = name if name in header else find_column(header, (name,))
    if found is None:
        raise DataError(f"--group-column {name}: {manifest} has no such column (columns: "
                        f"{', '.join(repr(c) for c in header)}).{close_matches(name, header)}")
    return found


def _manifest_header(manifest: Path) -> list[str]:
    """The columns of a folder's manifest.csv, which must include ``path`` and ``label``."""
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{manifest} is not a readable UTF-8 CSV file ({err}). Fix it, or rename it to use the "
                        f"class folder names instead.") from None
    missing = [c for c in ("path", "label") if c not in header]
    if missing:
        found = ", ".join(repr(c) for c in header) or "none"
        raise DataError(
            f"{manifest}, line 1: the header needs columns 'path' and 'label' (optionally one of "
            f"{', '.join(GROUP_COLUMNS[:5])} ... for patients, or any column with --group-column); it has {found}, so {' and '.join(repr(c) for c in missing)} "
            f"is missing. Rename the header's columns (e.g. 'path,label,patient'), or rename or remove "
            f"manifest.csv to take labels from the class folder names instead."
        )
    return header


def resolve(name: str, *, registry_path: Path | None = None, group_regex: str | None = None,
            group_column: str | None = None) -> tuple[DatasetSpec, Path]:
    """``(spec, root)`` for a registry name or a folder path; a clear error otherwise."""
    if group_regex and group_column:
        raise DataError("--group-regex and --group-column both say where the patient id is: give one of them.")
    specs = registry(registry_path)
    if name in specs:
        spec = require_supported(specs[name])
        if group_regex:
            spec = validate(replace(spec, groups=GroupSpec(kind="regex", pattern=group_regex)), name)
        if group_column:
            if spec.layout.kind != "manifest":
                raise DataError(f"--group-column {group_column}: the dataset '{name}' is laid out in class folders, "
                                f"not a manifest, so it has no columns. Use --group-regex on the file names.")
            spec = validate(replace(spec, groups=GroupSpec(kind="column", column=group_column)), name)
        return spec, dataset_root(spec)
    if _looks_like_path(name):
        folder = Path(name).expanduser()
        if not folder.exists():
            raise DataError(f"Dataset folder {folder} does not exist.")
        if not folder.is_dir():
            raise DataError(f"{folder} is not a folder. --dataset takes a registry name or a class-per-folder directory.")
        return folder_spec(folder, group_regex=group_regex, group_column=group_column), folder
    raise DataError(
        f"Unknown dataset '{name}'.{close_matches(name, specs)} "
        f"Run `bench datasets` for the registry, or pass a folder path."
    )


def binary_positive(spec: DatasetSpec, classes: tuple[str, ...]) -> int | None:
    """Index of the positive class for two-class data (the registry's, else the second class)."""
    if len(classes) != 2:
        return None
    if spec.positive and spec.positive in classes:
        return classes.index(spec.positive)
    return 1
