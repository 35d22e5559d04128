"""Pruning at the settings users run (3 folds, a few epochs): real Optuna studies in SQLite."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bench.errors import ConfigError
from bench.search.pruners import GROUP_ATTR, PRUNERS, epoch_step, fold_step, make_pruner, prune_group
from tests.test_search import TINY_SPACE

FOLDS, EPOCHS = 3, 3


def study_with(tmp_path: Path, pruner: str, direction: str = "maximize") -> optuna.Study:
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", pruner=make_pruner(pruner),
                               direction=direction)


def run_trial(study: optuna.Study, curve: list[list[float]], folds: list[float],
              group: dict | None = None) -> tuple[str, int]:
    """Report a trial the way the objective does: its group first, then each fold's epoch curve,
    then the fold score. Returns ("complete" | "pruned", the step it was cut at)."""
    trial = study.ask()
    if group is not None:
        trial.set_user_attr(GROUP_ATTR, group)
    for k in range(FOLDS):
        for e, value in enumerate(curve[k]):
            trial.report(value, epoch_step(k, e))
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                return "pruned", epoch_step(k, e)
        trial.report(folds[k], fold_step(k))
        if trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return "pruned", fold_step(k)
    study.tell(trial, sum(folds) / len(folds))
    return "complete", -1


GOOD = ([[0.70, 0.80, 0.85]] * FOLDS, [0.86, 0.84, 0.88])


def good(shift: float) -> tuple[list[list[float]], list[float]]:
    return [[v + shift for v in c] for c in GOOD[0]], [v + shift for v in GOOD[1]]


def test_median_cuts_a_clearly_bad_trial_in_its_first_fold_at_3_folds(tmp_path):
    study = study_with(tmp_path, "median")
    for shift in (0.0, 0.01, -0.01):
        assert run_trial(study, *good(shift))[0] == "complete"
    bad_curve = [[0.50, 0.50, 0.52]] * FOLDS
    state, step = run_trial(study, bad_curve, [0.5, 0.5, 0.5])
    assert (state, step) == ("pruned", epoch_step(0, 1))  # after its second epoch of fold 1


def test_median_spares_a_good_trial_and_waits_for_three_finished_ones(tmp_path):
    study = study_with(tmp_path, "median")
    bad = ([[0.5, 0.5, 0.5]] * FOLDS, [0.5] * FOLDS)
    assert run_trial(study, *good(0.0))[0] == "complete"
    assert run_trial(study, *good(0.02))[0] == "complete"
    assert run_trial(study, *bad)[0] == "complete"  # only 2 finished trials to compare with
    assert run_trial(study, *good(0.05))[0] == "complete"  # above the median everywhere


def test_median_cuts_on_the_mean_fold_score_when_the_curve_looked_fine(tmp_path):
    study = study_with(tmp_path, "median")
    for shift in (0.0, 0.01, -0.01):
        run_trial(study, *good(shift))
    curve, _ = good(0.02)
    assert run_trial(study, curve, [0.60, 0.9, 0.9]) == ("pruned", fold_step(0))


def test_median_respects_a_minimized_objective(tmp_path):
    study = study_with(tmp_path, "median", direction="minimize")
    for shift in (0.0, 0.01, -0.01):
        curve, folds = good(shift)
        run_trial(study, [[1 - v for v in c] for c in curve], [1 - v for v in folds])
    high = [[0.9, 0.9, 0.9]] * FOLDS  # a loss far above the others
    assert run_trial(study, high, [0.9] * FOLDS)[0] == "pruned"


def test_halving_keeps_only_the_best_third_at_its_rungs(tmp_path):
    study = study_with(tmp_path, "halving")
    outcomes = [run_trial(study, *good(shift)) for shift in (0.05, 0.04, 0.0, -0.05)]
    # Rung at epoch 1 of fold 1 (top third of trials that reached it); epoch 3 is the next rung.
    assert outcomes[0][0] == "complete"
    assert ("pruned", epoch_step(0, 0)) in outcomes[1:]
    assert all(step < fold_step(0) for state, step in outcomes if state == "pruned")


def test_wilcoxon_cannot_prune_at_3_folds_however_bad(tmp_path):
    """The arithmetic the README states: exact one-sided p >= 1/2^3 = 0.125 > 0.1."""
    study = study_with(tmp_path, "wilcoxon")
    for shift in (0.0, 0.01, -0.01):
        run_trial(study, *good(shift))
    assert run_trial(study, [[0.0, 0.0, 0.0]] * FOLDS, [0.0, 0.0, 0.0])[0] == "complete"


def test_wilcoxon_prunes_at_5_folds_after_four_lost_folds(tmp_path):
    from bench.search.pruners import FoldWilcoxonPruner

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'w.db'}", direction="maximize",
                                pruner=FoldWilcoxonPruner())
    best = study.ask()
    for k in range(5):
        best.report(0.9 - 0.01 * k, fold_step(k))
    study.tell(best, 0.88)
    worse = study.ask()
    cut = None
    for k in range(5):
        worse.report(0.5, fold_step(k))
        if worse.should_prune():
            cut = k
            break
    assert cut == 3  # p = 1/16 < 0.1 once four folds are lost; never before


def test_none_never_prunes_and_unknown_names_are_config_errors(tmp_path):
    study = study_with(tmp_path, "none")
    for shift in (0.0, 0.01, -0.01):
        run_trial(study, *good(shift))
    assert run_trial(study, [[0.0, 0.0, 0.0]] * FOLDS, [0.0] * 3)[0] == "complete"
    with pytest.raises(ConfigError, match="Unknown pruner 'medain'.*'median'"):
        make_pruner("medain")
    assert set(PRUNERS) == {"median", "halving", "wilcoxon", "none"}


def test_a_diverged_curve_is_pruned(tmp_path):
    study = study_with(tmp_path, "median")
    for shift in (0.0, 0.01, -0.01):
        run_trial(study, *good(shift))
    assert run_trial(study, [[math.nan] * 3] * FOLDS, [0.5] * 3)[0] == "pruned"


def shape(entry: str = "resnet50", epochs: int = EPOCHS, head_epochs: int = 0, **kw) -> dict:
    return prune_group(entry, {"epochs": epochs, "head_epochs": head_epochs, "schedule": "constant",
                               "warmup_epochs": 0, **kw})


def test_a_slow_starting_two_phase_group_is_not_pruned_against_a_fast_groups_curves(tmp_path):
    """Three quick one-phase trials set a high curve at every (fold, epoch); a two-phase trial
    whose head-only epochs score low and which then climbs above them is another group: it runs to
    the end (the old rule cut it at its second epoch, below the one-phase median)."""
    study = study_with(tmp_path, "median")
    fast = shape()
    for shift in (0.0, 0.01, -0.01):
        assert run_trial(study, *good(shift), group=fast)[0] == "complete"
    slow = shape(head_epochs=2, epochs=4)
    late_riser = [[0.50, 0.52, 0.88, 0.90]] * FOLDS
    assert run_trial(study, late_riser, [0.89] * FOLDS, group=slow) == ("complete", -1)


def test_a_trial_is_still_pruned_against_its_own_groups_finished_trials_at_3_folds(tmp_path):
    """Two groups finish three trials each, one scoring about 0.85, the other about 0.62. A trial
    of the low group at 0.55 is cut at its second epoch of fold 1 (half its 3 epochs), against
    its own group; one at 0.66 goes on, although it is below the median of all six."""
    study = study_with(tmp_path, "median")
    high, low = shape("resnet50"), shape("efficientnet_b0")
    for shift in (0.0, 0.01, -0.01):
        assert run_trial(study, *good(shift), group=high)[0] == "complete"
        assert run_trial(study, *good(shift - 0.23), group=low)[0] == "complete"
    flat = lambda v: ([[v] * EPOCHS] * FOLDS, [v] * FOLDS)  # noqa: E731
    assert run_trial(study, *flat(0.55), group=low) == ("pruned", epoch_step(0, 1))
    assert run_trial(study, *flat(0.66), group=low) == ("complete", -1)


def test_a_group_waits_for_three_finished_trials_of_its_own(tmp_path):
    study = study_with(tmp_path, "median")
    for shift in (0.0, 0.01, -0.01):
        run_trial(study, *good(shift), group=shape("resnet50"))
    other = shape("densenet121")
    for shift in (0.0, 0.01):
        run_trial(study, *good(shift), group=other)
    bad = ([[0.5] * EPOCHS] * FOLDS, [0.5] * FOLDS)
    assert run_trial(study, *bad, group=other)[0] == "complete"  # two of its group finished, not three
    assert run_trial(study, *bad, group=other)[0] == "pruned"


def test_no_decision_before_half_the_first_fold_nor_in_a_head_only_phase(tmp_path):
    """A 6-epoch trial is judged in its first fold from its third epoch on; a two-phase trial
    never in its head-only epochs, in any fold, however low they are."""
    study = study_with(tmp_path, "median")
    six = shape(epochs=6)
    rising = [[0.60, 0.70, 0.80, 0.85, 0.86, 0.87]] * FOLDS
    for shift in (0.0, 0.01, -0.01):
        assert run_trial(study, [[v + shift for v in c] for c in rising], [0.86] * FOLDS, group=six)[0] == "complete"
    assert run_trial(study, [[0.5] * 6] * FOLDS, [0.5] * FOLDS, group=six) == ("pruned", epoch_step(0, 2))

    two_phase = shape(epochs=6, head_epochs=4)
    for shift in (0.0, 0.01, -0.01):
        assert run_trial(study, [[v + shift for v in c] for c in rising], [0.86] * FOLDS,
                         group=two_phase)[0] == "complete"
    # Low in its head-only epochs of every fold (and a fine fold score): never cut there.
    head_low = [[0.3, 0.3, 0.3, 0.3, 0.9, 0.9]] * FOLDS
    assert run_trial(study, head_low, [0.9] * FOLDS, group=two_phase) == ("complete", -1)
    # Still low once its backbone trains: cut at the first epoch after the head-only phase.
    assert run_trial(study, [[0.3] * 6] * FOLDS, [0.3] * FOLDS, group=two_phase) == ("pruned", epoch_step(0, 4))


# The tiny search space of tests/test_search.py, 3 epochs, and four learning rates of which one learns nothing.
LR_SPACE = TINY_SPACE.replace("epochs = 1", "epochs = 3").replace(
    'type = "float"\nlow = 1e-3\nhigh = 1e-2\nlog = true', 'type = "categorical"\nchoices = [0.003, 0.002, 0.004, 1e-7]')


@pytest.mark.slow  # four real 3-fold trials: about a minute on 2 cores
def test_a_real_trial_that_learns_nothing_is_cut_in_its_first_fold(tmp_path):
    from bench.results import RunDir
    from bench.search.objective import make_objective
    from bench.search.space import load_space
    from bench.training.experiment import DataBySize, prepare_data

    (tmp_path / "lr.toml").write_text(LR_SPACE)
    space = load_space(str(tmp_path / "lr.toml"))
    data = prepare_data("pneumonia-demo", folds=FOLDS, seed=0, size=32)
    run = RunDir.create(tmp_path, "pneumonia-demo", out=tmp_path / "run", tag="search")
    study = study_with(tmp_path, "median")
    for lr in (0.003, 0.002, 0.004, 1e-7):
        study.enqueue_trial({"lr": lr})
    study.optimize(make_objective(DataBySize(data), space, run, study_seed=0), n_trials=4)
    trials = study.get_trials()
    assert [t.state for t in trials[:3]] == [TrialState.COMPLETE] * 3
    cut = trials[3]
    assert cut.state == TrialState.PRUNED, cut.intermediate_values
    assert cut.user_attrs["pruned_at_fold"] == 0 and cut.user_attrs["pruned_at_epoch"] >= 1
    folds = run.table("folds")
    assert folds[folds.trial == 3].status.tolist() == [f"pruned at epoch {cut.user_attrs['pruned_at_epoch'] + 1}"]


def test_the_objective_records_the_trials_group_before_its_first_report(tmp_path):
    """What the pruner filters peers by comes from the trial itself: its entry (here ``--by
    backbone,weights``) and training shape, set before the first epoch is reported."""
    from bench.results import RunDir
    from bench.search.objective import make_objective
    from bench.search.pruners import StepPruner
    from bench.search.space import load_space
    from bench.training.experiment import DataBySize, prepare_data

    seen = []

    class Spy(StepPruner):
        def prune_epoch(self, trial, peers, fold, epoch, maximize):
            seen.append(trial.user_attrs.get(GROUP_ATTR))
            return False

    (tmp_path / "two.toml").write_text(TINY_SPACE.replace("epochs = 1", "epochs = 2\nhead_epochs = 1"))
    space = load_space(str(tmp_path / "two.toml"))
    data = prepare_data("pneumonia-demo", folds=2, seed=0, size=32)
    run = RunDir.create(tmp_path, "pneumonia-demo", out=tmp_path / "run", tag="search")
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize", pruner=Spy())
    study.optimize(make_objective(DataBySize(data), space, run, study_seed=0, by=("backbone", "weights")), n_trials=1)
    expected = {"entry": "simple_cnn · none", "epochs": 2, "head_epochs": 1, "schedule": "plateau",
                "warmup_epochs": 0}
    assert study.trials[0].state == TrialState.COMPLETE
    assert seen and all(g == expected for g in seen), seen
