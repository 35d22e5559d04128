"""``bench run --time-limit``: the supervisor that runs ``bench.search.plan``'s stages in order.

Each stage is the ordinary search (the same workers, storage and sampler) with a stage-specific
worker spec: the stage's pinned values, its promoted backbones and its deadline. The clock is the
study's: ``time_limit`` and ``time_spent`` (user attributes) are written every few seconds and at
exit, so a killed search loses at most those seconds and a resumed one continues the same clock.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from typing import Any

from optuna.trial import TrialState

from bench.errors import ConfigError
from bench.search import plan as P
from bench.search.cost import trial_costs
from bench.search.gate import pretrained_backbones
from bench.search.probe_stage import PROBE_CUT, probe_records, run_probe_stage
from bench.search.runner import SearchOptions, Supervisor, drive, search_data_kwargs
from bench.search.worker import WorkerSpec, finished_and_running

CLOCK_EVERY = 5.0  # seconds between writes of the spent time to the study
UNBOUNDED_TRIALS = 100_000  # --trials when only --time-limit is given: the time is the budget


def check_time_limit(options: SearchOptions) -> None:
    if options.timeout is not None:
        raise ConfigError("--time-limit and --timeout both bound the search's time: use --time-limit (a plan that "
                          "reserves the held-out evaluation's time) or --timeout (stop starting trials), not both.")
    if options.allocation != "balanced" or options.sampler == "grid":
        raise ConfigError("--time-limit shares each stage equally among the backbones: it needs --allocation "
                          "balanced (the default) and a sampler other than grid.")
    if "backbone" not in options.by:
        raise ConfigError(f"--time-limit promotes backbones between stages: --by must include backbone "
                          f"(got --by {','.join(options.by)}).")


class StagedSupervisor(Supervisor):
    def __init__(self, options: SearchOptions, console: Any, time_limit: float, clock: P.Clock = time.monotonic):
        check_time_limit(options)
        super().__init__(options, console)
        self.time_limit = time_limit
        self.clock = clock
        self.session_start = clock()  # before preparing the data: that time is the budget's too
        self.stage: str | None = None
        self.deadline = math.inf
        self.promoted: tuple[str, ...] = ()
        self._saved = 0.0

    # ---- the clock ----------------------------------------------------------------------------
    def prepare(self) -> None:
        super().prepare()
        attrs = self.study.user_attrs
        before = attrs.get("time_limit")
        if before is not None and float(before) != self.time_limit:
            self.console.print(f"This study was started with --time-limit {float(before):.0f} s; this session uses "
                               f"{self.time_limit:.0f} s, counted from the same start.", highlight=False)
        self.study.set_user_attr("time_limit", self.time_limit)
        spent = float(attrs.get("time_spent", 0.0))
        self.plan = P.Plan(self.time_limit, spent, self.session_start, self.clock)
        self.done: list[str] = list(attrs.get("stages_done", []))
        self.promoted = tuple(attrs.get("promoted", ()))
        self.pretrained = pretrained_backbones(self.space, self.fixed)
        self.console.print(f"--time-limit {self.time_limit:.0f} s: {spent:.0f} s spent before this session; stages "
                           + ", ".join(f"{s.name} (to {s.end:.0%})" for s in P.STAGES)
                           + " of the time left after the held-out evaluation's reserve", highlight=False)

    def save_clock(self) -> None:
        self._saved = self.clock()
        self.study.set_user_attr("time_spent", round(self.plan.spent_now(), 1))

    def _tick(self, now: float) -> None:
        if self.progress.stage != self.stage:
            self.progress.stage, self.progress.deadline = self.stage, self.deadline
        if self.clock() - self._saved >= CLOCK_EVERY:
            self.save_clock()
            if self.stage is not None:
                # The final's reserve grows as better (often dearer) trials finish: the stage ends
                # sooner rather than eat into it. Workers' gates keep the deadline they started with.
                self.deadline = min(self.deadline, self.plan.deadline(self.stage, self.reserve()))
                self.progress.deadline = self.deadline
        if now >= self.deadline and not self.stop.is_set():
            self.stop_reason = f"stage {self.stage}: its share of --time-limit is spent"
            self.stop.set()

    # ---- the stages ---------------------------------------------------------------------------
    def reserve(self) -> float:
        if not self.o.final or self.o.storage is not None:
            return 0.0  # this command runs no held-out step (--no-final; a shared study's is run once, later)
        maximize = self.space.direction == "maximize"
        return P.final_reserve(trial_costs(self.study.get_trials(deepcopy=False)), self.o.folds or 1,
                               self.time_limit, maximize)

    def _spec(self, index: int, env: dict[str, str]) -> WorkerSpec:
        spec = super()._spec(index, env)
        stage = {"stage": self.stage, "deadline": self.deadline, "folds": self.o.folds,
                 "pretrained": frozenset(self.pretrained), "probes": dict(self.study.user_attrs.get("probe_costs", {})),
                 "cv_images": int(self.data.splits.cv.sum())}
        return replace(spec, stage=stage, promoted=self.promoted if P.stage(self.stage or "").promote else ())

    def run_workers(self) -> int:
        try:
            return self._run_stages()
        finally:
            self.save_clock()

    def _run_stages(self) -> int:
        for s in P.STAGES:
            if s.name in self.done:
                continue
            reserve = self.reserve()
            self.stage, self.deadline = s.name, self.plan.deadline(s.name, reserve)
            self.study.set_user_attr("stage", s.name)
            left = self.deadline - self.clock()
            if left <= 0:
                self.console.print(f"stage {s.name}: skipped, its share of --time-limit is spent "
                                   f"({self.plan.spent_now():.0f} s of {self.time_limit:.0f} s).", highlight=False)
                self._end_stage(s.name, "no time left")
                continue
            self.console.print(f"stage {s.name} ({s.help}): up to {left:.0f} s; {reserve:.0f} s reserved for the "
                               f"held-out evaluation", highlight=False)
            started = self.clock()
            code = self._probe() if not s.trials else self._trials(s)
            if code:
                return code
            why = "probes done" if not s.trials else (self.stop_reason or "no further trial fits, or --trials reached")
            self._end_stage(s.name, why, seconds=self.clock() - started)
            self.stop_reason = None  # a stage's end is the plan's, not a stopped search
        self.stage = None
        self.study.set_user_attr("stage", "final")
        return 0

    def _end_stage(self, name: str, why: str, seconds: float = 0.0) -> None:
        self.done.append(name)
        self.study.set_user_attr("stages_done", self.done)
        used = dict(self.study.user_attrs.get("stage_seconds", {}))
        used[name] = round(used.get(name, 0.0) + seconds, 1)
        self.study.set_user_attr("stage_seconds", used)
        self.console.print(f"stage {name} ended: {why} ({seconds:.0f} s).", highlight=False)
        self._record_plan()

    def _probe(self) -> int:
        import multiprocessing as mp

        skipped = [b for b in self._backbones() if b not in self.pretrained]
        for b in skipped:
            self.console.print(f"probe stage: {b} has no ImageNet weights in this space: no probe; it competes from "
                               f"the heads stage.", highlight=False)
        wanted = [b for b in self._backbones() if b in self.pretrained]
        if not wanted:
            return 0
        code = run_probe_stage(mp.get_context("spawn"), search_data_kwargs(self.o), int(self.data.size), wanted,
                               self.run, self.o.seed, timeout=max(self.deadline - self.clock(), 0.0))
        if code == PROBE_CUT:
            self.console.print("probe stage: cut at its deadline; the backbones probed so far are kept in "
                               "probes.csv, the others are ranked by the heads stage alone.", highlight=False)
        elif code:
            self.console.print(f"[yellow]The probe stage failed (exit code {code}); the heads stage ranks the "
                               f"backbones alone.[/]")
            return 0
        scores, costs = probe_records(self.run, self.space.metric, self.space.direction == "maximize",
                                      int(self.data.size))
        self.study.set_user_attr("probe_scores", scores)
        self.study.set_user_attr("probe_costs", costs)
        return 0

    def _trials(self, s: P.Stage) -> int:
        if s.promote:
            maximize = self.space.direction == "maximize"
            scores = P.best_scores(self.study.user_attrs.get("probe_scores", {}),
                                   trial_costs(self.study.get_trials(deepcopy=False)), maximize)
            scores = {b: v for b, v in scores.items() if b in self._backbones()}
            self.promoted = tuple(P.promote(scores, self.pretrained, maximize=maximize)) or tuple(self._backbones())
            self.study.set_user_attr("promoted", list(self.promoted))
            self.console.print(f"stage {s.name}: promoted {', '.join(self.promoted)} (best of probe and heads CV "
                               f"{self.space.metric}: " + ", ".join(f"{b} {v:.3f}" for b, v in scores.items()) + ")",
                               highlight=False)
        return super().run_workers()

    def _backbones(self) -> list[str]:
        if "backbone" in self.fixed:
            return [str(self.fixed["backbone"])]
        return [str(b) for b in (self.space._possible("backbone", self.fixed) or [])]

    # ---- the record ---------------------------------------------------------------------------
    def _record_plan(self) -> None:
        """The manifest's ``time_limit``: the plan, and per stage what it planned and used (the report's table)."""
        attrs = self.study.user_attrs
        reserve = self.reserve()
        stages = []
        trials = self.study.get_trials(deepcopy=False)
        for s in P.STAGES:
            mine = [t for t in trials if t.user_attrs.get("stage") == s.name and not t.user_attrs.get("surplus")]
            start = 0.0 if s is P.STAGES[0] else P.STAGES[P.STAGES.index(s) - 1].end
            stages.append({
                "stage": s.name, "help": s.help, "share": round(s.end - start, 3),
                "planned_seconds": round((s.end - start) * max(self.time_limit - reserve, 0.0), 1),
                "used_seconds": attrs.get("stage_seconds", {}).get(s.name),
                "complete": sum(t.state == TrialState.COMPLETE for t in mine),
                "pruned": sum(t.state == TrialState.PRUNED for t in mine),
                "not_started": sum(bool(t.user_attrs.get("over_budget")) for t in trials
                                   if t.user_attrs.get("stage") == s.name),
                "trial_seconds": round(sum(float(t.user_attrs.get("seconds") or 0) for t in mine), 1),
                "backbones": sorted({str((t.user_attrs.get("config") or {}).get("backbone")) for t in mine
                                     if t.user_attrs.get("config")}) if s.trials
                else sorted(attrs.get("probe_scores", {})),
                "done": s.name in self.done,
            })
        self.run.update_manifest(time_limit={
            "limit_seconds": self.time_limit, "spent_seconds": round(self.plan.spent_now(), 1),
            "final_reserve_seconds": round(reserve, 1), "promoted": list(self.promoted),
            "probe_scores": attrs.get("probe_scores", {}), "stages": stages,
        })

    def finish(self, code: int) -> int:
        if self.stage is None and code == 0:
            # The plan is done: --trials was only a cap, so the search is complete with what it ran.
            finished, _ = finished_and_running(self.study)
            self.o = replace(self.o, trials=max(1, min(self.o.trials, finished)))
        code = super().finish(code)
        self.save_clock()
        self._record_plan()
        self.console.print(f"--time-limit: {self.plan.spent_now():.0f} s spent of {self.time_limit:.0f} s.",
                           highlight=False)
        return code


def run_staged_search(options: SearchOptions, console: Any, time_limit: float) -> int:
    return drive(StagedSupervisor(options, console, time_limit))
