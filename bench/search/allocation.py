"""How a search shares its trials among the leaderboard's entries (backbones, or ``--by`` combinations).

The leaderboard ranks entries as if each were equally tuned. Left to itself TPE concentrates on
the entry that looked best early, so by default (``balanced``) each entry gets the same number of
trials: a trial's entry is the one with the fewest trials among the trials numbered before it
(ties in the entries' order), and the sampler chooses everything else.

Why "numbered before it": Optuna gives trial numbers atomically in the shared storage, so every
worker on every machine, and a resumed search, computes the same entry for the same number from
the same record. A lower-numbered trial that is still choosing its entry (running, no parameters
yet) is counted as the entry the same rule gives it, so two workers starting at once cannot both
take the same place. A failed trial does not use its entry's budget (a dead worker's trial is
re-queued with its parameters, and that retry is what counts); surplus trials (budget already
taken) count for nothing. Enqueued trials with fixed parameters count as what they fix.

``sampler`` keeps the old behaviour: the sampler picks the entry (a new study tries each backbone
once first). Grid search visits every combination already, so it always runs as ``sampler``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from bench.errors import ConfigError, close_matches
from bench.evaluation.grouping import DEFAULT_BY, Grouping


@dataclass(frozen=True)
class Allocation:
    help: str
    balances: bool


ALLOCATIONS: dict[str, Allocation] = {
    "balanced": Allocation("each entry (backbone, or --by combination) gets the same number of trials, ±1 "
                           "(default); the sampler chooses everything else", balances=True),
    "sampler": Allocation("the sampler also chooses the backbone (TPE spends more trials where it looked good "
                          "early)", balances=False),
}
DEFAULT_ALLOCATION = "balanced"
SAMPLERS_THAT_ALLOCATE = ("grid",)  # they visit every combination themselves; a fixed entry would break them

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


def check_allocation(name: str) -> Allocation:
    if name not in ALLOCATIONS:
        raise ConfigError(f"Unknown --allocation '{name}'.{close_matches(name, ALLOCATIONS)} "
                          f"Allowed: {', '.join(ALLOCATIONS)}.")
    return ALLOCATIONS[name]


def effective_allocation(name: str, sampler: str) -> str:
    """The allocation a search really uses: ``grid`` allocates by itself."""
    check_allocation(name)
    return "sampler" if sampler in SAMPLERS_THAT_ALLOCATE else name


def balance_factors(space: Any, fixed: Mapping[str, Any], by: Sequence[str] = DEFAULT_BY) -> tuple[
        tuple[str, ...], list[tuple[Any, ...]]]:
    """The factors a balanced search fixes per trial and their combinations (the entries), in order.

    A factor pinned on the command line, or with a single value, is not searched: it is left out.
    No factor left (one backbone): nothing to balance, ``((), [])``. Every factor must be a
    categorical parameter without ``when`` (every combination must exist), else a ConfigError.
    """
    factors: list[str] = []
    choices: list[list[Any]] = []
    where = space.path or space.name
    for name in by:
        if name in fixed:
            continue
        if name not in space:
            if name == "backbone":
                continue  # a space that fixes its backbone: one entry
            raise ConfigError(f"--by {name}: not a parameter of the search space {where} "
                              f"(its parameters: {', '.join(space.names)}).")
        p = space.param(name)
        if p.kind == "fixed":
            continue
        if p.kind != "categorical" or p.when:
            raise ConfigError(f"--by {name}: a balanced search needs categorical parameters without 'when' to "
                              f"group by; [params.{name}] in {where} is {p.kind}"
                              f"{' with a condition' if p.when else ''}. Group by categorical parameters, or "
                              "use --allocation sampler.")
        if len(p.choices or ()) < 2:
            continue
        factors.append(name)
        choices.append(list(p.choices or ()))
    if not factors:
        return (), []
    return tuple(factors), list(itertools.product(*choices))


def entry_of(trial: FrozenTrial, factors: Sequence[str]) -> tuple[Any, ...] | None:
    """The factors' values of a trial: suggested, or fixed by an enqueue; None if not chosen yet."""
    fixed = trial.system_attrs.get("fixed_params") or {}
    values = []
    for name in factors:
        if name in trial.params:
            values.append(trial.params[name])
        elif name in fixed:
            values.append(fixed[name])
        else:
            return None
    return tuple(values)


