"""What a running search shows: a rich live panel on a terminal, plain log lines otherwise (CI)."""

from __future__ import annotations

import math
import time
from typing import Any

from optuna.trial import TrialState

from bench.evaluation.grouping import DEFAULT_BY, Grouping
from bench.search.allocation import EntryCounts, entry_counts


class Progress:
    """Fed with worker events; renders counts, the best value, running trials and an ETA."""

    def __init__(self, console: Any, *, total: int, folds: int, metric: str, direction: str,
                 by: tuple[str, ...] = DEFAULT_BY) -> None:
        self.console, self.total, self.folds, self.metric = console, total, folds, metric
        self.grouping = Grouping(by)
        self.entries: dict[str, EntryCounts] = {}  # per leaderboard entry: trials by state, trial-seconds
        self.maximize = direction == "maximize"
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        self.best: float | None = None
        self.best_trial: int | None = None
        self.running: dict[int, dict[str, Any]] = {}  # worker -> what it is doing
        self.durations: list[float] = []
        self.t0 = time.monotonic()
        self.live = None
        self.jobs = 1
        # A --time-limit search (bench.search.staged): its stage and that stage's deadline replace the
        # trial total and the ETA, which mean nothing when the time is the budget.
        self.stage: str | None = None
        self.deadline = 0.0

    def set_counts(self, study: Any) -> None:
        trials = study.get_trials(deepcopy=False)
        self.entries = entry_counts([t for t in trials if t.state != TrialState.RUNNING], self.grouping.by)
        for t in trials:
            if t.state.name in self.counts and not t.user_attrs.get("surplus"):  # never ran: not a failure
                self.counts[t.state.name] += 1
            if t.state == TrialState.COMPLETE and t.value is not None:
                self._offer(t.value, t.number)

    def _offer(self, value: float, number: int) -> None:
        if value is None or math.isnan(value):
            return
        if self.best is None or (value > self.best if self.maximize else value < self.best):
            self.best, self.best_trial = value, number

    # ---- events ---------------------------------------------------------------------------
    def event(self, kind: str, p: dict[str, Any]) -> None:
        worker = p.get("worker")
        if kind == "ready":
            self.jobs = max(self.jobs, worker + 1)
            self._log(f"worker {worker} ready (pid {p['pid']})")
        elif kind == "trial_start":
            config = p.get("config") or {"backbone": p["backbone"]}
            entry = self.grouping.label(config) if all(n in config for n in self.grouping.by) else p["backbone"]
            self.running[worker] = {"trial": p["number"], "backbone": p["backbone"], "fold": 0, "epoch": 0,
                                    "epochs": 0, "values": [], "t0": time.monotonic(), "entry": entry}
            self._log(f"trial {p['number']} started on worker {worker}: {p['backbone']}")
        elif kind == "epoch" and worker in self.running:
            self.running[worker].update(fold=p["fold"], epoch=p["epoch"] + 1, epochs=p["epochs"])
        elif kind == "fold" and worker in self.running:
            self.running[worker]["values"].append(p["value"])
            self._log(f"trial {p['number']} fold {p['fold'] + 1}/{self.folds}: {self.metric} {p['value']:.4f}")
        elif kind == "trial_end":
            started = self.running.pop(worker, None) or {}
            state = p["state"]
            entry = p.get("entry") or started.get("entry")
            if entry is not None:
                self.entries.setdefault(entry, EntryCounts()).add(state, p.get("seconds"))
            if state in self.counts:
                self.counts[state] += 1
            if p.get("seconds"):
                self.durations.append(float(p["seconds"]))
            if state == "COMPLETE":
                self._offer(p["value"], p["number"])
            detail = f"{self.metric} {p['value']:.4f}" if p.get("value") is not None else (p.get("reason") or "")
            self._log(f"trial {p['number']} {state.lower()}: {p.get('backbone')} {detail}")
        elif kind == "setup_failed":
            self._log(f"worker {worker} stopped: {p['error']}")
        self._refresh()

    def trial_failed(self, number: int, reason: str) -> None:
        self.counts["FAIL"] += 1
        for worker, r in list(self.running.items()):
            if r["trial"] == number:
                self.entries.setdefault(r["entry"], EntryCounts()).add("FAIL", time.monotonic() - r["t0"])
                del self.running[worker]
        self._log(f"trial {number} failed: {reason}")
        self._refresh()

    # ---- rendering ------------------------------------------------------------------------
    def eta(self) -> str:
        done = self.counts["COMPLETE"] + self.counts["PRUNED"]
        if not self.durations or done >= self.total:
            return "?"
        mean = sum(self.durations) / len(self.durations)
        return f"{mean * (self.total - done) / max(self.jobs, 1) / 60:.1f} min"

    def headline(self) -> str:
        c = self.counts
        best = f"{self.best:.4f} (trial {self.best_trial})" if self.best is not None else "-"
        if self.stage is not None:
            left = max(self.deadline - time.monotonic(), 0.0)
            return (f"stage {self.stage}, {left:.0f} s left in it | {c['COMPLETE'] + c['PRUNED']} finished: "
                    f"{c['COMPLETE']} complete, {c['PRUNED']} pruned | best {self.metric} {best}")
        return (f"{c['COMPLETE'] + c['PRUNED']}/{self.total} finished: {c['COMPLETE']} complete, {c['PRUNED']} pruned, "
                f"{c['FAIL']} failed | best {self.metric} {best} | elapsed {(time.monotonic() - self.t0) / 60:.1f} min, "
                f"ETA {self.eta()}")

    def entry_line(self) -> str:
        """What each leaderboard entry has had so far: unequal budgets are visible while they happen."""
        if not self.entries:
            return ""
        return (f"per {self.grouping.noun} (complete/pruned/failed, trial-s): "
                + " | ".join(f"{name} {c.text()}" for name, c in self.entries.items()))

    def render(self) -> Any:
        from rich.table import Table

        table = Table(title=self.headline(), title_justify="left", expand=False)
        for col in ("worker", "trial", "backbone", "fold", "epoch", f"{self.metric} so far", "running"):
            table.add_column(col)
        for worker, r in sorted(self.running.items()):
            values = r["values"]
            so_far = f"{sum(values) / len(values):.4f}" if values else "-"
            table.add_row(str(worker), str(r["trial"]), r["backbone"], f"{r['fold'] + 1}/{self.folds}",
                          f"{r['epoch']}/{r['epochs'] or '?'}", so_far, f"{time.monotonic() - r['t0']:.0f} s")
        if not self.entries:
            return table
        from rich.console import Group
        from rich.text import Text

        return Group(table, Text(self.entry_line()))  # under the table, as wide as the terminal

    def _log(self, line: str) -> None:
        if self.live is None:
            stamp = time.strftime("%H:%M:%S")
            self.console.print(f"{stamp} {line}", highlight=False, markup=False)

    def _refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.render())

    def __enter__(self) -> Progress:
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self.render(), console=self.console, refresh_per_second=2)
            self.live.__enter__()
        else:
            self._log(self.headline())
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None
        self._log(self.headline())
        if self.entries:
            self._log(self.entry_line())
