"""Rows by any factor: `bench report --by` and `bench final --by` on a real search with two kinds of weights."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.errors import ConfigError
from bench.evaluation.grouping import Entry, Grouping, entries, parse_by
from bench.results import entry_keys, with_entry_columns

BY = ("backbone", "weights")


def test_labels_and_file_names_of_an_entry():
    default = Grouping()
    assert default.is_default and default.slug({"backbone": "resnet50", "weights": "imagenet"}) == "resnet50"
    g = Grouping(BY)
    assert g.title == "backbone · weights" and g.noun == "backbone · weights combination"
    assert g.label({"backbone": "resnet50", "weights": "imagenet"}) == "resnet50 · imagenet"
    assert g.slug({"backbone": "resnet50", "weights": "imagenet"}) == "resnet50__weights-imagenet"
    assert g.label({"backbone": "resnet50", "weights": None}) == "resnet50 · none"
    # A weights file shows as its file name, in labels and file names alike.
    config = {"backbone": "resnet50", "weights": "/data/my weights/rad.weights.h5"}
    assert g.label(config) == "resnet50 · rad.weights.h5"
    assert g.slug(config) == "resnet50__weights-rad.weights.h5"
    assert Grouping(("backbone", "unfrozen")).slug({"backbone": "vgg16", "unfrozen": 2}) == "vgg16__unfrozen-2"
    assert parse_by(" backbone , weights,backbone") == BY
    with pytest.raises(ValueError, match="must name one or more parameters"):
        parse_by(" , ")


def test_one_identity_per_entry_and_files_written_before_it():
    """Issue 22 items 1 and 8: Entry names a row alike in every file; older files read the same."""
    entry = Grouping(BY).entry({"backbone": "resnet50", "weights": None, "lr": 0.1})
    assert entry.columns == {"entry": "resnet50__weights-none", "backbone": "resnet50", "weights": "none"}
    assert entry.label == "resnet50 · none"
    assert Entry.from_final(entry.key, {"trial": 3, **entry.record(), "by": list(BY)}) == entry
    # A --by record of final.json before "factors": derived from its "by" and label; a default one is its backbone.
    old = {"backbone": "resnet50", "label": "resnet50 · none", "by": list(BY)}
    assert Entry.from_final("resnet50__weights-none", old) == entry
    assert Entry.from_final("vgg16", {"trial": 1}).columns == {"entry": "vgg16", "backbone": "vgg16"}

    finals = {"resnet50__weights-none": old, "vgg16": {"trial": 1}}
    # calibration.csv of that time: the slug in `backbone`; test_metrics.csv: a `key` column.
    calibration = pd.DataFrame({"backbone": ["resnet50__weights-none", "vgg16"], "value": [0.1, 0.2]})
    fixed = with_entry_columns(calibration, finals)
    assert list(fixed.entry) == ["resnet50__weights-none", "vgg16"] and list(fixed.backbone) == ["resnet50", "vgg16"]
    assert fixed.weights.iloc[0] == "none" and pd.isna(fixed.weights.iloc[1])
    metrics = pd.DataFrame({"backbone": ["resnet50", "vgg16"], "key": ["resnet50__weights-none", None]})
    fixed = with_entry_columns(metrics, finals)
    assert list(fixed.entry) == ["resnet50__weights-none", "vgg16"] and "key" not in fixed
    assert list(entry_keys(fixed)) == list(fixed.entry)


def test_best_trial_per_combination_and_clear_errors():
    configs = [(7, {"backbone": "a", "weights": None}), (3, {"backbone": "a", "weights": "imagenet"}),
               (1, {"backbone": "a", "weights": None}), (2, {"backbone": "b", "weights": None})]
    assert entries(Grouping(BY), configs) == {"a__weights-none": 7, "a__weights-imagenet": 3, "b__weights-none": 2}
    assert entries(Grouping(), configs) == {"a": 7, "b": 2}
    with pytest.raises(ConfigError, match=r"--by colour: not a parameter .* are: backbone, lr, weights"):
        Grouping(("backbone", "colour")).check(["weights", "backbone", "lr"], "runs/x")
    # Two files of one name in different folders would overwrite each other's model: refused.
    clash = [(1, {"backbone": "a", "weights": "/x/w.h5"}), (2, {"backbone": "a", "weights": "/y/w.h5"})]
    with pytest.raises(ConfigError, match="share the name 'a__weights-w.h5'"):
        entries(Grouping(BY), clash)


def weights_space(weights_file: Path) -> str:
    return f"""
