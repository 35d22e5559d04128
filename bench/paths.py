"""Where bench keeps data, caches and runs; every location can be moved by an environment variable."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

PACKAGE_DIR = Path(__file__).resolve().parent
OFFLINE_ENV = "BENCH_OFFLINE"
DEMO_DIR = PACKAGE_DIR / "data" / "demo"


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else default


def data_dir() -> Path:
    """Downloaded and extracted datasets (BENCH_DATA)."""
    return _env_path("BENCH_DATA", Path(platformdirs.user_cache_dir("bench")) / "data")


def cache_dir() -> Path:
    """Decoded image arrays (BENCH_CACHE); safe to delete, rebuilt on demand."""
    return _env_path("BENCH_CACHE", Path(platformdirs.user_cache_dir("bench")) / "images")


def runs_dir() -> Path:
    """Default parent of run directories (BENCH_RUNS, else ./runs)."""
    return _env_path("BENCH_RUNS", Path("runs"))


def registry_file() -> Path:
    """datasets.toml: BENCH_DATASETS, else the registry shipped in the package (the repo's top-level file)."""
    return _env_path("BENCH_DATASETS", PACKAGE_DIR / "datasets.toml")


def offline() -> bool:
    """True under ``BENCH_OFFLINE=1`` (or ``bench --offline``): nothing may touch the network."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}
