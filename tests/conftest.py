"""Shared fixtures: every test gets its own cache, runs and data folders; datasets are made here."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
REAL_XRAYS = REPO / "tests" / "data" / "pneumonia"  # 976 real X-rays, CC BY 4.0 (README.md there)


@pytest.fixture(scope="session")
def real_xrays() -> Path:
    """The real X-rays shipped in the repository. Missing is a FAILURE, never a skip: a skipped
    real-data test would let the suite (and CI) pass without ever touching real images."""
    if not (REAL_XRAYS / "manifest.csv").is_file():
        pytest.fail(f"{REAL_XRAYS} is missing (or has no manifest.csv): the clone is incomplete; check out "
                    f"tests/data/pneumonia again (NORMAL/ and PNEUMONIA/ image folders, 976 images, and "
                    f"manifest.csv with columns path,label,patient,kermany_split).", pytrace=False)
    return REAL_XRAYS


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.mktemp("bench-home")
    monkeypatch.setenv("BENCH_CACHE", str(base / "cache"))
    monkeypatch.setenv("BENCH_RUNS", str(base / "runs"))
    monkeypatch.setenv("BENCH_DATA", str(base / "data"))
    monkeypatch.delenv("BENCH_DATASETS", raising=False)
    # Each test starts with no trainer kept from another (bench.training.pool), when loaded at all.
    pool = sys.modules.get("bench.training.pool")
    if pool is not None:
        pool.POOL.clear()
    return base


@pytest.fixture
def weights_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty weights folder of this test's own (BENCH_WEIGHTS, and a Keras cache beside it)."""
    folder = tmp_path / "weights"
    monkeypatch.setenv("BENCH_WEIGHTS", str(folder))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("BENCH_OFFLINE", "")  # restored after the test; `--offline` writes os.environ
    return folder


def write_image(path: Path, value: int, size: int = 16, noise_seed: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(noise_seed if noise_seed is not None else abs(hash(str(path))) % 2**32)
    arr = np.clip(value + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(path)


@pytest.fixture
def make_folder(tmp_path):
    """``make_folder({"cat": 6, "dog": 6})`` -> a class-per-folder dataset of distinct PNGs."""

    def make(counts: dict[str, int], name: str = "ds", size: int = 16) -> Path:
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        for c, (label, n) in enumerate(counts.items()):
            for i in range(n):
                write_image(root / label / f"p{i:03d}_{label}.png", 60 + 120 * c, size, noise_seed=1000 * c + i)
        return root

    return make


# Two backbones, tiny settings: a real search that finishes in about two minutes on 2 cores.
TWO_BACKBONE_SPACE = """
name = "tiny"
[objective]
metric = "balanced_accuracy"
[params]
weights = "none"
size = 32
epochs = 1
augment = "none"
[params.backbone]
type = "categorical"
choices = ["simple_cnn", "mobilenet_v2"]
[params.lr]
type = "float"
low = 1e-3
high = 1e-2
log = true
"""


@pytest.fixture(scope="session")
def demo_search(tmp_path_factory) -> tuple[Path, str]:
    """One real `bench run` on the embedded demo X-rays, ending with its held-out evaluation.

    simple_cnn vs MobileNetV2, 32 px, 1 epoch, 2 folds, 3 trials; shared by every slow test that
    only reads a finished search (the report's, the held-out evaluation's), so it trains once per
    session. Returns (run directory, what `bench run` printed).
    """
    from bench.cli import main

    base = tmp_path_factory.mktemp("demo-search")
    out = base / "runs" / "pneumonia-demo" / "tiny"
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        for var, sub in (("BENCH_CACHE", "cache"), ("BENCH_RUNS", "runs"), ("BENCH_DATA", "data")):
            mp.setenv(var, str(base / sub))
        space = base / "tiny.toml"
        space.write_text(TWO_BACKBONE_SPACE)
        code = main(["run", "--dataset", "pneumonia-demo", "--space", str(space), "--trials", "3", "--folds", "2",
                     "--out", str(out), "--pruner", "none"])
    assert code == 0, printed.getvalue()[-3000:]
    return out, printed.getvalue()


# ---- two test workers (pytest-xdist) -------------------------------------------------------------
# `make test` runs the suite on two worker processes (`-n 2 --dist loadgroup`): one process keeps
# only one of the two cores busy (TensorFlow's tracing, Python and the child processes' start-ups
# are serial; measured: 99% CPU of 200% over the default suite). A session or module fixture is
# made once per *worker*, so every test that reads one goes to the same worker: the shared real
# search runs once, not twice. Cheap ones (a path check, a server start) need no grouping.
UNGROUPED_FIXTURES = {"real_xrays", "postgres_url"}


def _shared_fixtures(item: pytest.Item) -> set[str]:
    """The project's session/module fixtures ``item`` reads, named by fixture and defining module
    (a fixture imported into another module is still the one fixture).

    All values of a parametrized one (test_report's ``run_dir``: synthetic, cli) count as one: on
    one worker pytest runs them value by value, while values interleaved with other groups' tests
    made a worker switch back and forth, and each switch tore down what the fixture had read by
    name (the shared search, re-run: measured, 85 s twice)."""
    info = getattr(item, "_fixtureinfo", None)
    names = {
        f"{name}@{defs[-1].func.__module__}"
        for name, defs in (info.name2fixturedefs.items() if info is not None else ())
        if defs and defs[-1].scope in ("session", "module", "package") and name not in UNGROUPED_FIXTURES
        and defs[-1].func.__module__.startswith("tests")  # the project's, not pytest's or a plugin's
    }
    # run_dir[cli] reads demo_search by name (request.getfixturevalue), outside the static closure.
    if getattr(getattr(item, "callspec", None), "params", {}).get("run_dir") == "cli":
        names.add("demo_search@tests.conftest")
    return names


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests that share any fixture share a worker: the groups are the connected components.
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    shared = {item.nodeid: sorted(_shared_fixtures(item)) for item in items}
    for keys in shared.values():
        for other in keys[1:]:
            parent[root(other)] = root(keys[0])
    for item in items:
        if shared[item.nodeid]:
            item.add_marker(pytest.mark.xdist_group(root(shared[item.nodeid][0])))