name = "weights"
[objective]
metric = "balanced_accuracy"
[params]
backbone = "simple_cnn"
size = 32
epochs = 1
augment = "none"
[params.weights]
type = "categorical"
choices = ["none", "{weights_file}"]
[params.lr]
type = "categorical"
choices = [0.001, 0.003]
"""


@pytest.fixture(scope="module")
def weights_search(tmp_path_factory) -> Path:
    """A real grid search: simple_cnn from random init vs from a weights file, two learning rates each."""
    from bench.models import build_classifier

    home = tmp_path_factory.mktemp("weights-search")
    weights_file = home / "pretrained" / "simple_cnn.weights.h5"
    weights_file.parent.mkdir()
    build_classifier("simple_cnn", 2, 32).base.save_weights(weights_file)
    space = home / "weights.toml"
    space.write_text(weights_space(weights_file))
    out = home / "run"
    code = main(["run", "--dataset", "pneumonia-demo", "--space", str(space), "--trials", "4", "--folds", "2",
                 "--sampler", "grid", "--pruner", "none", "--no-final", "--out", str(out)])
    assert code == 0
    return out


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())


@pytest.mark.slow
def test_report_and_final_by_backbone_and_weights(weights_search, tmp_path, capsys):
    trials = pd.read_csv(weights_search / "trials.csv")
    trials = trials[trials.state == "COMPLETE"]
    assert len(trials) == 4
    weights = [json.loads(p)["weights"] for p in trials.params]
    trials["shown"] = ["none" if w is None else Path(w).name for w in weights]
    # The right answer, from trials.csv alone: the best CV value within each kind of weights.
    want = {w: int(rows.sort_values(["value", "number"], ascending=[False, True]).number.iloc[0])
            for w, rows in trials.groupby("shown")}
    assert set(want) == {"none", "simple_cnn.weights.h5"}

    code, text, err = run_cli(capsys, "report", "--run", weights_search, "--out", tmp_path / "by", "--by",
                              "backbone,weights")
    assert code == 0, err
    board = pd.read_csv(tmp_path / "by" / "tables" / "leaderboard_pneumonia-demo.csv")
    assert len(board) == 2
    assert dict(zip(board.key, board.trial)) == {f"simple_cnn · {w}": t for w, t in want.items()}
    md = (tmp_path / "by" / "index.md").read_text()
    assert "Rows are grouped by backbone and weights" in md and "backbone · weights" in text
    ttest = pd.read_csv(tmp_path / "by" / "tables" / "ttest_pneumonia-demo.csv")
    assert set(ttest.model_a) | set(ttest.model_b) == set(board.key)  # significance between the combinations
    cross = pd.read_csv(tmp_path / "by" / "tables" / "cross_dataset.csv")
    assert set(cross["backbone · weights"]) == set(board.key)

    # By backbone (the default): one row, the best trial overall.
    code, _, err = run_cli(capsys, "report", "--run", weights_search, "--out", tmp_path / "default", "--quiet")
    assert code == 0, err
    default = pd.read_csv(tmp_path / "default" / "tables" / "leaderboard_pneumonia-demo.csv")
    assert list(default.backbone) == ["simple_cnn"] and default.trial.iloc[0] in set(want.values())

    # A parameter the trials do not have: a clear error naming those they do have.
    code, _, err = run_cli(capsys, "report", "--run", weights_search, "--out", tmp_path / "bad",
                           "--by", "backbone,pool")
    assert code == 2 and "--by pool: not a parameter" in err and "weights" in err and "lr" in err

    code, _, err = run_cli(capsys, "final", "--run", weights_search, "--by", "backbone,weights", "--boot", "50")
    assert code == 0, err
    final = json.loads((weights_search / "final.json").read_text())["backbones"]
    slugs = {f"simple_cnn__weights-{w}": t for w, t in want.items()}
    assert {k: v["trial"] for k, v in final.items()} == slugs
    for slug, info in final.items():
        assert info["backbone"] == "simple_cnn" and info["by"] == list(BY)
        assert (weights_search / "models" / f"{slug}.keras").is_file()
        assert (weights_search / "figures" / f"gradcam_{slug}.png").is_file()
    tm = pd.read_csv(weights_search / "test_metrics.csv")
    assert set(tm.entry) == set(slugs) and set(tm.trial) == set(slugs.values())

    # The report now shows a held-out value on each combination's row.
    code, _, err = run_cli(capsys, "report", "--run", weights_search, "--out", tmp_path / "tested", "--quiet",
                           "--by", "backbone,weights", "--strict")
    assert code == 0, err
    board = pd.read_csv(tmp_path / "tested" / "tables" / "leaderboard_pneumonia-demo.csv")
    assert board.test_value.notna().all() and len(board) == 2

    # A combination's model exports with a card naming its real backbone and its held-out metrics.
    slug = next(iter(slugs))
    code, _, err = run_cli(capsys, "export", "--run", weights_search, "--backbone", slug, "--out",
                           tmp_path / "export" / "m.keras")
    assert code == 0, err
    card = json.loads((tmp_path / "export" / "m.card.json").read_text())
    assert card["model"]["backbone"] == "simple_cnn" and card["evaluation"]["test"]["metrics"]


def _copy_run(run: Path, to: Path) -> Path:
    """A copy of a run directory that the shared fixture's other tests never see."""
    import shutil

    shutil.copytree(run, to)
    return to


