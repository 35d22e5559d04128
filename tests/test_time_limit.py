"""`bench run --time-limit`: the staged plan (probes, cached heads, fine-tuning, then the final's
reserved time), its cost model and its clock. Plan logic runs on a fake clock; the search itself is
real (simple_cnn and ImageNet EfficientNet-Lite0, 32 px, 1 epoch, 2 folds on pneumonia-demo)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from bench.cli import main
from bench.cli.argtypes import duration
from bench.search import plan as P
from bench.search.cost import predict, trial_costs
from bench.search.gate import StageGate


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---- the duration ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1.5h", 5400), ("2h30m", 9000),
                                           ("1h0m30s", 3630)])
def test_duration_accepts_hours_minutes_seconds(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["10", "", "m", "0m", "30m2h", "ten minutes", "-5m"])
def test_duration_refuses_what_is_not_one(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="a duration such as 90s, 10m"):
        duration(text)


def test_time_limit_is_refused_with_timeout_kerastuner_or_no_budget(capsys) -> None:
    base = ["run", "--dataset", "pneumonia-demo", "--folds", "2"]
    assert main([*base, "--time-limit", "10m", "--timeout", "60"]) == 2
    assert "use --time-limit" in capsys.readouterr().err
    assert main([*base, "--time-limit", "10m", "--engine", "kerastuner"]) == 2
    assert "--engine kerastuner has none" in capsys.readouterr().err
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "--trials N" in err and "--time-limit DURATION" in err
    with pytest.raises(SystemExit) as exit_:
        main([*base, "--time-limit", "10"])
    assert exit_.value.code == 2
    assert "must be a duration such as 90s, 10m, 1.5h or 2h30m, got '10'" in capsys.readouterr().err


# ---- the plan, on a fake clock -----------------------------------------------------------------------


def test_stages_run_in_order_and_end_at_their_share_of_the_time_after_the_reserve() -> None:
    clock = FakeClock()
    plan = P.Plan(limit=600.0, spent=0.0, started=clock(), clock=clock)
    assert P.STAGE_NAMES == ("probe", "heads", "finetune")
    reserve = 100.0
    ends = [plan.stage_end(name, reserve) for name in P.STAGE_NAMES]
    assert ends == sorted(ends) and ends[-1] == pytest.approx(500.0)  # the last ends where the reserve begins
    assert plan.current([], reserve) == "probe"
    assert plan.current(["probe"], reserve) == "heads"
    clock.now += ends[1]  # the heads' share is spent: fine-tuning, even if heads never said it was done
    assert plan.current(["probe"], reserve) == "finetune"
    clock.now += 500.0 - ends[1]
    assert plan.current(["probe"], reserve) is None  # only the final's reserve is left
    assert plan.left() == pytest.approx(100.0)


def test_a_resumed_plan_continues_the_clock() -> None:
    clock = FakeClock(5.0)
    fresh = P.Plan(limit=600.0, spent=0.0, started=clock(), clock=clock)
    resumed = P.Plan(limit=600.0, spent=450.0, started=clock(), clock=clock)
    assert resumed.deadline("finetune", 100.0) == fresh.deadline("finetune", 100.0) - 450.0
    assert resumed.spent_now() == 450.0 and resumed.left() == 150.0
    assert resumed.current([], 100.0) == "finetune"  # the probe's and the heads' shares are long spent
    assert P.Plan(600.0, 590.0, clock(), clock).current([], 100.0) is None


@pytest.mark.parametrize("predicted, ok", [(120.0, True), (120.01, False), (None, True), (0.0, True)])
def test_a_trial_starts_only_if_its_prediction_ends_by_the_deadline(predicted: float | None, ok: bool) -> None:
    started, reason = P.can_start(predicted, deadline=1120.0, now=1000.0, stage_name="finetune")
    assert started is ok
    if not ok:
        assert reason == "not started: predicted 120 s, 120 s left in stage finetune"


def test_no_trial_starts_after_the_deadline_even_unpredicted() -> None:
    assert P.can_start(None, deadline=1000.0, now=1000.0, stage_name="heads") == (
        False, "not started: no time left in stage heads")


def cost(backbone: str, seconds: float, value: float | None, stage: str = "heads", folds_done: int = 2,
         epochs: int = 1, size: int = 32) -> P.TrialCost:
    return P.TrialCost(backbone, stage, seconds, epochs * folds_done, size, value, folds_done)


def test_the_final_reserve_is_each_backbones_best_refit_plus_its_fixed_cost() -> None:
    assert P.final_reserve([], folds=3, limit=600.0) == pytest.approx(P.DEFAULT_RESERVE_SHARE * 600.0)
    trials = [cost("a", 30.0, 0.7, folds_done=3), cost("a", 90.0, 0.9, folds_done=3), cost("b", 12.0, 0.6, folds_done=3),
              cost("b", 99.0, None, folds_done=3)]  # pruned: no value, not a best
    # a: 90 s / 3 folds x 3/2 = 45 s; b: 12 / 3 x 3/2 = 6 s
    assert P.final_reserve(trials, folds=3, limit=600.0) == pytest.approx(
        P.FINAL_FIXED_SECONDS + 2 * P.FINAL_PER_MODEL_SECONDS + 45.0 + 6.0)


def test_the_final_reserve_is_kept_out_of_every_stage() -> None:
    """Whatever the stages do, the last deadline leaves the final its reserve, and no trial predicted to
    cross into it starts."""
    clock = FakeClock()
    plan = P.Plan(limit=600.0, spent=0.0, started=clock(), clock=clock)
    reserve = P.final_reserve([cost("a", 60.0, 0.8)], folds=2, limit=600.0)
    last = plan.deadline("finetune", reserve)
    assert last == pytest.approx(clock() + 600.0 - reserve)
    clock.now = last - 10.0
    assert P.can_start(10.0, last, clock(), "finetune")[0]
    assert not P.can_start(10.5, last, clock(), "finetune")[0]


def test_promotion_takes_the_top_half_by_the_best_of_probe_and_heads_scores() -> None:
    probes = {"a": 0.80, "b": 0.60, "c": 0.70}
    heads = [cost("b", 5, 0.90), cost("c", 5, 0.65), cost("d", 5, 0.75), cost("a", 5, 0.99, stage="finetune")]
    scores = P.best_scores(probes, heads)
    assert scores == {"a": 0.80, "b": 0.90, "c": 0.70, "d": 0.75}  # a fine-tuning score is not a cheap one
    assert P.promote(scores) == ["b", "a"]  # ceil(4/2)
    assert P.promote({"a": 0.5, "b": 0.6, "c": 0.4}) == ["b", "a"]  # ceil(3/2)
    assert P.promote({"a": 0.5}) == ["a"]
    assert P.promote({"a": 0.2, "b": 0.1}, maximize=False) == ["b"]


def test_promotion_always_fine_tunes_the_better_half_of_the_pretrained_backbones() -> None:
    """A frozen backbone's cheap score is a lower bound of its fine-tuned one; a scratch network's
    is not: ranked with the scratch ones alone, no pretrained backbone would be fine-tuned."""
    scores = {"scratch": 0.944, "lite0": 0.920}
    assert P.promote(scores) == ["scratch"]  # without knowing which are pretrained
    assert P.promote(scores, pretrained={"lite0"}) == ["scratch", "lite0"]
    five = {"cnn": 0.95, "mnv2_scratch": 0.94, "lite0": 0.90, "resnet": 0.85, "vgg": 0.80, "dense": 0.70}
    pretrained = {"lite0", "resnet", "vgg", "dense"}
    assert P.promote(five, pretrained) == ["cnn", "mnv2_scratch", "lite0", "resnet"]  # top 3 of 6, top 2 of 4
    assert P.promote({"lite0": 0.9, "resnet": 0.8}, {"lite0", "resnet"}) == ["lite0"]


def test_heads_pin_frozen_unaugmented_trials_only_on_pretrained_backbones() -> None:
    assert P.heads_fixed({}, pretrained=True) == {"unfrozen": 0, "augment": "none", "head_epochs": 0}
    assert P.heads_fixed({}, pretrained=False) == {"augment": "none"}  # a random network trains whole
    assert P.heads_fixed({"augment": "light"}, pretrained=True)["augment"] == "light"  # the user's pin wins


# ---- the cost model ----------------------------------------------------------------------------------


def test_prediction_scales_the_nearest_recorded_trials_by_epochs_folds_and_pixels() -> None:
    costs = [cost("a", 40.0, 0.8, stage="heads"), cost("a", 100.0, 0.8, stage="finetune", epochs=2),
             cost("b", 7.0, 0.7, stage="heads")]
    # Same backbone and stage: 100 s for 2 epochs x 2 folds -> 25 s a unit; 3 epochs x 2 folds, twice the side.
    assert predict(costs, {"backbone": "a", "epochs": 3, "size": 64}, 2, "finetune") == pytest.approx(25 * 6 * 4)
    # No trial of a in that stage: its heads trials stand in, never below the cheapest whole trial.
    assert predict(costs, {"backbone": "a", "epochs": 1, "size": 32}, 1, "other") == pytest.approx(40.0)
    # A head phase counts as epochs.
    assert predict(costs, {"backbone": "b", "epochs": 1, "head_epochs": 1, "size": 32}, 2, "heads") == pytest.approx(14)
    assert predict(costs, {"backbone": "c", "epochs": 1, "size": 32}, 2, "heads") is None  # nothing to go on


def test_prediction_before_any_trial_comes_from_the_probes_forward_pass() -> None:
    probe = {"seconds_features": 20.0, "images": 400, "size": 32}  # 0.05 s an image forward
    got = predict([], {"backbone": "a", "epochs": 2, "size": 32}, 2, "finetune", probe, cv_images=300)
    # build + forward once, then 2 epochs x 2 folds x 150 training images x 0.05 s x the backward factor
    from bench.search.cost import BACKWARD_FACTOR

    assert got == pytest.approx(20.0 + 0.05 * BACKWARD_FACTOR * 600)


def _study_with(seconds: list[float], stage: str = "heads", backbone: str = "a") -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for s in seconds:
        trial = optuna.trial.create_trial(
            params={}, distributions={}, value=0.8, state=TrialState.COMPLETE,
            user_attrs={"config": {"backbone": backbone, "epochs": 1, "size": 32}, "seconds": s, "folds_done": 2,
                        "stage": stage})
        study.add_trial(trial)
    return study


def test_the_cost_model_reads_a_studys_recorded_trials() -> None:
    study = _study_with([30.0, 8.0, 9.0, 10.0])
    costs = trial_costs(study.get_trials())
    assert [c.seconds for c in costs] == [30.0, 8.0, 9.0, 10.0]
    # The first trial paid the tracing; the last three say what the next one costs.
    assert predict(costs, {"backbone": "a", "epochs": 1, "size": 32}, 2, "heads") == pytest.approx(10.0)


def test_the_gate_refuses_exactly_the_trial_that_cannot_finish() -> None:
    study = _study_with([10.0])
    clock = FakeClock(500.0)
    config = {"backbone": "a", "epochs": 1, "size": 32}
    for left, refused in ((10.0, None), (9.9, "not started: predicted 10 s, 10 s left in stage heads")):
        gate = StageGate("heads", deadline=clock() + left, folds=2, clock=clock)
        trial = study.ask()
        assert gate.refuse(trial, config) == refused
        assert study.trials[trial.number].user_attrs["predicted_seconds"] == 10.0
        study.tell(trial, state=TrialState.FAIL)


# ---- a real search -----------------------------------------------------------------------------------

SPACE = """
name = "timed"
[objective]
metric = "balanced_accuracy"
[params.backbone]
type = "categorical"
choices = ["simple_cnn", "efficientnet_lite0"]
[params.weights]
type = "fixed"
value = "imagenet"
when = { backbone = "efficientnet_lite0" }
[params.size]
type = "fixed"
value = 32
[params.unfrozen]
type = "blocks"
low = 0
high = 1
when = { backbone = "efficientnet_lite0" }
[params.epochs]
type = "fixed"
value = 1
[params.augment]
type = "categorical"
choices = ["none", "light"]
[params.lr]
type = "float"
low = 1e-3
high = 1e-2
log = true
"""
LIMIT = "100s"


def _study(out: Path) -> optuna.Study:
    url = f"sqlite:///{out / 'study.db'}"
    return optuna.load_study(study_name=optuna.get_all_study_names(url)[0], storage=url)


@pytest.fixture(scope="module")
def timed(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One real `bench run --time-limit` on pneumonia-demo with an ImageNet backbone (its probe) and a
    random-init one (no probe, heads and fine-tuning all the same)."""
    from bench.models import get_backbone, imagenet_path

    root = tmp_path_factory.mktemp("timed")
    with pytest.MonkeyPatch.context() as mp:
        if imagenet_path(get_backbone("efficientnet_lite0")) is None:
            from bench.models import convert_lite0

            mp.setenv("BENCH_WEIGHTS", str(convert_lite0.convert(root / "weights").path.parent))
        # The probe stage's 10% of this tiny budget is 8 s: Lite0's probe takes longer on a loaded
        # machine (the slow suite's other worker), and a cut-off probe stage writes no probes.csv.
        # The stage's logic is what is under test, not its share: give it room.
        from dataclasses import replace as _replace

        from bench.search import plan as P

        mp.setattr(P, "STAGES", (_replace(P.STAGES[0], end=0.35), *P.STAGES[1:]))
        space = root / "timed.toml"
        space.write_text(SPACE)
        out = root / "run"
        args = ["run", "--dataset", "pneumonia-demo", "--space", str(space), "--folds", "2", "--pruner", "none",
                "--time-limit", LIMIT, "--out", str(out)]
        import contextlib
        import io

        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            code = main(args)
        yield SimpleNamespace(out=out, args=args, code=code, text=text.getvalue(), mp=mp)


