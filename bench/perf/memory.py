"""peak_rss: the memory a search needs on a gi8-sized set (8,000 images, 224 px, 8 classes).

A synthetic class-per-folder set of random-textured JPEGs is generated first (not timed), then
``bench run`` searches it as a child process: one MobileNetV3-Small trial (random init) of one epoch on 2 folds, so
what is measured is the data side (the decoded image cache, the fold copies, the input
pipeline) at full size, which does not depend on the trial count. Peak RSS is sampled over the
child's whole process tree (the search and its worker), summed: an upper bound, since pages both
share count twice. The held-out refit is left out (``--no-final``), as in smoke_search.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from bench.perf._child import run_bench
from bench.perf._registry import PerfOptions, PerfRow, register_perf

GIB = 1024**3
TARGET_GIB = 8.0
CLASSES = 8
SPACE = """\
name = "perf-memory"
[objective]
metric = "balanced_accuracy"
[params.backbone]
type = "fixed"
value = "mobilenet_v3_small"
[params.size]
type = "fixed"
value = {size}
[params.epochs]
type = "fixed"
value = 1
[params.augment]
type = "fixed"
value = "none"
"""


def synthetic_dataset(root: Path, n_images: int, size: int, seed: int = 0) -> Path:
    """``n_images`` JPEGs in ``CLASSES`` folders: coarse random texture plus a class tint, so they
    compress like photographs rather than like flat colour."""
    rng = np.random.default_rng(seed)
    cell = 8
    for i in range(n_images):
        label = i % CLASSES
        coarse = rng.integers(0, 200, (size // cell, size // cell, 3), dtype=np.uint8)
        image = np.repeat(np.repeat(coarse, cell, axis=0), cell, axis=1)
        image = np.clip(image + rng.integers(0, 40, image.shape) + 6 * label, 0, 255).astype(np.uint8)
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"img{i:05d}.jpg", quality=90)
    return root


@register_perf("peak_rss")
def peak_rss(options: PerfOptions) -> list[PerfRow]:
    n_images, size = (160, 224) if options.quick else (8000, 224)
    with tempfile.TemporaryDirectory(prefix="bench-perf-memory-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        data = synthetic_dataset(work / "gi8-synthetic", n_images, size, seed=options.seed)
        generated = time.perf_counter() - t0
        space = work / "space.toml"
        space.write_text(SPACE.format(size=size))
        run_path = work / "run"
        child = run_bench(["run", "--dataset", str(data), "--space", str(space), "--trials", "1", "--folds", "2",
                           "--seed", str(options.seed), "--no-final", "--out", str(run_path)], work, sample_rss=True)
        cache_bytes = sum(f.stat().st_size for f in (work / "cache").rglob("*") if f.is_file())
    peak = child.peak_rss_bytes / GIB
    return [PerfRow(
        measurement="peak_rss",
        what=f"bench run over a synthetic {n_images:,}-image {size} px {CLASSES}-class set: mobilenet_v3_small, "
             f"1 trial x 2 folds x 1 epoch, --no-final",
        baseline="target",
        bench="peak RSS, process tree",
        baseline_value=TARGET_GIB,
        bench_value=peak,
        unit="GiB",
        target=f"< {TARGET_GIB:g} GiB",
        met=peak < TARGET_GIB,
        note=f"image cache {cache_bytes / GIB:.2f} GiB on disk; search {child.seconds:.0f} s; "
             f"images generated in {generated:.0f} s (not counted)",
    )]