def next_entry(trials: Iterable[FrozenTrial], number: int, factors: Sequence[str],
               entries: Sequence[tuple[Any, ...]]) -> tuple[Any, ...]:
    """The entry of trial ``number``: the fewest trials among those numbered before it."""
    order = {e: i for i, e in enumerate(entries)}
    counts = dict.fromkeys(entries, 0)

    def least() -> tuple[Any, ...]:
        return min(entries, key=lambda e: (counts[e], order[e]))

    for t in sorted((t for t in trials if t.number < number), key=lambda t: t.number):
        if t.state not in COUNTED or t.user_attrs.get("surplus"):
            continue  # failed: its retry (or the next trial) takes its place
        entry = entry_of(t, factors)
        if entry is None:
            # Still choosing (or an enqueued trial that fixes something else): the rule gives it this.
            entry = least()
        if entry in counts:
            counts[entry] += 1
    return least()


class BalancedSampler(optuna.samplers.BaseSampler):
    """Wraps a sampler: the factors of each trial come from ``next_entry``, the rest from the sampler
    (like Optuna's ``PartialFixedSampler``, with the fixed values chosen per trial)."""

    def __init__(self, base: optuna.samplers.BaseSampler, factors: Sequence[str],
                 entries: Sequence[tuple[Any, ...]]) -> None:
        self._base = base
        self._factors = tuple(factors)
        self._entries = list(entries)
        self._chosen: dict[int, dict[str, Any]] = {}

    def reseed_rng(self) -> None:
        self._base.reseed_rng()

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._base.before_trial(study, trial)
        entry = next_entry(study.get_trials(deepcopy=False), trial.number, self._factors, self._entries)
        self._chosen[trial.number] = dict(zip(self._factors, entry))

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        space = self._base.infer_relative_search_space(study, trial)
        return {k: v for k, v in space.items() if k not in self._factors}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, Any]) -> dict[str, Any]:
        return self._base.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: Any) -> Any:
        chosen = self._chosen.get(trial.number) or {}
        if param_name in chosen:
            return chosen[param_name]
        return self._base.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self._base.after_trial(study, trial, state, values)
        self._chosen.pop(trial.number, None)


def wrap_sampler(sampler: optuna.samplers.BaseSampler, allocation: str, factors: Sequence[str],
                 entries: Sequence[tuple[Any, ...]]) -> optuna.samplers.BaseSampler:
    if not ALLOCATIONS[allocation].balances or not factors:
        return sampler
    return BalancedSampler(sampler, factors, entries)


# ---- what each entry got: bench status, the live panel, the summary --------------------------------


@dataclass
class EntryCounts:
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    running: int = 0
    seconds: float = 0.0

    def add(self, state: str, seconds: Any) -> None:
        if state == "COMPLETE":
            self.complete += 1
        elif state == "PRUNED":
            self.pruned += 1
        elif state == "FAIL":
            self.failed += 1
        elif state == "RUNNING":
            self.running += 1
        try:
            s = float(seconds)
        except (TypeError, ValueError):
            return
        if math.isfinite(s):
            self.seconds += s

    def text(self) -> str:
        """``4/1/0, 312 s``: complete / pruned / failed trials and the trial-seconds they spent."""
        running = f" +{self.running} running" if self.running else ""
        return f"{self.complete}/{self.pruned}/{self.failed}{running}, {self.seconds:.0f} s"


def trial_label(trial: FrozenTrial, grouping: Grouping) -> str | None:
    """The entry's label of a trial ("resnet50", "resnet50 · imagenet"); None before it chose one."""
    config = trial.user_attrs.get("config") or {**trial.params,
                                                **(trial.system_attrs.get("fixed_params") or {})}
    if not all(name in config for name in grouping.by):
        return None
    return grouping.label(config)


def entry_counts(trials: Iterable[FrozenTrial], by: Sequence[str] = DEFAULT_BY,
                 label: Callable[[FrozenTrial, Grouping], str | None] = trial_label) -> dict[str, EntryCounts]:
    """Per entry, in order of first appearance: trials complete / pruned / failed / running and the
    trial-seconds spent (each trial's own ``seconds``). Surplus trials (never ran) are left out."""
    grouping = Grouping(tuple(by))
    out: dict[str, EntryCounts] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.user_attrs.get("surplus") or t.state == TrialState.WAITING:
            continue
        name = label(t, grouping)
        if name is None:
            continue
        out.setdefault(name, EntryCounts()).add(t.state.name, t.user_attrs.get("seconds"))
    return out


def study_by(study_attrs: Mapping[str, Any]) -> tuple[str, ...]:
    """The factors a study's entries are (recorded when it was created or continued)."""
    by = study_attrs.get("balance_by")
    return tuple(by) if by else DEFAULT_BY