@pytest.mark.slow  # about 2 minutes: the time limit, then the held-out evaluation
def test_a_time_limited_search_goes_through_every_stage_then_the_final(timed) -> None:
    assert timed.code == 0, timed.text
    text = timed.text
    assert "probe stage: simple_cnn has no ImageNet weights in this space: no probe" in text
    for name in ("probe", "heads", "finetune"):
        assert f"stage {name} ended" in text
    probes = pd.read_csv(timed.out / "probes.csv")
    assert set(probes.backbone) == {"efficientnet_lite0"} and set(probes.probe) == {"linear", "knn"}
    study = _study(timed.out)
    attrs = study.user_attrs
    assert attrs["stages_done"] == ["probe", "heads", "finetune"] and attrs["stage"] == "final"
    assert set(attrs["probe_scores"]) == {"efficientnet_lite0"}
    ran = [t for t in study.trials if t.state == TrialState.COMPLETE]
    by_stage: dict[str, set[str]] = {}
    for t in ran:
        by_stage.setdefault(t.user_attrs["stage"], set()).add(t.user_attrs["config"]["backbone"])
        if t.user_attrs["stage"] == "heads" and t.user_attrs["config"]["backbone"] == "efficientnet_lite0":
            config = t.user_attrs["config"]
            assert (config["unfrozen"], config["augment"], config["head_epochs"]) == (0, "none", 0)
    assert by_stage["heads"] == {"simple_cnn", "efficientnet_lite0"}  # every backbone competes
    # ceil(2/2) of all, and the one pretrained backbone (a frozen score is a lower bound): both go on.
    assert by_stage["finetune"] <= set(attrs["promoted"]) and "efficientnet_lite0" in attrs["promoted"]
    # A trial kept from starting trained nothing: no fold of it was written.
    refused = [t.number for t in study.trials if t.user_attrs.get("over_budget")]
    folds = pd.read_csv(timed.out / "folds.csv")
    assert not set(refused) & set(folds.trial)
    for number in refused:
        assert study.trials[number].user_attrs["fail_reason"].startswith("not started: ")
    assert (timed.out / "final.json").exists()
    manifest = json.loads((timed.out / "manifest.json").read_text())
    plan = manifest["time_limit"]
    assert [s["stage"] for s in plan["stages"]] == ["probe", "heads", "finetune"]
    assert all(s["done"] for s in plan["stages"]) and plan["limit_seconds"] == 100.0
    assert attrs["time_spent"] == plan["spent_seconds"] > 0


