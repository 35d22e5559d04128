"""MedMNIST npz sources and published baselines: synthetic npz files in the MedMNIST layout.

Tiny files (a few dozen 28 px images; binary grayscale and 9-class RGB) go the whole way through
the real entry points: `bench cv` (simple_cnn, 1 epoch, 2 folds), `bench final`, `bench report`.
The official test split must be the held-out set and never reach the cross-validation, the
numbers must be MedMNIST's own metric definitions, and the report must print the published
rows with their citation. Downloads go to a server on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import re
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from bench.cli import main
from bench.data import baselines as published
from bench.data import cache as image_cache
from bench.data import medmnist
from bench.data.registry import dataset_root, resolve
from bench.data.sources import build_index
from bench.data.spec import load_registry, parse_registry
from bench.errors import ConfigError, DataError
from bench.results import RunDir
from bench.training.experiment import prepare_data

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("train", "val", "test")
SINGLE_LABEL = ("pathmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist", "breastmnist", "bloodmnist",
                "tissuemnist", "organamnist", "organcmnist", "organsmnist")


@pytest.fixture(autouse=True)
def medmnist_home(tmp_path, monkeypatch):
    """A home of its own, so the medmnist package's ~/.medmnist is this test's, never the machine's."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("BENCH_REPORT_STRICT", "1")
    monkeypatch.delenv("BENCH_OFFLINE", raising=False)
    return home


