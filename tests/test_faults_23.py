"""Bad input and faults of issue 23 (items 3, 6-12, 14), each probe as a new user would try it.

Every case uses real files made here, real training where a command trains, and the real CLI.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench.cli import main
from bench.data.registry import resolve
from bench.data.sources import build_index
from bench.errors import DataError
from bench.training.experiment import prepare_data
from tests.test_data_faults import write_manifest


@pytest.fixture
def readonly_dir(tmp_path):
    """A read-only tmpfs: permission bits do not stop root, a read-only mount does."""
    import subprocess

    folder = tmp_path / "ro"
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, " ".join(err.split())




# ---- 3. a patient column under another name ------------------------------------------------------
def _three_per_patient(root: Path, column: str) -> None:
    """12 images per class, 3 per patient: 4 patients a class."""
    write_manifest(root, ("path", "label", column),
                   [(f"{c}/p{i:03d}_{c}.png", c, f"{c}-pt{i // 3}") for c in "ab" for i in range(12)])


@pytest.mark.parametrize("column", ["PatientID", "Patient", "patient id", "subject_id", "case", "Subject-ID"])
def test_a_patient_column_in_any_usual_spelling_groups_the_images(make_folder, column):
    root = make_folder({"a": 12, "b": 12})
    _three_per_patient(root, column)
    spec, folder = resolve(str(root))
    assert (spec.groups.kind, spec.groups.column) == ("column", column)
    index = build_index(spec, folder)
    assert len(set(index.groups)) == 8 and index.warnings == ()


def test_a_patient_column_keeps_patients_in_one_fold_through_cv(make_folder, capsys, tmp_path):
    root = make_folder({"a": 12, "b": 12})
    _three_per_patient(root, "PatientID")
    code, out, err = run_main(capsys, "cv", "--dataset", root, "--backbone", "simple_cnn", "--size", "32",
                              "--folds", "2", "--epochs", "1", "--weights", "none", "--out", tmp_path / "run")
    assert code == 0, err
    splits = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert splits["dataset"]["groups"] == 8 and splits["dataset"]["group_rule"] == "column"


def test_an_unused_id_like_column_is_named_with_the_flag_that_uses_it(make_folder, capsys):
    root = make_folder({"a": 12, "b": 12})
    write_manifest(root, ("path", "label", "MRN", "sex"),
                   [(f"{c}/p{i:03d}_{c}.png", c, f"{c}{i // 3}", "FM"[i % 2]) for c in "ab" for i in range(12)])
    spec, folder = resolve(str(root))
    index = build_index(spec, folder)
    assert len(set(index.groups)) == 24
    assert len(index.warnings) == 1  # MRN, not sex (two values: a category, not an id)
    assert "column 'MRN' is not used" in index.warnings[0] and "--group-column 'MRN'" in index.warnings[0]

    data = prepare_data(str(root), folds=2, size=16, group_column="MRN")
    assert len(set(data.index.groups)) == 8 and data.index.warnings == ()
    assert data.settings.group_column == "MRN"  # recorded, so `bench final` rebuilds the same groups


def test_group_column_names_what_is_wrong(make_folder, capsys):
    root = make_folder({"a": 4, "b": 4})
    code, _, err = run_main(capsys, "audit", "--dataset", root, "--group-column", "MRN", "--size", "16")
    assert code == 2 and "has no manifest.csv" in err and "--group-regex" in err
    write_manifest(root, ("path", "label", "MRNo"), [(f"{c}/p{i:03d}_{c}.png", c, "x") for c in "ab" for i in range(4)])
    with pytest.raises(DataError, match=r"--group-column MRN: .*manifest.csv has no such column .*'MRNo'"):
        resolve(str(root), group_column="MRN")


# ---- 7. links to nothing named like images -----------------------------------------------------
def test_a_dangling_link_and_a_self_link_are_passed_over_with_the_reason(make_folder, capsys, tmp_path):
    from bench.deploy.predict import collect_images

    root = make_folder({"a": 6, "b": 6})
    (root / "a" / "gone.jpeg").symlink_to("nowhere.jpeg")
    (root / "b" / "self.jpeg").symlink_to("self.jpeg")
    code, _, err = run_main(capsys, "cv", "--dataset", root, "--backbone", "simple_cnn", "--size", "32",
                            "--folds", "2", "--epochs", "1", "--weights", "none", "--out", tmp_path / "run")
    assert code == 0, err
    assert "passed over" in err and "a link to nowhere.jpeg, which does not exist" in err
    assert "a loop of links" in err
    facts = json.loads((tmp_path / "run" / "manifest.json").read_text())["dataset"]
    assert facts["images"] == 12
    assert sorted(p for p, _ in facts["passed_over"]) == ["a/gone.jpeg", "b/self.jpeg"]
    # `bench audit` prepares the data the same way: no traceback either.
    code, _, err = run_main(capsys, "audit", "--dataset", root, "--size", "16", "--folds", "2",
                            "--out", tmp_path / "audit")
    assert code == 0 and "a loop of links" in err
    items, unreadable = collect_images([root], ["a", "b"])
    assert len(items) == 12 and len(unreadable) == 2


# ---- 11. staged copies of the same data --------------------------------------------------------
def _join_study(dataset: Path, storage: str, out: Path) -> None:
    """What `bench run` does before its first trial on a shared study: prepare, open, check identity."""
    from rich.console import Console

    from bench.search.runner import SearchOptions, Supervisor

    space = out.parent / "tiny.toml"
    space.write_text('name = "tiny"\n[params]\nbackbone = "simple_cnn"\nweights = "none"\nsize = 32\nepochs = 1\n'
                     '[params.lr]\ntype = "float"\nlow = 1e-3\nhigh = 1e-2\nlog = true\n')
    options = SearchOptions(dataset=str(dataset), trials=1, space=str(space), folds=2, storage=storage,
                            study="shared", out=out)
    Supervisor(options, Console(file=open(os.devnull, "w"))).prepare()


def test_two_copies_made_at_different_times_join_one_study_and_a_changed_copy_names_its_files(
        make_folder, tmp_path):
    import shutil

    from bench.errors import ConfigError
    from tests.conftest import write_image

    original = make_folder({"a": 6, "b": 6})
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    # Staged as on two nodes: plain copies (new mtimes), the second one a day older than the first.
    node1 = shutil.copytree(original, tmp_path / "node1" / "ds", copy_function=shutil.copy)
    node2 = shutil.copytree(original, tmp_path / "node2" / "ds", copy_function=shutil.copy)
    for f in node2.rglob("*.png"):
        os.utime(f, (f.stat().st_mtime - 86400,) * 2)
    _join_study(node1, storage, tmp_path / "run1")
    _join_study(node2, storage, tmp_path / "run2")  # was: refused as "a different setup"

    node3 = shutil.copytree(original, tmp_path / "node3" / "ds", copy_function=shutil.copy)
    write_image(node3 / "a" / "p002_a.png", 10, 16, noise_seed=4242)  # other pixels, same name
    (node3 / "b" / "p005_b.png").unlink()
    with pytest.raises(ConfigError) as info:
        _join_study(node3, storage, tmp_path / "run3")
    msg = str(info.value)
    assert "dataset_fingerprint" in msg
    assert "1 files only in the recorded copy: b/p005_b.png" in msg
    assert "1 files whose content, size or label differ: a/p002_a.png" in msg


def test_file_digests_are_read_once_per_file_state(make_folder, monkeypatch):
    from bench.data import digests

    root = make_folder({"a": 3, "b": 3})
    rels = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
    first = digests.content_digests(root, rels)
    read: list[Path] = []
    real = digests._digest
    monkeypatch.setattr(digests, "_digest", lambda p: read.append(p) or real(p))
    assert digests.content_digests(root, rels) == first and read == []  # all from the kept digests
    os.utime(root / rels[0], (1, 1))
    assert digests.content_digests(root, rels) == first and read == [root / rels[0]]


# ---- 9. bench predict --csv to a place that cannot take it -------------------------------------
def test_predict_csv_to_a_folder_or_an_unwritable_place_is_refused_before_predicting(tmp_path, capsys,
                                                                                     readonly_dir):
    # The model is not a model: each refusal below comes before it is even opened.
    model = tmp_path / "m.keras"
    model.write_text("not a model")
    images = tmp_path / "img"
    images.mkdir()
    (tmp_path / "afile").write_text("x")
    for csv_arg, expected in ((tmp_path, "is a folder: give the name of a file to write (e.g. "),
                              (tmp_path / "afile" / "p.csv", "afile is a file, not a folder"),
                              (readonly_dir / "p.csv", "Read-only file system")):
        code, _, err = run_main(capsys, "predict", model, images, "--csv", csv_arg)
        assert code == 2 and "--csv" in err and expected in err and "not a Keras model" not in err, err
        assert "Traceback" not in err


# ---- 8. a read-only --out, BENCH_RUNS or BENCH_CACHE -------------------------------------------
def test_read_only_run_and_cache_folders_are_refused_before_decoding(make_folder, tmp_path, capsys, readonly_dir,
                                                                    monkeypatch):
    root = make_folder({"a": 6, "b": 6})
    cache = Path(os.environ["BENCH_CACHE"])
    cv = ("cv", "--dataset", root, "--backbone", "simple_cnn", "--size", "32", "--folds", "2", "--epochs", "1",
          "--weights", "none")
    code, _, err = run_main(capsys, *cv, "--out", readonly_dir / "run")
    assert code == 2 and f"--out {readonly_dir / 'run'} cannot be written" in err and "Read-only" in err
    code, _, err = run_main(capsys, "run", "--dataset", root, "--trials", "1", "--out", readonly_dir / "run")
    assert code == 2 and "--out" in err and "Read-only" in err
    code, _, err = run_main(capsys, "audit", "--dataset", root, "--size", "16", "--out", readonly_dir / "audit")
    assert code == 2 and "--out" in err and "Read-only" in err
    assert not list(cache.glob("*.npy"))  # refused before anything was decoded

    monkeypatch.setenv("BENCH_RUNS", str(readonly_dir / "runs"))
    code, _, err = run_main(capsys, *cv)
    assert code == 2 and "BENCH_RUNS" in err and "Set BENCH_RUNS to a folder you can write to" in err
    monkeypatch.setenv("BENCH_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("BENCH_CACHE", str(readonly_dir / "cache"))
    code, _, err = run_main(capsys, *cv, "--out", tmp_path / "run")
    assert code == 2 and f"image cache folder (BENCH_CACHE) {readonly_dir / 'cache'} cannot be written" in err
    assert "Set BENCH_CACHE" in err and "Traceback" not in err


# ---- 14. a registry root that leaves the entry's folder ----------------------------------------
@pytest.mark.parametrize("root", ["../other", "histo/../../other", "/etc"])
def test_a_registry_root_leading_out_of_the_entrys_folder_is_refused(tmp_path, capsys, root):
    reg = tmp_path / "registry.toml"
    reg.write_text(f'[histo]\ntitle = "Toy"\ntask = "binary"\nimage_size = 32\n'
                   f'source = {{ kind = "archive", url = "file:///nowhere/histo.zip", root = "{root}" }}\n')
    for command in (["datasets"], ["fetch", "histo"]):
        code, out, err = run_main(capsys, *command, "--registry", reg)
        assert code == 2 and "ready" not in out, (command, out, err)
        assert f"[histo].source: 'root' is '{root}'" in err and "neither absolute nor contain '..'" in err


# ---- 12. a moved run directory ------------------------------------------------------------------
def _search_dir(run_path: Path, storage_spec: str | None) -> None:
    """A run directory as `bench run` leaves it: a real Optuna study, the storage in manifest.json."""
    import optuna

    from bench.results import RunDir
    from bench.search.storage import describe_storage, open_storage

    run = RunDir.open_or_create(run_path)
    storage = open_storage(storage_spec, run.path)
    optuna.create_study(study_name="s", storage=storage)
    run.write_manifest({"kind": "search", "engine": "optuna", "study": "s", "storage": describe_storage(storage)})


def test_a_moved_run_directory_finds_its_study_or_says_to_give_storage(tmp_path):
    import shutil

    from bench.errors import ConfigError
    from bench.results import RunDir
    from bench.search.shared import shared_study

    # Its own study.db moved with it: that is the study (was: "cannot open storage" at the old path).
    _search_dir(tmp_path / "old" / "run", None)
    shutil.move(tmp_path / "old", tmp_path / "new")
    assert shared_study(RunDir.open(tmp_path / "new" / "run")) is None  # the local study, as before the move

    # A journal beside it that moved too: said so, with the option that fixes it.
    _search_dir(tmp_path / "run2", f"journal:{tmp_path / 'shared' / 'study.log'}")
    shutil.move(tmp_path / "shared", tmp_path / "shared2")
    run = RunDir.open(tmp_path / "run2")
    with pytest.raises(DataError) as info:
        shared_study(run)
    msg = str(info.value)
    assert f"storage {tmp_path / 'shared' / 'study.log'} (recorded in its manifest.json) is not there" in msg
    assert "--storage journal:NEW/PATH/study.log" in msg
    assert not (tmp_path / "shared").exists()  # nothing created at the old place
    assert shared_study(run, f"journal:{tmp_path / 'shared2' / 'study.log'}").study_name == "s"

    # A recorded storage that is there but cannot be opened: the error says --storage gives another.
    _search_dir(tmp_path / "run3", f"sqlite:///{tmp_path / 'other.db'}")
    (tmp_path / "other.db").write_text("replaced by something that is not a database")
    with pytest.raises(ConfigError, match=r"cannot open storage .*manifest.json recorded; give another with --storage"):
        shared_study(RunDir.open(tmp_path / "run3"))


# ---- 10. --size without an upper bound ----------------------------------------------------------
def test_a_size_that_cannot_fit_is_refused_with_the_bytes_before_any_cache(make_folder, tmp_path, capsys):
    root = make_folder({"a": 6, "b": 6})
    cache = Path(os.environ["BENCH_CACHE"])
    cv = ("cv", "--dataset", root, "--backbone", "simple_cnn", "--weights", "none", "--folds", "2", "--epochs", "1",
          "--out", tmp_path / "run")
    for size in ("20000", "100000"):  # was: a 29 GB cache started; exit 1 with no message
        code, _, err = run_main(capsys, *cv, "--size", size)
        assert code == 2 and f"--size {size} is too large for 'simple_cnn'" in err and "bytes of activations" in err
        assert "Use --size" in err
    # The backbone's own limit, before the cache (was: after decoding every image).
    code, _, err = run_main(capsys, "cv", "--dataset", root, "--backbone", "mobilenet_v2", "--size", "8",
                            "--folds", "2", "--out", tmp_path / "run")
    assert code == 2 and "too small for backbone 'mobilenet_v2'" in err
    assert not list(cache.glob("*.npy")) and not (tmp_path / "run").exists()


def test_the_cache_is_refused_when_it_cannot_fit_memory_or_disk(make_folder, tmp_path):
    import math

    from bench.data.room import memory_bytes

    root = make_folder({"a": 6, "b": 6})
    too_big = math.isqrt(memory_bytes() // (2 * 3 * 12)) + 1  # twice the decoded images exceed the memory
    with pytest.raises(DataError, match=rf"12 images of ds at {too_big} px are [\d,]+ bytes decoded; training holds "
                                        rf"them in memory twice, and this machine has [\d,]+ bytes. Use --size"):
        prepare_data(str(root), folds=2, size=too_big)
    assert not list(Path(os.environ["BENCH_CACHE"]).glob("*.npy*"))


# ---- 6. the cache's space reservation on a nearly full disk -------------------------------------
@pytest.fixture
def small_ext4(tmp_path):
    """A real 24 MiB ext4 (a loop mount): a failed posix_fallocate there keeps what it got."""
    import subprocess

    image, folder = tmp_path / "ext4.img", tmp_path / "ext4"
    folder.mkdir()
    with open(image, "wb") as f:
        f.truncate(24 * 2**20)
    steps = (["mkfs.ext4", "-q", "-F", str(image)], ["mount", "-o", "loop", str(image), str(folder)])
    for step in steps:
        done = subprocess.run(step, capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make a loop-mounted ext4 here (needs root and loop devices): {done.stderr.decode()}")
    try:
        yield folder
    finally:
        # Lazily if busy (a map left open by a failing run): never leave the mount behind.
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def test_the_cache_checks_free_space_first_and_gives_back_a_failed_reservation(make_folder, small_ext4,
                                                                               monkeypatch):
    import shutil

    from bench.data import cache

    root = make_folder({"a": 6, "b": 6})
    (small_ext4 / "cache").mkdir()
    monkeypatch.setenv("BENCH_CACHE", str(small_ext4 / "cache"))
    free = shutil.disk_usage(small_ext4).free
    # 12 images at 800 px are 23,040,000 bytes: more than this disk has. Said first, with the numbers.
    with pytest.raises(DataError, match=r"it needs 23,040,000 bytes \(22.0 MiB\) and [\d,]+ to spare, and [\d,]+ are free"):
        prepare_data(str(root), folds=2, size=800)

    # Another process may take the room between the check and the reservation: then the real
    # posix_fallocate fails, and what it got must be given back before the error is reported.
    monkeypatch.setattr(cache, "check_room", lambda *a: None)
    with pytest.raises(DataError, match="No space left in") as info:
        prepare_data(str(root), folds=2, size=800)
    assert shutil.disk_usage(small_ext4).free > 0.9 * free  # was: 0 bytes free until the process ended
    assert "bytes; " in str(info.value) and "are free now" in str(info.value)
    assert str(small_ext4) not in Path("/proc/self/maps").read_text()  # no map keeps the temporary alive
    assert not list((small_ext4 / "cache").glob("*.npy*"))