@pytest.mark.slow
def test_a_resumed_search_keeps_its_clock_and_goes_straight_to_the_final(timed, capsys) -> None:
    assert timed.code == 0, timed.text
    study = _study(timed.out)
    before = len(study.trials)
    # As if the first session had been killed in the heads stage with 95 of its 100 s spent.
    study.set_user_attr("stages_done", ["probe"])
    study.set_user_attr("time_spent", 95.0)
    args = [*timed.args[:-4], "--time-limit", "110s", "--out", str(timed.out)]  # a new limit applies, said once
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.count("This study was started with --time-limit 100 s; this session uses 110 s") == 1
    assert "95 s spent before this session" in text
    assert "stage heads: skipped, its share of --time-limit is spent" in text
    assert "stage finetune: skipped" in text
    study = _study(timed.out)
    assert len(study.trials) == before  # nothing started
    assert study.user_attrs["time_spent"] >= 95.0  # the clock went on from where it was
    assert "Held-out evaluation is up to date" in text  # the final still comes, and has nothing to redo


@pytest.mark.slow
def test_status_and_report_show_the_stages(timed, tmp_path: Path, capsys) -> None:
    assert timed.code == 0, timed.text
    assert main(["status", "--storage", str(timed.out / "study.db")]) == 0
    text = capsys.readouterr().out
    limit = _study(timed.out).user_attrs["time_limit"]  # 110 s once the resume test has run
    assert f"--time-limit {limit:.0f} s, stage final (done: probe, heads, finetune)" in text and "left" in text
    assert main(["report", "--run", str(timed.out), "--out", str(tmp_path / "report"), "--quiet"]) == 0
    markdown = (tmp_path / "report" / "index.md").read_text()
    assert "stages of the time-limited search" in markdown and "probes on frozen features" in markdown
    stages = pd.read_csv(tmp_path / "report" / "tables" / "stages_pneumonia-demo.csv")
    assert list(stages.stage) == ["probe", "heads", "finetune"]
    assert "Allocation of trials to entries: staged (--time-limit" in markdown


