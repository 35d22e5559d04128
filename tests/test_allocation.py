"""Equal budgets per leaderboard entry (``bench run --allocation balanced``, the default).

The rule is checked on real Optuna storage without training (races between workers and machines,
failures, re-queued trials), then end to end with real searches on tiny configurations.
"""

from __future__ import annotations

import collections
import json
import re
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from bench.cli import main
from bench.results import RunDir
from bench.search.allocation import BalancedSampler, balance_factors, entry_counts, next_entry, wrap_sampler
from bench.search.space import parse_space
from tests.postgres import postgres_url  # noqa: F401 (the fixture)
from tests.test_search import REPO, load, run_args

ENTRIES = [("a",), ("b",), ("c",)]


def _study(sampler: optuna.samplers.BaseSampler, storage: str | None = None, name: str = "s") -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, load_if_exists=True,
                               direction="maximize")


def _balanced(seed: int = 0) -> BalancedSampler:
    return BalancedSampler(optuna.samplers.TPESampler(seed=seed, n_startup_trials=2, constant_liar=True),
                           ("backbone",), ENTRIES)


def _suggest(trial: optuna.Trial) -> str:
    trial.suggest_float("lr", 1e-4, 1e-1, log=True)
    return trial.suggest_categorical("backbone", ["a", "b", "c"])


def _objective(trial: optuna.Trial) -> float:
    # "a" looks best from the start: a sampler left alone spends its trials there.
    return {"a": 1.0, "b": 0.2, "c": 0.1}[_suggest(trial)] + trial.params["lr"]


def _counts(study: optuna.Study) -> collections.Counter:
    return collections.Counter(t.params["backbone"] for t in study.get_trials(states=(TrialState.COMPLETE,)))


def test_balanced_gives_each_entry_its_share_where_the_sampler_concentrates():
    balanced = _study(_balanced())
    balanced.optimize(_objective, n_trials=13)
    assert [t.params["backbone"] for t in balanced.trials[:6]] == ["a", "b", "c", "a", "b", "c"]
    assert sorted(_counts(balanced).values()) == [4, 4, 5]
    # --allocation sampler: the sampler untouched, and TPE piles onto the early leader.
    plain = optuna.samplers.TPESampler(seed=0, n_startup_trials=2, constant_liar=True)
    assert wrap_sampler(plain, "sampler", ("backbone",), ENTRIES) is plain
    old = _study(plain)
    old.optimize(_objective, n_trials=13)
    counts = _counts(old)
    assert max(counts.values()) - min(counts.get(b, 0) for b in "abc") > 1, counts


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_workers_asking_at_once_on_two_machines_stay_balanced(kind, tmp_path, request):
    """Two 'machines' (two study objects, one SQLite or PostgreSQL storage) ask for trials before
    either has chosen its backbone: each trial still gets its own place, none is taken twice."""
    if kind == "sqlite":
        url, name = f"sqlite:///{tmp_path / 'shared.db'}", "s"
    else:  # a real PostgreSQL server (tests/postgres.py), a study of this test's own
        url, name = request.getfixturevalue("postgres_url"), f"balanced-{tmp_path.name}"
    machines = [_study(_balanced(seed), url, name) for seed in (1, 2)]
    for _ in range(3):
        asked = [m.ask() for m in machines for _ in range(2)]  # four trials in flight, no parameters yet
        for trial in reversed(asked):  # the last-numbered chooses first
            _suggest(trial)
            trial.study.tell(trial, 0.5)
    counts = _counts(machines[0])
    assert sum(counts.values()) == 12 and set(counts.values()) == {4}, counts
    by_number = [t.params["backbone"] for t in machines[0].get_trials()]
    for n in range(1, 13):  # every prefix in trial-number order: equal within one
        prefix = collections.Counter(by_number[:n])
        assert max(prefix.values()) - min(prefix.get(b, 0) for b in "abc") <= 1, by_number