def _external_set(run: Path, folder: Path, per_class: int = 6) -> Path:
    """A folder of the run's own images in class folders: enough for `bench evaluate` to score."""
    import shutil

    root = Path(json.loads((run / "manifest.json").read_text())["dataset"]["root"])
    for label in ("NORMAL", "PNEUMONIA"):
        (folder / label).mkdir(parents=True)
        for src in sorted((root / label).iterdir())[:per_class]:
            shutil.copy(src, folder / label / src.name)
    return folder


@pytest.mark.slow
def test_clinical_sections_of_every_combination_reach_the_report(weights_search, tmp_path, capsys):
    """Issue 22 item 1: one identity per entry, written and read alike, so `--by` keeps every section."""
    run = _copy_run(weights_search, tmp_path / "run")
    code, _, err = run_cli(capsys, "final", "--run", run, "--by", "backbone,weights", "--operating-point",
                           "sens=0.9", "--tta", "flip", "--boot", "50")
    assert code == 0, err
    code, _, err = run_cli(capsys, "evaluate", "--run", run, "--dataset", _external_set(run, tmp_path / "ext"),
                           "--boot", "50")
    assert code == 0, err
    final = json.loads((run / "final.json").read_text())["backbones"]
    labels = {key: info["label"] for key, info in final.items()}
    assert len(labels) == 2

    # Every held-out file names the entry alike: its key, the backbone's name and one column per factor.
    tables = {name: pd.read_csv(run / f"{name}.csv") for name in
              ("test_metrics", "test_predictions", "calibration", "operating_points", "test_variants")}
    tables["external"] = pd.read_csv(run / "external" / "ext" / "test_metrics.csv")
    for name, frame in tables.items():
        assert set(frame.entry) == set(final), name
        assert set(frame.backbone) == {"simple_cnn"}, name
        assert set(frame.weights) == {"none", "simple_cnn.weights.h5"}, name
        for key, info in final.items():  # pandas groups by a factor without parsing the label
            assert set(frame[frame.entry == key].weights) == {info["factors"]["weights"]}, name

    out = tmp_path / "report"
    code, _, err = run_cli(capsys, "report", "--run", run, "--out", out, "--quiet", "--by", "backbone,weights",
                           "--strict")
    assert code == 0, err
    md = (out / "index.md").read_text()
    assert "No calibration" not in md
    board = pd.read_csv(out / "tables" / "leaderboard_pneumonia-demo.csv")
    assert set(board.entry) == set(final) and set(board.weights) == {"none", "simple_cnn.weights.h5"}
    variants = pd.read_csv(out / "tables" / "variants_pneumonia-demo.csv")
    assert set(variants.entry) == set(final) and set(variants.variant) == {"refit", "refit+tta"}
    for key, label in labels.items():
        name = label.replace(" · ", "-")
        assert f"{label}: calibration" in md and f"{label}: operating points" in md
        assert f"pneumonia-demo: {label}: CV -> held-out -> external" in md
        # The report's numbers are the run directory's.
        calib = pd.read_csv(out / "tables" / f"calibration_pneumonia-demo_{name}.csv")
        mine = tables["calibration"][tables["calibration"].entry == key]
        test_ece = mine[(mine.split == "test") & (mine.scaling == "none") & (mine.metric == "ece")].value.iloc[0]
        shown = calib[(calib.split == "test") & (calib.scaling == "none")]
        assert shown.ece.iloc[0] == pytest.approx(test_ece) and set(calib.entry) == {key}
        ops = pd.read_csv(out / "tables" / f"operating_points_pneumonia-demo_{name}.csv")
        mine = tables["operating_points"][tables["operating_points"].entry == key].set_index("split")
        assert ops.threshold.iloc[0] == pytest.approx(mine.loc["test", "threshold"])
        assert ops.test_sensitivity.iloc[0] == pytest.approx(mine.loc["test", "sensitivity"])
        tta = variants[(variants.entry == key) & (variants.variant == "refit+tta")]
        mine = tables["test_variants"][(tables["test_variants"].entry == key)
                                       & (tables["test_variants"].metric == "balanced_accuracy")]
        assert tta.balanced_accuracy.iloc[0] == pytest.approx(mine.value.iloc[0])
        ext = pd.read_csv(out / "tables" / f"external_pneumonia-demo_{key}.csv").set_index("metric")
        mine = tables["external"][(tables["external"].entry == key)].set_index("metric")
        assert ext.loc["balanced_accuracy", "ext_ext"] == pytest.approx(mine.loc["balanced_accuracy", "value"])

    # A run directory written before the identity (the slug in `backbone`, a `key` column, no `entry`
    # or factor columns) reads the same.
    for name in ("calibration", "operating_points", "test_variants"):
        frame = tables[name].drop(columns=["weights"])
        frame["backbone"] = frame.pop("entry")
        frame.to_csv(run / f"{name}.csv", index=False)
    for name in ("test_metrics", "test_predictions"):
        tables[name].drop(columns=["weights"]).rename(columns={"entry": "key"}).to_csv(run / f"{name}.csv",
                                                                                     index=False)
    for info in final.values():
        del info["factors"]
    (run / "final.json").write_text(json.dumps({"backbones": final}))
    code, _, err = run_cli(capsys, "report", "--run", run, "--out", tmp_path / "old", "--quiet", "--by",
                           "backbone,weights", "--strict")
    assert code == 0, err
    old = (tmp_path / "old" / "index.md").read_text()
    for label in labels.values():
        assert f"{label}: calibration" in old and f"{label}: operating points" in old
    assert "refit+tta" in old

    # What `bench final` recorded but the tables lack is a problem `--strict` names, under any --by.
    pd.read_csv(run / "calibration.csv").iloc[:0].to_csv(run / "calibration.csv", index=False)
    code, _, err = run_cli(capsys, "report", "--run", run, "--out", tmp_path / "lacking", "--quiet", "--by",
                           "backbone,weights", "--strict")
    assert code != 0 and "No calibration for simple_cnn · none" in err


