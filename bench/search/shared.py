"""The study a run directory's search wrote to, when its trials ran on several machines.

``bench final`` (and the held-out step of ``bench run``) choose each entry's best trial among
every machine's trials: the caller opens the shared study here and hands it to
``bench.evaluation.final.evaluate_run``, which never opens a storage itself.

A run directory is self-contained: a search that used its own ``study.db`` records it relative to
the directory (``sqlite:///study.db``), so a copied or moved directory reads its own study, never
the original's. Manifests written before recorded the absolute path; those resolve the same way
when the recorded file is a ``study.db`` and the directory has its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from bench.errors import ConfigError, DataError
from bench.results import RunDir
from bench.search.storage import DEFAULT_FILE, describe_storage, open_storage, storage_file

# The manifest's record of a search that used its run directory's own study.db.
LOCAL_STORAGE = f"sqlite:///{DEFAULT_FILE}"


def recorded_storage(run: RunDir, storage: Any) -> str:
    """What a search's manifest records of its storage: the run directory's own study.db as a path
    relative to the directory, anything else as ``describe_storage`` says (password redacted)."""
    described = describe_storage(storage)
    path = _sqlite_path(described)
    if path is not None and path.is_absolute() and path.resolve() == run.file("study").resolve():
        return LOCAL_STORAGE
    return described


def _sqlite_path(spec: str) -> Path | None:
    """The file of a ``sqlite:///`` URL (relative or absolute), or None for another kind of storage."""
    if not spec.lower().startswith("sqlite"):
        return None
    try:
        database = make_url(spec).database
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: left to open_storage to refuse
        return None
    return Path(database) if database else None


def _recorded_spec(run: RunDir, manifest: dict[str, Any]) -> str | None:
    """The storage the manifest records, resolved for this directory; None for its own study.db."""
    recorded = str(manifest.get("storage") or "")
    if not recorded:
        return None
    path = _sqlite_path(recorded)
    if path is None:  # a database server or a journal file: shared by the machines, wherever the directory is
        return recorded.replace(":***@", "@")  # "***": the password is redacted; the environment's is used
    local = run.file("study")
    path = path if path.is_absolute() else run.path / path
    if path.resolve() == local.resolve():
        return None
    if local.exists():
        if path.name == DEFAULT_FILE:  # the original directory's own study (an older manifest): this copy has it
            return None
        raise DataError(f"{run.path}: the manifest records the study in {path}, but this run directory has its own "
                        f"{DEFAULT_FILE}; it was copied or moved, and which study is meant is ambiguous. Give it "
                        f"with --storage: --storage {local} (this directory's) or --storage {path}.")
    if not path.exists():
        raise DataError(f"{run.path}: the manifest records the study in {path}, which does not exist (moved or "
                        f"deleted?), and this run directory has no {DEFAULT_FILE} of its own. Give the study's "
                        f"storage with --storage.")
    return f"sqlite:///{path}"  # a SQLite file outside the directory, shared by this machine's searches


def shared_study(run: RunDir, storage: str | None = None) -> Any:
    """The study of a search whose trials ran on several machines, or None for a local study.

    Each machine's run directory holds only the trials it ran itself; the study (one PostgreSQL
    URL or journal file for all of them) holds every trial with its configuration. ``storage``
    overrides the manifest's record, whose password is redacted: give it again with the URL, or in
    BENCH_STORAGE_PASSWORD / PGPASSWORD.
    """
    manifest = run.manifest()
    if manifest.get("kind") == "cv" or manifest.get("engine", "optuna") != "optuna":
        return None
    spec = storage or _recorded_spec(run, manifest)
    if spec is None:
        return None
    recorded_file = storage_file(spec) if storage is None else None
    if recorded_file is not None and not recorded_file.exists():
        # A journal file that moved: opening it would create an empty one there, or fail with "cannot open storage".
        raise DataError(f"{run.path}: the search's storage {recorded_file} (recorded in its manifest.json) is not "
                        f"there. If it or the run directory moved, give its new place: --storage "
                        f"{'journal:' if spec.startswith('journal') else 'sqlite:///'}NEW/PATH/{recorded_file.name}.")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        opened = open_storage(spec, run.path)
    except ConfigError as err:
        if storage is not None:
            raise
        raise ConfigError(f"{err} (This storage is the one {run.path}/manifest.json recorded; give another "
                          f"with --storage, e.g. if it moved.)") from None
    try:
        return optuna.load_study(study_name=manifest.get("study"), storage=opened)
    except KeyError:
        raise DataError(f"{run.path}: study '{manifest.get('study')}' is not in {spec}. Give the storage the "
                        f"search used with --storage.") from None
