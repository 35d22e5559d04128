"""``bench status``: the studies in a storage (or in every run directory) at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from bench.errors import ConfigError
from bench.search.storage import describe_storage, list_studies, open_storage, torn_journal
from bench.search.summary import best_per_backbone


def _storages(spec: str | None, runs_dir: Path) -> list[Any]:
    if spec:
        # Read-only: a journal's torn tail is reported (print_status), never cut back here.
        return [open_storage(spec, runs_dir, repair=False)]
    found = sorted(runs_dir.glob("*/*/study.db")) if runs_dir.is_dir() else []
    if not found:
        raise ConfigError(f"No studies found under {runs_dir} (looked for */*/study.db). Give --storage URL "
                          f"or --runs-dir DIR.")
    return [open_storage(str(path.resolve()), path.parent) for path in found]


def print_status(console: Any, spec: str | None, runs_dir: Path) -> int:
    from rich.table import Table

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torn = torn_journal(spec) if spec else None
    if torn:
        console.print(f"[yellow]warning:[/] {torn[0]} ends in an incomplete record ({torn[1]} byte(s); a writer was "
                      f"killed mid-write): shown without it. `bench status` only reads; the next `bench run` on this "
                      f"storage cuts it back, keeping a copy.", highlight=False, soft_wrap=True)
    for storage in _storages(spec, runs_dir):
        table = Table(title=describe_storage(storage), title_justify="left")
        for col in ("study", "dataset", "objective", "complete", "pruned", "failed", "running", "waiting", "best",
                    "best per backbone"):
            table.add_column(col)
        for s in list_studies(storage):
            study = optuna.load_study(study_name=s.name, storage=storage)
            per_backbone = ", ".join(
                f"{(t.user_attrs.get('config') or {}).get('backbone', '?')} {t.value:.3f} (#{t.number})"
                for t in best_per_backbone(study)
            )
            table.add_row(s.name, str(s.user_attrs.get("dataset", "?")),
                          f"{s.user_attrs.get('metric', '?')} ({s.direction})", str(s.complete), str(s.pruned),
                          str(s.fail), str(s.running), str(s.waiting),
                          "-" if s.best_value is None else f"{s.best_value:.4f}", per_backbone or "-")
        console.print(table)
    return 0
