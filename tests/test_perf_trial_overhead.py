"""bench perf's search rows: the naive side of smoke_search runs bench's own recipe (same inner
split, callbacks and epochs; only the costs differ), and trial_overhead runs end to end."""

from __future__ import annotations

import pandas as pd
import pytest

from bench.cli import main
from bench.results import RunDir
from bench.training.train import FoldTrainer


def test_the_naive_side_trains_the_search_recipe_on_the_same_images(tmp_path, monkeypatch, capsys):
    from bench.perf.search import naive_replay

    out = tmp_path / "cv"
    assert main(["cv", "--dataset", "pneumonia-demo", "--backbone", "simple_cnn", "--weights", "none", "--size",
                 "32", "--folds", "2", "--epochs", "3", "--patience", "1", "--out", str(out)]) == 0
    folds = RunDir.open(out).table("folds")
    history = RunDir.open(out).table("history")
    seen = []
    real = FoldTrainer.fit_fold

    def spy(self, fold, *args, **kwargs):
        result = real(self, fold, *args, **kwargs)
        seen.append(result)
        return result

    monkeypatch.setattr(FoldTrainer, "fit_fold", spy)
    seconds, n_folds, n_epochs = naive_replay(out)
    assert seconds > 0 and n_folds == 2 and n_epochs == int(folds.epochs_run.sum())
    for result, row in zip(seen, folds.itertuples(), strict=True):
        # The same inner split, early stopping (same epochs) and scores, epoch by epoch.
        assert (result.n_train, result.n_stop, result.n_val) == (row.n_train, row.n_inner_val, row.n_val)
        assert result.epochs_run == row.epochs_run and result.ok
        recorded = history[history.fold == row.fold]
        for metric in ("loss", "val_loss", "val_balanced_accuracy"):
            values = recorded[recorded.metric == metric].sort_values("epoch").value.to_numpy()
            assert list(values) == result.history[metric], metric


@pytest.mark.slow
def test_quick_trial_overhead_runs_the_search_with_and_without_the_pool(tmp_path):
    out = tmp_path / "perf.csv"
    assert main(["perf", "--quick", "--only", "trial_overhead", "--out", str(out)]) == 0
    row = pd.read_csv(out).iloc[0]
    assert row.measurement == "trial_overhead" and row.baseline_value > 0 and row.bench_value > 0
    # Three trials of one architecture in one worker: the second and third restore the first's trainer.
    assert "(2 trial(s) restored a trainer, 1 built one" in row.note and "without the pool" in row.note