def test_a_failed_trial_gives_its_place_to_its_retry_and_surplus_counts_nothing(tmp_path):
    study = _study(_balanced(), f"sqlite:///{tmp_path / 's.db'}")
    first, surplus = study.ask(), study.ask()
    assert (_suggest(first), _suggest(surplus)) == ("a", "b")
    surplus.set_user_attr("surplus", True)  # the budget was taken elsewhere: this trial never trains
    study.tell(surplus, state=TrialState.FAIL)
    study.tell(first, state=TrialState.FAIL)  # worker died: the supervisor re-queues the same parameters
    study.enqueue_trial(first.params, user_attrs={"retry_of": first.number})
    chosen = []
    for _ in range(3):
        trial = study.ask()
        chosen.append(_suggest(trial))
        study.tell(trial, 0.5)
    assert chosen == ["a", "b", "c"]  # the retry (a), then b: the surplus trial did not use b's place
    trials = study.get_trials()
    assert next_entry(trials, len(trials), ("backbone",), ENTRIES) == ("a",)  # ties go by entry order
    counts = entry_counts(trials)
    assert (counts["a"].complete, counts["a"].failed, counts["b"].complete, counts["b"].failed) == (1, 1, 1, 0)


def test_the_smoke_space_gives_each_backbone_a_third_of_twelve_trials():
    """`bench run --space smoke --trials 12`: the backbones as the worker sees them (those whose
    weights this machine has), the real space's suggestions (blocks, conditions), TPE; no training."""
    from bench.search.samplers import make_sampler
    from bench.search.space import load_space, resolve_space

    space = load_space(resolve_space("smoke"))
    factors, entries = balance_factors(space, {}, ("backbone",))
    study = _study(wrap_sampler(make_sampler("tpe", 0, space), "balanced", factors, entries))
    for _ in range(12):
        trial = study.ask()
        values = space.suggest(trial)
        study.tell(trial, 0.9 if values["backbone"] == "simple_cnn" else 0.1)
    counts = collections.Counter(t.params["backbone"] for t in study.trials)
    assert len(counts) == len(entries) >= 2 and set(counts.values()) == {12 // len(entries)}, counts


def test_by_combination_and_what_cannot_be_balanced():
    space = parse_space("""
name = "t"
[params]
size = 32
[params.backbone]
type = "categorical"
choices = ["simple_cnn", "mobilenet_v2"]
[params.pooling]
type = "categorical"
choices = ["avg", "max"]
[params.lr]
type = "float"
low = 1e-3
high = 1e-2
""", "t.toml")
    factors, entries = balance_factors(space, {}, ("backbone", "pooling"))
    assert factors == ("backbone", "pooling") and len(entries) == 4
    assert balance_factors(space, {"backbone": "simple_cnn"}, ("backbone",)) == ((), [])  # pinned: one entry
    from bench.errors import ConfigError

    with pytest.raises(ConfigError, match="lr.*categorical"):
        balance_factors(space, {}, ("backbone", "lr"))


# ---- end to end ---------------------------------------------------------------------------------------

# Two entries that both train in seconds: simple_cnn with average or max pooling, `--by pooling`.
POOLING_SPACE = """
name = "pool"
[objective]
metric = "balanced_accuracy"
[params]
backbone = "simple_cnn"
weights = "none"
size = 32
epochs = 1
augment = "none"
[params.pooling]
type = "categorical"
choices = ["avg", "max"]
[params.lr]
type = "float"
low = 1e-3
high = 1e-2
log = true
"""


@pytest.mark.slow  # two short searches (about a minute on 2 cores)
def test_run_with_two_jobs_then_resume_stays_balanced_and_status_shows_each_entry(tmp_path, capsys):
    space = tmp_path / "pool.toml"
    space.write_text(POOLING_SPACE)
    out = tmp_path / "run"
    assert main(run_args(space, out, 5, "--jobs", "2", "--by", "pooling")) == 0
    printed = capsys.readouterr().out
    study = load(out)
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    counts = collections.Counter(t.params["pooling"] for t in done)
    assert len(done) == 5 and counts == {"avg": 3, "max": 2}, counts  # in order: the first entry gets the +1
    assert study.user_attrs["allocation"] == "balanced" and study.user_attrs["balance_by"] == ["pooling"]
    assert "avg: 3/0/0" in printed and "max: 2/0/0" in printed  # the summary, per entry
    # Resumed to a larger budget (the same command, as after kill -9): still balanced.
    assert main(run_args(space, out, 8, "--by", "pooling")) == 0
    done = [t for t in load(out).get_trials() if t.state == TrialState.COMPLETE]
    assert collections.Counter(t.params["pooling"] for t in done) == {"avg": 4, "max": 4}
    manifest = RunDir.open(out).manifest()
    assert [s["allocation"] for s in manifest["sessions"]] == ["balanced", "balanced"]

    status = subprocess.run([sys.executable, "-m", "bench", "status", "--storage", str(out / "study.db")],
                            capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "COLUMNS": "250",
                                                                 "PATH": "/usr/bin:/bin"})
    assert status.returncode == 0, status.stderr
    text = status.stdout
    seconds = {p: sum(t.user_attrs["seconds"] for t in done if t.params["pooling"] == p) for p in ("avg", "max")}
    assert "balanced" in text and "trials per pooling" in text
    for pooling in ("avg", "max"):  # entry, complete, pruned, failed, running, trial-seconds
        assert re.search(rf"{pooling}\W+4\W+0\W+0\W+0\W+{seconds[pooling]:.0f}\b", text), text