def test_a_trial_predicted_not_to_finish_never_trains_and_no_count_sees_it(tmp_path: Path) -> None:
    """The objective asks the gate after choosing the parameters and before touching any data."""
    from bench.results import RunDir
    from bench.search.allocation import entry_counts
    from bench.search.objective import make_objective
    from bench.search.space import load_space

    path = tmp_path / "one.toml"
    path.write_text('name = "one"\n[objective]\nmetric = "balanced_accuracy"\n[params]\nbackbone = "simple_cnn"\n'
                    'weights = "none"\nsize = 32\nepochs = 2\n[params.lr]\ntype = "float"\nlow = 1e-3\nhigh = 1e-2\n')
    study = _study_with([10.0], backbone="simple_cnn")  # 1 epoch x 2 folds in 10 s: 2 epochs predict 20 s
    clock = FakeClock()

    def no_training(size: int | None) -> None:
        raise AssertionError("the refused trial reached the data")

    gate = StageGate("heads", deadline=clock() + 19.0, folds=2, clock=clock)
    objective = make_objective(no_training, load_space(path), RunDir.create(tmp_path, "x", out=tmp_path / "run"),
                               study_seed=0, gate=gate)
    study.optimize(objective, n_trials=1, catch=(Exception,))
    refused = study.trials[-1]
    assert refused.state == TrialState.FAIL
    assert refused.user_attrs["fail_reason"] == "not started: predicted 20 s, 19 s left in stage heads"
    assert refused.user_attrs["over_budget"] and refused.user_attrs["surplus"]
    assert refused.user_attrs["stage"] == "heads"
    assert sum(c.failed for c in entry_counts(study.get_trials()).values()) == 0  # surplus: no count sees it


