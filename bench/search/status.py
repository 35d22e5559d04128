"""``bench status``: the studies in a storage (or in every run directory) at a glance."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from bench.errors import ConfigError
from bench.search.allocation import entry_counts, study_by
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
        for col in ("study", "dataset", "objective", "allocation", "complete", "pruned", "failed", "running",
                    "waiting", "best", "best per backbone"):
            table.add_column(col)
        budgets = []
        clocks = []
        for s in list_studies(storage):
            study = optuna.load_study(study_name=s.name, storage=storage)
            per_backbone = ", ".join(
                f"{(t.user_attrs.get('config') or {}).get('backbone', '?')} {t.value:.3f} (#{t.number})"
                for t in best_per_backbone(study)
            )
            budgets.append(_budget_table(s.name, study, study_by(s.user_attrs)))
            clocks.append(time_limit_line(s.name, s.user_attrs))
            table.add_row(s.name, str(s.user_attrs.get("dataset", "?")),
                          f"{s.user_attrs.get('metric', '?')} ({s.direction})",
                          str(s.user_attrs.get("allocation", "sampler")), str(s.complete), str(s.pruned),
                          str(s.fail), str(s.running), str(s.waiting),
                          "-" if s.best_value is None else f"{s.best_value:.4f}", per_backbone or "-")
        console.print(table)
        for line in clocks:
            if line:
                console.print(line, highlight=False)
        for budget in budgets:
            if budget is not None:
                console.print(budget)
    return 0


def time_limit_line(name: str, attrs: dict[str, Any]) -> str | None:
    """A --time-limit study's stage and clock (bench.search.staged keeps them in the study)."""
    if attrs.get("time_limit") is None:
        return None
    limit, spent = float(attrs["time_limit"]), float(attrs.get("time_spent", 0.0))
    done = ", ".join(attrs.get("stages_done", [])) or "none"
    return (f"{name}: --time-limit {limit:.0f} s, stage {attrs.get('stage', 'not started')} (done: {done}), "
            f"spent {spent:.0f} s, left {max(limit - spent, 0.0):.0f} s")


def _budget_table(name: str, study: Any, by: tuple[str, ...]) -> Any:
    """What each entry drew: a ranking of entries that had 2 and 30 trials is not a fair one."""
    from rich.table import Table

    entries = entry_counts(study.get_trials(deepcopy=False), by)
    if not entries:
        return None
    table = Table(title=f"{name}: trials per {' · '.join(by)}", title_justify="left")
    for col in (" · ".join(by), "complete", "pruned", "failed", "running", "trial-seconds"):
        table.add_column(col, justify="left" if col == " · ".join(by) else "right")
    for entry, c in entries.items():
        table.add_row(entry, str(c.complete), str(c.pruned), str(c.failed), str(c.running), f"{c.seconds:.0f}")
    return table