def make_npz(path: Path, per_class: dict[str, int], n_classes: int, size: int = 28, rgb: bool = False,
             seed: int = 0, labels: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """A MedMNIST-layout npz: ``per_class[split]`` images of each class, brightness by class, (n, 1) labels."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in SPLITS:
        y = labels[split] if labels is not None else np.repeat(np.arange(n_classes), per_class[split])
        if labels is None:
            rng.shuffle(y)
        shape = (len(y), size, size, 3) if rgb else (len(y), size, size)
        level = (30 + 190 * y / max(n_classes - 1, 1)).reshape(-1, *([1] * (len(shape) - 1)))
        arrays[f"{split}_images"] = np.clip(level + rng.integers(-25, 25, shape), 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = y.reshape(-1, 1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return arrays


def data_folder(isolated_dirs: Path) -> Path:
    return isolated_dirs / "data" / "medmnist"


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def flat(text: str) -> str:
    """Terminal output without table borders and line breaks, for substring checks."""
    return " ".join(re.sub(r"[│┃┏┓┗┛┡┩━─┌┐└┘╇┳┻╋┼]", " ", text).split())


# ---- MedMNIST's evaluator (medmnist 3.0.2, evaluator.getAUC / getACC), written out ------------------------------


def medmnist_auc(y_true: np.ndarray, y_score: np.ndarray, task: str) -> float:
    if task == "binary-class":
        return float(roc_auc_score(y_true, y_score[:, -1]))
    return float(np.mean([roc_auc_score((y_true == i).astype(float), y_score[:, i]) for i in range(y_score.shape[1])]))


def medmnist_acc(y_true: np.ndarray, y_score: np.ndarray, task: str, threshold: float = 0.5) -> float:
    if task == "binary-class":
        return float(accuracy_score(y_true, y_score[:, -1] > threshold))
    return float(accuracy_score(y_true, np.argmax(y_score, axis=-1)))


# ---- the registry ---------------------------------------------------------------------------------------------


def test_shipped_registry_has_every_single_label_2d_set_and_refuses_chestmnist():
    specs = load_registry(REPO / "datasets.toml")
    for name in SINGLE_LABEL:
        spec = specs[name]
        assert spec.source.kind == "medmnist" and spec.source.flag == name, name
        assert spec.test.kind == "folder" and spec.test.folder == "test", name  # the official test split
        assert spec.task in ("binary", "multiclass") and spec.classes, name
        assert [f.size for f in spec.source.files] == [28, 64, 128, 224], name
        for f in spec.source.files:
            assert re.fullmatch(r"[0-9a-f]{32}", f.md5) and f.url.startswith("https://zenodo.org/"), (name, f)
            assert medmnist.file_name(name, f.size) in f.url, (name, f)
    assert specs["pneumoniamnist"].classes == ("normal", "pneumonia") and specs["pneumoniamnist"].positive == "pneumonia"
    assert len(specs["pathmnist"].classes) == 9 and len(specs["organamnist"].classes) == 11
    assert specs["chestmnist"].task == "multilabel"
    assert {n for n, s in specs.items() if s.baselines} == {"pathmnist", "pneumoniamnist"}


def test_chestmnist_is_refused_with_a_clear_message(capsys):
    code, _, err = run_cli(["cv", "--dataset", "chestmnist", "--backbone", "simple_cnn"], capsys)
    err = flat(err)
    assert code == 2 and "multilabel" in err and "not supported" in err and "Traceback" not in err
    code, _, err = run_cli(["fetch", "chestmnist"], capsys)
    assert code == 2 and "not supported" in flat(err)


TOY = """
[toymnist]
title = "Toy"
task = "binary"
classes = ["a", "b"]
image_size = 28
{extra}
[toymnist.source]
kind = "medmnist"
{source}
"""


@pytest.mark.parametrize("extra, source, words", [
    ("", 'files = [{ size = 28, md5 = "abc" }]', ["[toymnist].source.files[0]", "'md5'", "32 lowercase hex"]),
    ("", 'files = { size = 28 }', ["[toymnist].source", "'files'", "list of tables"]),
    ("", 'files = [{ size = 28, colour = "red" }]', ["files[0]", "unknown field 'colour'", "Allowed: size, url, md5"]),
    ("", 'files = [{ size = 28 }, { size = 28 }]', ["size 28 twice"]),
    ("", 'url = "http://x/toymnist.npz"', ["[toymnist].source", "takes no 'url'", "'files'"]),
    ("", 'flag = "../evil"', ["'flag'", "letters, digits"]),
    ('groups = { kind = "regex", pattern = "(p)" }', "", ["[toymnist].groups", "must be kind 'none'"]),
    ("test = { kind = \"fraction\", fraction = 0.3 }", "", ["[toymnist].test", "official test split"]),
    ('baselines = { table = "medmnist_v3" }', "", ["[toymnist].baselines", "'table'", "medmnist_v2"]),
    ('baselines = { table = "medmnist_v2" }', "", ["[toymnist].baselines", "no rows for dataset 'toymnist'",
                                                   "pathmnist, pneumoniamnist"]),
    ('task = "regression"', "", ["'task'", "binary, multiclass, multilabel"]),
])
def test_bad_medmnist_fields_name_the_entry_field_and_what_is_allowed(extra, source, words):
    text = TOY.format(extra=extra, source=source)
    if extra.startswith("task"):
        text = text.replace('task = "binary"\n', "")
    with pytest.raises(ConfigError) as err:
        parse_registry(text, "x.toml")
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_files_and_flag_are_only_for_medmnist_sources():
    text = '[a]\ntitle = "A"\ntask = "binary"\nsource = { kind = "local", path = "a", flag = "a" }\n'
    with pytest.raises(ConfigError, match="only for kind 'medmnist'"):
        parse_registry(text, "x.toml")


def test_baseline_table_holds_the_papers_numbers_with_citation_on_every_row():
    rows = published.load("medmnist_v2")
    assert all(r.citation.startswith("Yang J.") and "Scientific Data 10:41" in r.citation for r in rows)
    assert all(r.split == "test" and r.source == "MedMNIST v2, Table 3" for r in rows)
    table = {(r.dataset, r.method, r.metric): r.value for r in rows}
    expected = {
        "pneumoniamnist": {"ResNet-18 (28)": (0.944, 0.854), "ResNet-18 (224)": (0.956, 0.864),
                           "ResNet-50 (28)": (0.948, 0.854), "ResNet-50 (224)": (0.962, 0.884),
                           "auto-sklearn": (0.942, 0.855), "AutoKeras": (0.947, 0.878),
                           "Google AutoML Vision": (0.991, 0.946)},
        "pathmnist": {"ResNet-18 (28)": (0.983, 0.907), "ResNet-50 (28)": (0.990, 0.911),
                      "AutoKeras": (0.959, 0.834), "Google AutoML Vision": (0.944, 0.728)},
    }
    want = {(d, m, metric): v for d, methods in expected.items() for m, pair in methods.items()
            for metric, v in zip(("auc", "accuracy"), pair)}
    assert table == want  # exactly these cells: none added, none missing
    # The file really is in the package data.
    assert "baselines/*.csv" in (REPO / "pyproject.toml").read_text()


# ---- index and cache ------------------------------------------------------------------------------------------


def test_index_is_the_official_split_with_virtual_paths(isolated_dirs):
    arrays = make_npz(data_folder(isolated_dirs) / "pneumoniamnist.npz", {"train": 6, "val": 2, "test": 3}, 2)
    spec, root = resolve("pneumoniamnist")
    index = build_index(spec, root)
    assert index.root == data_folder(isolated_dirs)
    assert len(index) == 22 and index.paths[0] == "train/000000.png" and index.paths[12] == "val/000000.png"
    assert [p for p, t in zip(index.paths, index.official_test) if t] == [f"test/{i:06d}.png" for i in range(6)]
    expected = np.concatenate([arrays[f"{s}_labels"].ravel() for s in SPLITS])
    assert np.array_equal(index.labels, expected)
    assert index.classes == ("normal", "pneumonia") and index.groups == index.paths


def test_cache_prefers_the_native_size_and_keeps_the_pixels(isolated_dirs, monkeypatch):
    folder = data_folder(isolated_dirs)
    counts = {"train": 4, "val": 2, "test": 2}
    small = make_npz(folder / "pneumoniamnist.npz", counts, 2, size=28, seed=1)
    labels = {s: small[f"{s}_labels"].ravel() for s in SPLITS}
    big = make_npz(folder / "pneumoniamnist_64.npz", counts, 2, size=64, seed=2, labels=labels)
    stats = []
    original = Path.stat
    monkeypatch.setattr(Path, "stat", lambda self, *a, **k: (stats.append(self), original(self, *a, **k))[1])
    d64 = prepare_data("pneumoniamnist", folds=2, size=64)
    assert not any(p.suffix == ".png" for p in stats)  # the fingerprint is the npz's, not a stat() per image
    assert "pneumoniamnist_64.npz" in d64.cache.source and "as stored" in d64.cache.source
    stored = np.concatenate([big[f"{s}_images"] for s in SPLITS])
    assert np.array_equal(d64.images, np.repeat(stored[..., None], 3, axis=3))  # grayscale -> RGB, no resampling
    d28 = prepare_data("pneumoniamnist", folds=2, size=28)
    assert "pneumoniamnist.npz" in d28.cache.source and "as stored" in d28.cache.source
    assert np.array_equal(d28.images[..., 1], np.concatenate([small[f"{s}_images"] for s in SPLITS]))
    d32 = prepare_data("pneumoniamnist", folds=2, size=32)  # no 32 px file: from the smallest larger one
    assert "pneumoniamnist_64.npz" in d32.cache.source and "resized from 64 px to 32 px" in d32.cache.source
    assert d32.images.shape == (16, 32, 32, 3)
    assert d28.splits_digest == d64.splits_digest == d32.splits_digest  # one split whatever the size
    assert d64.summary()["split"]["rule"] == "official test split"
    assert prepare_data("pneumoniamnist", folds=2, size=64).cache.built is False
    # A rewritten file is a new cache entry, not stale pixels.
    key = d64.cache.key
    make_npz(folder / "pneumoniamnist_64.npz", counts, 2, size=64, seed=3, labels=labels)
    assert prepare_data("pneumoniamnist", folds=2, size=64).cache.key != key


def test_two_sizes_with_different_labels_are_refused(isolated_dirs):
    folder = data_folder(isolated_dirs)
    make_npz(folder / "pneumoniamnist.npz", {"train": 4, "val": 2, "test": 2}, 2, seed=1)
    make_npz(folder / "pneumoniamnist_64.npz", {"train": 4, "val": 2, "test": 2}, 2, size=64, seed=9)
    with pytest.raises(DataError, match="hold different labels"):
        prepare_data("pneumoniamnist", folds=2, size=64)


def test_files_in_the_medmnist_packages_folder_are_used(isolated_dirs, medmnist_home):
    make_npz(medmnist_home / ".medmnist" / "pneumoniamnist.npz", {"train": 4, "val": 2, "test": 2}, 2)
    spec, root = resolve("pneumoniamnist")
    assert root == dataset_root(spec) == medmnist_home / ".medmnist"
    assert len(build_index(spec, root)) == 16


@pytest.mark.parametrize("change, words", [
    (lambda a: a.pop("val_labels"), ["has no array(s) val_labels", "train_images, train_labels"]),
    (lambda a: a.update(train_labels=np.zeros((8, 14), np.uint8)), ["train_labels has shape (8, 14)", "multi-label"]),
    (lambda a: a.update(test_images=a["test_images"].astype(np.float32)), ["test_images holds float32", "uint8"]),
    (lambda a: a.update(val_labels=np.full((4, 1), 7, np.uint8)), ["val_labels holds class index 7", "2 classes"]),
])
def test_npz_not_in_the_medmnist_layout_is_a_clear_error(isolated_dirs, change, words):
    path = data_folder(isolated_dirs) / "pneumoniamnist.npz"
    arrays = make_npz(path, {"train": 4, "val": 2, "test": 2}, 2)
    change(arrays)
    np.savez(path, **arrays)
    with pytest.raises(DataError) as err:
        build_index(*resolve("pneumoniamnist"))
    for w in words:
        assert w in str(err.value), (w, str(err.value))
    assert str(path) in str(err.value)


def test_truncated_npz_says_to_fetch_it_again(isolated_dirs):
    path = data_folder(isolated_dirs) / "pneumoniamnist.npz"
    make_npz(path, {"train": 4, "val": 2, "test": 2}, 2)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="not a readable npz file.*truncated"):
        build_index(*resolve("pneumoniamnist"))


# ---- missing files, `bench datasets`, `bench fetch` ----------------------------------------------------------


def test_missing_npz_offline_names_the_file_and_where_to_put_it(isolated_dirs, capsys):
    where = data_folder(isolated_dirs)
    for args in (["cv", "--dataset", "pneumoniamnist", "--backbone", "simple_cnn", "--offline"],
                 ["fetch", "pneumoniamnist", "--offline"]):
        code, _, err = run_cli(args, capsys)
        text = flat(err)
        assert code == 2, text
        assert "pneumoniamnist_64.npz" in text and str(where / "pneumoniamnist_64.npz") in text, text
        assert "bench fetch pneumoniamnist" in text and "zenodo.org" in text and "Traceback" not in text
    assert "offline" in text and not where.exists()  # nothing was downloaded, no folder made


def toy_registry(tmp_path: Path, url: str, md5: str) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(TOY.format(extra="", source=f'files = [{{ size = 28, url = "{url}", md5 = "{md5}" }}]'))
    return path


@pytest.fixture
def served(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            requests.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()


def test_datasets_then_fetch_with_md5_from_a_local_server(served, tmp_path, isolated_dirs, capsys):
    site, base, requests = served
    make_npz(site / "toymnist.npz", {"train": 4, "val": 2, "test": 3}, 2)
    md5 = hashlib.md5((site / "toymnist.npz").read_bytes()).hexdigest()
    reg = toy_registry(tmp_path, f"{base}/toymnist.npz?download=1", md5)
    code, out, _ = run_cli(["datasets", "--registry", str(reg)], capsys)
    assert code == 0 and "not downloaded (needs toymnist.npz)" in flat(out)
    assert str(data_folder(isolated_dirs)) in flat(out)
    code, out, err = run_cli(["fetch", "toymnist", "--registry", str(reg)], capsys)
    assert code == 0, err
    assert (data_folder(isolated_dirs) / "toymnist.npz").read_bytes() == (site / "toymnist.npz").read_bytes()
    assert "ready" in flat(out) and len(requests) == 1
    code, out, _ = run_cli(["fetch", "toymnist", "--registry", str(reg)], capsys)
    assert code == 0 and len(requests) == 1  # there and its md5 matches: no second download
    code, out, _ = run_cli(["datasets", "--registry", str(reg)], capsys)
    assert "npz toymnist.npz" in flat(out) and "18 found" in flat(out)
    code, _, err = run_cli(["fetch", "toymnist", "--registry", str(reg), "--size", "64"], capsys)
    assert code == 2 and "no file of 64 px" in flat(err)


def test_fetch_refuses_a_wrong_md5_and_says_where_to_put_the_file(served, tmp_path, isolated_dirs, capsys):
    site, base, _ = served
    make_npz(site / "toymnist.npz", {"train": 4, "val": 2, "test": 3}, 2)
    reg = toy_registry(tmp_path, f"{base}/toymnist.npz", "0" * 32)
    code, _, err = run_cli(["fetch", "toymnist", "--registry", str(reg)], capsys)
    assert code == 2 and "wrong md5" in flat(err) and not (data_folder(isolated_dirs) / "toymnist.npz").exists()
    reg = toy_registry(tmp_path, "http://127.0.0.1:9/toymnist.npz", "0" * 32)  # port 9: nothing listens
    code, _, err = run_cli(["fetch", "toymnist", "--registry", str(reg)], capsys)
    text = flat(err)
    assert code == 2 and "by hand" in text and str(data_folder(isolated_dirs) / "toymnist.npz") in text
    assert "Traceback" not in text


# ---- end to end: bench cv, bench final, bench report ---------------------------------------------------------


@pytest.mark.parametrize("name, n_classes, rgb, task", [
    ("pneumoniamnist", 2, False, "binary-class"),
    ("pathmnist", 9, True, "multi-class"),
])
def test_cv_final_report_hold_out_the_official_test_split(name, n_classes, rgb, task, isolated_dirs, tmp_path,
                                                          capsys):
    per_class = {"train": 4, "val": 2, "test": 2} if n_classes > 2 else {"train": 12, "val": 4, "test": 6}
    arrays = make_npz(data_folder(isolated_dirs) / f"{name}.npz", per_class, n_classes, rgb=rgb)
    n_test = len(arrays["test_labels"])
    test_paths = [f"test/{i:06d}.png" for i in range(n_test)]
    run = tmp_path / "run"
    code, out, err = run_cli(["cv", "--dataset", name, "--size", "28", "--backbone", "simple_cnn", "--folds", "2",
                              "--epochs", "1", "--augment", "none", "--batch-size", "16", "--out", str(run)], capsys)
    assert code == 0, err
    rd = RunDir.open(run)
    manifest = rd.manifest()
    assert manifest["split"]["rule"] == "official test split" and manifest["split"]["test_images"] == n_test
    assert manifest["split"]["cv_images"] == len(arrays["train_labels"]) + len(arrays["val_labels"])
    assert manifest["dataset"]["baselines"] == {"table": "medmnist_v2", "dataset": name}
    assert f"{name}.npz" in manifest["cache"]["source"]
    splits = rd.table("splits")
    assert list(splits[splits.split == "test"].path) == test_paths
    assert set(splits[splits.split == "cv"].path.str.split("/").str[0]) == {"train", "val"}
    predictions = rd.table("predictions")  # out-of-fold: the search's only view of the data
    assert len(predictions) == manifest["split"]["cv_images"]
    assert not predictions.path.str.startswith("test/").any()

    # Before `bench final`: the published rows alone, and a note saying why.
    out_dir = tmp_path / "report-cv"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["report", "--run", str(run), "--out", str(out_dir)]) == 0
    md = (out_dir / "index.md").read_text()
    assert f"{name}: beside the literature" in md and "No held-out result" in md

    code, out, err = run_cli(["final", "--run", str(run), "--boot", "50"], capsys)
    assert code == 0, err
    tp = rd.table("test_predictions")
    assert list(tp.path) == test_paths  # exactly the npz's test split, in its order
    classes = manifest["dataset"]["classes"]
    assert list(tp.target) == list(arrays["test_labels"].ravel())
    assert list(tp.truth) == [classes[i] for i in arrays["test_labels"].ravel()]
    # bench's numbers are MedMNIST's evaluator's numbers on the same predictions.
    scores = tp[[f"p_{c}" for c in classes]].to_numpy()
    y = tp.target.to_numpy()
    tm = rd.table("test_metrics").set_index("metric")
    assert tm.loc["auc", "value"] == pytest.approx(medmnist_auc(y, scores, task), abs=1e-9)
    assert tm.loc["accuracy", "value"] == pytest.approx(medmnist_acc(y, scores, task), abs=1e-9)
    # No patient ids in MedMNIST: the CIs resample images, and say so.
    assert set(tm.unit) == {"images"} and set(tm.n_units) == {n_test}

    out_dir = tmp_path / "report"
    code, out, err = run_cli(["report", "--run", str(run), "--out", str(out_dir)], capsys)
    assert code == 0, err
    assert "beside the literature" in flat(out) and "as reported" in flat(out)  # also in the terminal
    md = (out_dir / "index.md").read_text()
    section = md[md.index(f"**{name}: beside the literature**"):]
    section = section[:section.index("\n## ")]
    assert "doi:10.1038/s41597-022-01721-8" in section and "Yang J." in section
    assert f"(95% CI by bootstrap over {n_test} images)" in section
    assert "bench: simple_cnn" in section and "ResNet-18 (28)" in section and "Google AutoML Vision" in section
    assert "Training recipes differ" in section and "from scratch, no augmentation, 100 epochs" in section
    assert ("one-vs-rest" in section) == (n_classes > 2) and ("thresholded at 0.5" in section) == (n_classes == 2)
    table = pd.read_csv(out_dir / "tables" / f"literature_{name}.csv")
    ours = table[table.kind == "bench"].iloc[0]
    assert ours.auc == pytest.approx(tm.loc["auc", "value"]) and ours.n_images == n_test and ours.image_size == 28
    theirs = table[table.kind == "published"].set_index("method")
    assert theirs.loc["ResNet-18 (28)", "auc"] == (0.944 if name == "pneumoniamnist" else 0.983)
    assert theirs.citation.str.contains("MedMNIST v2").all()
    html = (out_dir / "index.html").read_text()
    assert "beside the literature" in html and "as reported: MedMNIST v2, Table 3" in html


def test_report_without_a_baseline_table_has_no_literature_section(make_folder, tmp_path, capsys):
    root = make_folder({"a": 4, "b": 4})
    run = tmp_path / "run"
    code, _, err = run_cli(["cv", "--dataset", str(root), "--size", "16", "--backbone", "simple_cnn", "--folds", "2",
                            "--epochs", "1", "--augment", "none", "--test-fraction", "0.25", "--out", str(run)], capsys)
    assert code == 0, err
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["report", "--run", str(run), "--out", str(tmp_path / "report")]) == 0
    assert "beside the literature" not in (tmp_path / "report" / "index.md").read_text()


def test_fingerprint_of_an_npz_index_changes_with_the_size_file(isolated_dirs):
    folder = data_folder(isolated_dirs)
    small = make_npz(folder / "pneumoniamnist.npz", {"train": 4, "val": 2, "test": 2}, 2)
    index = build_index(*resolve("pneumoniamnist"))
    before = image_cache.fingerprint(index, 64)
    make_npz(folder / "pneumoniamnist_64.npz", {"train": 4, "val": 2, "test": 2}, 2, size=64,
             labels={s: small[f"{s}_labels"].ravel() for s in SPLITS})
    index = build_index(*resolve("pneumoniamnist"))
    assert image_cache.fingerprint(index, 64) != before  # the native file now serves 64 px
    assert image_cache.fingerprint(index, 28) == image_cache.fingerprint(index, 28)