def test_the_live_panel_shows_the_stage_and_counts_no_refused_trial_as_failed() -> None:
    from rich.console import Console

    from bench.search.progress import Progress

    study = _study_with([10.0])
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, user_attrs={"surplus": True, "over_budget": True, "stage": "heads"}))
    progress = Progress(Console(file=None, force_terminal=False), total=100_000, folds=2,
                        metric="balanced_accuracy", direction="maximize")
    progress.set_counts(study)
    assert progress.counts == {"COMPLETE": 1, "PRUNED": 0, "FAIL": 0}
    progress.stage, progress.deadline = "heads", 1e12
    assert progress.headline().startswith("stage heads, ") and "100000" not in progress.headline()


def test_the_probe_stage_skips_weights_not_on_this_machine_and_says_how_to_get_them(weights_dir, tmp_path,
                                                                                    capsys) -> None:
    from bench.results import RunDir
    from bench.search.probe_stage import _probe_main, probe_records

    run = RunDir.create(tmp_path, "x", out=tmp_path / "run")
    _probe_main({"dataset": "pneumonia-demo"}, 32, ["efficientnet_lite0"], str(run.path), 0)
    assert "skipped efficientnet_lite0: its ImageNet weights are not on this machine; get them with `bench " \
           "weights convert efficientnet_lite0`" in capsys.readouterr().out
    assert not run.file("probes").exists()
    assert probe_records(run, "balanced_accuracy", True, 32) == ({}, {})


def test_no_time_is_reserved_for_a_final_this_command_does_not_run() -> None:
    from rich.console import Console

    from bench.search.runner import SearchOptions
    from bench.search.staged import StagedSupervisor

    for options in (SearchOptions(dataset="x", trials=10, final=False),
                    SearchOptions(dataset="x", trials=10, storage="journal:/tmp/shared.log")):
        assert StagedSupervisor(options, Console(), 600.0).reserve() == 0.0


def test_the_probe_stage_is_cut_at_its_deadline(tmp_path: Path) -> None:
    import multiprocessing as mp

    from bench.results import RunDir
    from bench.search.probe_stage import PROBE_CUT, run_probe_stage

    run = RunDir.create(tmp_path, "x", out=tmp_path / "run")
    code = run_probe_stage(mp.get_context("spawn"), {"dataset": "pneumonia-demo"}, 32, ["efficientnet_lite0"], run,
                           0, timeout=0.05)  # the child has not even imported the framework by then
    assert code == PROBE_CUT
