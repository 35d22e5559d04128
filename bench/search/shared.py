"""The study a run directory's search wrote to, when its trials ran on several machines.

``bench final`` (and the held-out step of ``bench run``) choose each entry's best trial among
every machine's trials: the caller opens the shared study here and hands it to
``bench.evaluation.final.evaluate_run``, which never opens a storage itself.
"""

from __future__ import annotations

from typing import Any

from bench.errors import DataError
from bench.results import RunDir
from bench.search.storage import open_storage


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
    import optuna

    # The manifest shows a password as "***": drop it so that the environment's is used.
    spec = storage or recorded.replace(":***@", "@")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=manifest.get("study"), storage=open_storage(spec, run.path))
    except KeyError:
        raise DataError(f"{run.path}: study '{manifest.get('study')}' is not in {spec}. Give the storage the "
                        f"search used with --storage.") from None
