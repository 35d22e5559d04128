"""The study a run directory's search wrote to, when its trials ran on several machines.

``bench final`` (and the held-out step of ``bench run``) choose each entry's best trial among
every machine's trials: the caller opens the shared study here and hands it to
``bench.evaluation.final.evaluate_run``, which never opens a storage itself.
"""

from __future__ import annotations

from typing import Any

from bench.errors import ConfigError, DataError
from bench.results import RunDir
from bench.search.storage import open_storage, storage_file


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
    recorded = str(manifest.get("storage") or "")
    local = run.file("study").resolve()
    if storage is None and (not recorded or recorded == f"sqlite:///{local}"):
        return None
    recorded_file = storage_file(recorded) if recorded and storage is None else None
    if recorded_file is not None and not recorded_file.exists():
        if recorded_file.name == local.name and local.is_file():
            return None  # the run directory moved, its own study.db with it: that is the study
        # Opening it would create an empty database there, or fail with "cannot open storage".
        raise DataError(f"{run.path}: the search's storage {recorded_file} (recorded in its manifest.json) is not "
                        f"there. If it or the run directory moved, give its new place: --storage "
                        f"{'journal:' if recorded.startswith('journal') else 'sqlite:///'}NEW/PATH/"
                        f"{recorded_file.name}.")
    import optuna

    # The manifest shows a password as "***": drop it so that the environment's is used.
    spec = storage or recorded.replace(":***@", "@")
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
