"""Shared fixtures: every test gets its own cache, runs and data folders; datasets are made here."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_PNEUMONIA = REPO.parent / "shared" / "data" / "pneumonia"


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.mktemp("bench-home")
    monkeypatch.setenv("BENCH_CACHE", str(base / "cache"))
    monkeypatch.setenv("BENCH_RUNS", str(base / "runs"))
    monkeypatch.setenv("BENCH_DATA", str(base / "data"))
    monkeypatch.delenv("BENCH_DATASETS", raising=False)
    return base


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
