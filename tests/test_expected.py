"""Expected best at equal budget (Dodge et al. 2019): the order-statistics formula against brute force,
its bootstrap band, and the leaderboard column and figure on hand-made run directories."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.cli import main
from bench.report import expected as E
from bench.report import tables as T
from bench.report.collect import collect, find_run_dirs
from bench.report.render import write_report
from bench.results import RunDir
from tests.test_report import copy_run, make_synthetic_run


@pytest.fixture(autouse=True)
def strict_report(monkeypatch):
    monkeypatch.setenv("BENCH_REPORT_STRICT", "1")


def brute_force(values: list[float], k: int, best=max) -> float:
    """The mean of the best of every one of the n^k equally likely ordered draws."""
    draws = list(itertools.product(values, repeat=k))
    return sum(best(d) for d in draws) / len(draws)


@pytest.mark.parametrize("values", [[0.7], [0.2, 0.9], [0.5, 0.5, 0.1], [0.3, 0.8, 0.8, 0.6, 0.1],
                                    [0.91, 0.42, 0.66, 0.42, 0.87, 0.13]])
def test_expected_best_equals_brute_force_enumeration(values):
    n = len(values)
    ks = list(range(1, n + 2))  # one past n: draws are with replacement
    got_max = E.expected_best(values, ks)
    got_min = E.expected_best(values, ks, maximize=False)
    for i, k in enumerate(ks):
        assert got_max[i] == pytest.approx(brute_force(values, k), abs=1e-10), k
        assert got_min[i] == pytest.approx(brute_force(values, k, min), abs=1e-10), k
    assert list(E.expected_best(values)) == pytest.approx(got_max[:n])  # default k = 1..n
    assert got_max[0] == pytest.approx(np.mean(values)) and got_min[0] == pytest.approx(np.mean(values))
    assert np.all(np.diff(got_max) >= -1e-12) and np.all(np.diff(got_min) <= 1e-12)


def test_expected_best_by_hand_and_bad_input():
    # [0.1, 0.5, 0.9], k = 2: P(max = 0.1) = 1/9, 0.5: 3/9, 0.9: 5/9.
    assert E.expected_best([0.9, 0.1, 0.5], [2])[0] == pytest.approx((0.1 + 3 * 0.5 + 5 * 0.9) / 9)
    assert E.expected_best([0.9, 0.1, 0.5], [2], maximize=False)[0] == pytest.approx((5 * 0.1 + 3 * 0.5 + 0.9) / 9)
    for bad in ([], [0.5, float("nan")]):
        with pytest.raises(ValueError, match="no NaN"):
            E.expected_best(bad)
    with pytest.raises(ValueError, match="k must be 1 or more"):
        E.expected_best([0.5], [0])


def test_bootstrap_band_resamples_the_trials_reproducibly():
    values = np.array([0.62, 0.71, 0.55, 0.80, 0.77, 0.69, 0.58, 0.74])
    c = E.curve(values, boots=400, seed=3)
    assert list(c.k) == list(range(1, 9))
    assert np.allclose(c.expected, E.expected_best(values))
    assert (c.low <= c.high).all() and (c.high - c.low > 0.01).all()  # the trials vary: so does the curve
    assert (c.low <= c.expected + 1e-12).all() and (c.expected <= c.high + 1e-12).all()
    assert c.high.max() <= values.max() and c.low.min() >= values.min()  # a resample holds observed scores only
    again = E.curve(values, boots=400, seed=3)
    assert np.array_equal(c.low, again.low) and np.array_equal(c.high, again.high)
    lower = E.curve(values, maximize=False, boots=400, seed=3)  # a loss: the expected minimum falls with k
    assert np.all(np.diff(lower.expected) <= 0) and (lower.low <= lower.high).all()
    same = E.curve([0.5] * 4)  # identical trials: no spread at all
    assert np.allclose(same.low, 0.5) and np.allclose(same.high, 0.5)


# ---- the report -------------------------------------------------------------------------------------------------


def budget_run(out: Path, entries: dict[str, list[float]], pruned: dict[str, int]) -> Path:
    """A search run directory, written through RunDir: each entry (backbone) with its complete trials'
    CV values (two folds each, mean = the value) and pruned trials whose one partial fold scored 0.99,
    better than any complete trial, so counting them would show."""
    run = RunDir.create(out.parent, "budget-set", out=out)
    run.write_manifest({
        "kind": "search", "engine": "optuna", "study": "budget", "status": "complete",
        "objective": {"metric": "balanced_accuracy", "direction": "maximize"},
        "dataset": {"name": "budget-set", "classes": ["a", "b"], "images": 100},
        "split": {"folds": 2, "cv_images": 80, "test_images": 20, "fold_sizes": [40, 40]},
    })
    plan = [(b, "COMPLETE", v) for b, vs in entries.items() for v in vs]
    plan += [(b, "PRUNED", 0.99) for b, p in pruned.items() for _ in range(p)]
    for number, (backbone, state, value) in enumerate(plan):
        config = {"backbone": backbone, "lr": 1e-3 * (1 + number), "seed": number}
        run.write_config(number, config)
        folds = [value - 0.01, value + 0.01] if state == "COMPLETE" else [value]
        for f, v in enumerate(folds):
            run.append_fold(trial=number, fold=f, backbone=backbone, status="ok", info={"n_val": 40},
                            metrics={"balanced_accuracy": v}, predictions=None, history={})
        run.append_trial({"number": number, "state": state, "value": value, "backbone": backbone, "params": config,
                          "seconds": 1.0, "pruned_at_fold": 0 if state == "PRUNED" else None, "engine": "optuna"})
    return out


def test_two_trials_and_twenty_compared_at_k_2_pruned_left_out(tmp_path):
    rng = np.random.default_rng(0)
    few = [0.70, 0.80]
    many = list(np.round(rng.uniform(0.60, 0.85, 20), 4))
    runs = tmp_path / "runs"
    budget_run(runs / "budget-set" / "s", {"few_net": few, "many_net": many}, {"many_net": 3, "few_net": 1})
    coll = collect(find_run_dirs(runs), runs)
    board = T.leaderboard(coll, "budget-set").set_index("key")
    assert board.trials_complete.to_dict() == {"few_net": 2, "many_net": 20}
    assert board.trials_pruned.to_dict() == {"few_net": 1, "many_net": 3}
    assert set(board.expected_k) == {2}  # the fewest completed trials of any entry
    assert board.expected_best["few_net"] == pytest.approx((0.70 + 3 * 0.80) / 4)
    assert board.expected_best["many_net"] == pytest.approx(brute_force(many, 2), abs=1e-12)
    # The pruned trials' 0.99 is in neither: counted, it would lift both entries' numbers.
    assert board.expected_best["many_net"] < max(many) < 0.99 and board.objective_value.max() < 0.99
    table = T.leaderboard_table(coll, "budget-set", board.reset_index())
    column = table.display["expected best at k = 2"]
    assert list(column) == [f"{board.expected_best[k]:.3f}" for k in table.display.backbone]
    assert [s.split(" / ")[0] for s in table.display["trials (complete / pruned / failed)"]] == \
        [str(board.trials_complete[k]) for k in table.display.backbone]
    assert "m = 2 is the fewest completed trials of any entry shown" in table.caption
    assert "n counts completed trials; pruned trials (4 of them) are left out: their last value is a partial fold." \
        in table.caption
    best = board.expected_best.idxmax()
    assert table.bold["expected best at k = 2"].tolist() == [k == best for k in table.display.backbone]


def test_expected_best_figure_in_markdown_html_and_csv(tmp_path):
    runs = tmp_path / "runs"
    few, many = [0.70, 0.80], [0.60 + 0.01 * i for i in range(20)]
    budget_run(runs / "budget-set" / "s", {"few_net": few, "many_net": many}, {"many_net": 2})
    report = write_report(runs_dir=runs, out=tmp_path / "out")
    names = [f.name for f in report.figures]
    assert "expected_budget-set" in names
    md, page = report.markdown.read_text(), report.html.read_text()
    assert "![budget-set: expected best at equal budget](figures/expected_budget-set.png)" in md
    assert 'id="figure-expected_budget-set"' in page and "The dotted line marks k = 2" in page
    assert "expected best at k = 2" in md and "pruned trials (2 of them) are left out" in md
    curves = pd.read_csv(tmp_path / "out" / "tables" / "expected_budget-set.csv")
    assert curves.groupby("key").k.max().to_dict() == {"few_net": 2, "many_net": 20}
    many_curve = curves[curves.key == "many_net"].sort_values("k")
    assert np.allclose(many_curve.expected, E.expected_best(many))
    assert (many_curve.low <= many_curve.high).all()
    board = pd.read_csv(tmp_path / "out" / "tables" / "leaderboard_budget-set.csv").set_index("key")
    assert board.expected_best["many_net"] == pytest.approx(many_curve.expected.iloc[1])


def test_strict_report_expects_the_figure_where_an_entry_has_a_completed_trial(tmp_path, capsys, monkeypatch):
    run = make_synthetic_run(tmp_path / "runs" / "synthetic-xray" / "tpe")
    for backbone in json.loads((run / "final.json").read_text())["backbones"]:  # as in test_report's strict test
        (run / "figures").mkdir(exist_ok=True)
        Image.new("RGB", (64, 48), (200, 40, 40)).save(run / "figures" / f"gradcam_{backbone}.png")
    assert main(["report", "--run", str(run), "--out", str(tmp_path / "clean"), "--quiet", "--strict"]) == 0
    assert (tmp_path / "clean" / "figures" / "expected_synthetic-xray.png").is_file()

    # A figure that cannot be drawn is a problem --strict names, not a silent gap.
    from bench.report import figures

    def broken(*args, **kwargs):
        raise RuntimeError("no canvas")

    with monkeypatch.context() as mp:
        mp.delenv("BENCH_REPORT_STRICT")
        mp.setattr(figures, "expected_best_figure", broken)
        capsys.readouterr()
        assert main(["report", "--run", str(run), "--out", str(tmp_path / "broken"), "--quiet", "--strict"]) == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "synthetic-xray: the expected best at equal budget could not be produced: RuntimeError: no canvas" in err

    # No completed trial: no leaderboard entry, so no figure is expected (the missing leaderboard is the problem).
    failed = copy_run(run, tmp_path / "runs2" / "failed")
    trials = pd.read_csv(failed / "trials.csv", dtype=str, keep_default_na=False)
    trials.assign(state="FAIL").to_csv(failed / "trials.csv", index=False)
    report = write_report([failed], tmp_path / "none")
    assert not (tmp_path / "none" / "figures" / "expected_synthetic-xray.png").exists()
    assert not any("expected best" in p for p in report.problems) and any("no leaderboard" in p for p in report.problems)