@pytest.mark.slow
def test_every_table_of_entries_has_a_column_per_factor(weights_search, tmp_path, capsys):
    """Issue 22 item 8: under --by each CSV names its rows' factors in columns, beside the display key."""
    code, _, err = run_cli(capsys, "report", "--run", weights_search, "--out", tmp_path / "r", "--quiet", "--by",
                           "backbone,weights")
    assert code == 0, err
    folder = tmp_path / "r" / "tables"
    board = pd.read_csv(folder / "leaderboard_pneumonia-demo.csv")
    weights = dict(zip(board.key, board.weights))
    assert set(weights.values()) == {"none", "simple_cnn.weights.h5"} and set(board.backbone) == {"simple_cnn"}
    assert weights == {k: k.split(" · ")[1] for k in board.key}  # the factor column agrees with the label
    grouped = board.groupby("weights").trial.first()  # what a pandas user does: no parsing of "·"
    assert len(grouped) == 2

    cross = pd.read_csv(folder / "cross_dataset.csv")
    assert dict(zip(cross["backbone · weights"], cross.weights)) == weights
    ttest = pd.read_csv(folder / "ttest_pneumonia-demo.csv")
    assert [weights[k] for k in ttest.model_a] == list(ttest.weights_a)
    assert [weights[k] for k in ttest.model_b] == list(ttest.weights_b)
    per_model = sorted(folder.glob("per_class_*.csv")) + sorted(folder.glob("confusion_*.csv"))
    assert len(per_model) == 4
    for path in per_model:
        frame = pd.read_csv(path)
        assert frame.weights.nunique() == 1 and weights[frame.key.iloc[0]] == frame.weights.iloc[0], path.name
    md = (tmp_path / "r" / "index.md").read_text()
    assert "are the top backbone · weights combinations different?" in md  # item 10: not "backbones"