@pytest.mark.slow  # reads the shared two-backbone search
def test_default_search_is_balanced_and_says_so(demo_search):
    out, text = demo_search
    run = RunDir.open(out)
    trials = run.table("trials")
    assert collections.Counter(trials.backbone) == {"simple_cnn": 2, "mobilenet_v2": 1}
    assert run.manifest()["sessions"][0]["allocation"] == "balanced"
    assert "simple_cnn: 2/0/0" in text and "mobilenet_v2: 1/0/0" in text


def test_allocation_sampler_keeps_the_old_start_and_is_recorded(tmp_path, capsys):
    """`--allocation sampler`: a new study still tries each backbone once, then the sampler decides;
    the study and the manifest say which allocation it used. (No training: the supervisor's set-up.)"""
    from rich.console import Console

    from bench.search.runner import SearchOptions, Supervisor
    from tests.conftest import TWO_BACKBONE_SPACE

    space = tmp_path / "two.toml"
    space.write_text(TWO_BACKBONE_SPACE)
    supervisor = Supervisor(SearchOptions(dataset="pneumonia-demo", trials=4, space=str(space), folds=2,
                                          out=tmp_path / "run", allocation="sampler"), Console(file=sys.stdout))
    supervisor.prepare()
    waiting = supervisor.study.get_trials(states=(TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"]["backbone"] for t in waiting] == ["simple_cnn", "mobilenet_v2"]
    assert supervisor.study.user_attrs["allocation"] == "sampler"
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["sessions"][0]["allocation"] == "sampler"
    # Balanced (the default) enqueues nothing: the rule itself tries every backbone first.
    balanced = Supervisor(SearchOptions(dataset="pneumonia-demo", trials=4, space=str(space), folds=2,
                                        out=tmp_path / "run2"), Console(file=sys.stdout))
    balanced.prepare()
    assert not balanced.study.get_trials() and balanced.study.user_attrs["allocation"] == "balanced"


def test_live_panel_counts_each_entrys_trials_and_seconds():
    import io

    from rich.console import Console

    from bench.search.progress import Progress

    console = Console(file=io.StringIO(), width=200)
    progress = Progress(console, total=4, folds=2, metric="auc", direction="maximize")
    for worker, (number, backbone) in enumerate([(0, "simple_cnn"), (1, "mobilenet_v2")]):
        progress.event("trial_start", {"worker": worker, "number": number, "backbone": backbone,
                                       "config": {"backbone": backbone}})
    progress.event("trial_end", {"worker": 0, "number": 0, "state": "COMPLETE", "value": 0.8, "backbone": "simple_cnn",
                                 "entry": "simple_cnn", "seconds": 12.4})
    progress.trial_failed(1, "worker killed by signal 9")  # the supervisor saw its worker die
    progress.event("trial_start", {"worker": 0, "number": 2, "backbone": "simple_cnn", "config": {"backbone": "simple_cnn"}})
    progress.event("trial_end", {"worker": 0, "number": 2, "state": "PRUNED", "value": None, "backbone": "simple_cnn",
                                 "entry": "simple_cnn", "seconds": 5.0})
    line = progress.entry_line()
    assert line.startswith("per backbone (complete/pruned/failed, trial-s): simple_cnn 1/1/0, 17 s | mobilenet_v2 0/0/1")
    console.print(progress.render())
    assert "simple_cnn 1/1/0, 17 s" in console.file.getvalue()  # the live panel's caption


def test_a_by_that_cannot_be_balanced_is_refused_before_any_training(tmp_path, capsys):
    space = tmp_path / "pool.toml"
    space.write_text(POOLING_SPACE)
    assert main(run_args(space, tmp_path / "run", 2, "--by", "pooling,lr")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "--by lr" in err and "categorical" in err and "--allocation sampler" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "study.db").exists()
    with pytest.raises(SystemExit) as exc:  # argparse refuses it, naming the choices
        main(run_args(space, tmp_path / "run", 2, "--allocation", "greedy"))
    assert exc.value.code == 2 and "'balanced', 'sampler'" in capsys.readouterr().err


@pytest.mark.slow  # two `bench run` processes on one journal study (about two minutes on 2 cores)
def test_two_machines_on_one_study_share_the_entries_equally(tmp_path):
    from tests.test_search import _storage_for_optuna, bench_process

    space = tmp_path / "pool.toml"
    space.write_text(POOLING_SPACE)
    storage = f"journal:{tmp_path / 'study.log'}"
    procs = [bench_process(["run", "--dataset", "pneumonia-demo", "--space", str(space), "--trials", "6",
                            "--folds", "2", "--pruner", "none", "--no-final", "--storage", storage, "--study",
                            "shared", "--by", "pooling", "--out", str(tmp_path / f"machine{i}")]) for i in range(2)]
    for p in procs:
        text = p.communicate(timeout=900)[0]
        assert p.returncode == 0, text
    study = optuna.load_study(study_name="shared", storage=_storage_for_optuna(storage))
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert collections.Counter(t.params["pooling"] for t in done) == {"avg": 3, "max": 3}
    assert len({t.user_attrs["worker"]["pid"] for t in done}) == 2  # both machines ran trials


@pytest.mark.slow  # a search stopped by --timeout (about a minute on 2 cores)
def test_a_search_stopped_by_its_timeout_is_balanced_within_one(tmp_path, capsys):
    """--timeout stops starting trials; those running finish. Whenever that happens, the finished
    trials are the first ones by number, so the entries differ by one trial at most."""
    space = tmp_path / "pool.toml"
    space.write_text(POOLING_SPACE)
    out = tmp_path / "run"
    assert main(run_args(space, out, 50, "--jobs", "2", "--by", "pooling", "--timeout", "25")) == 0
    assert "--timeout 25 s reached" in capsys.readouterr().out
    trials = load(out).get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert 2 <= len(done) < 50 and len(done) == len(trials)  # stopped early; nothing left running or failed
    counts = collections.Counter(t.params["pooling"] for t in done)
    assert abs(counts["avg"] - counts["max"]) <= 1, counts
