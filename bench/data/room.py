"""Whether this machine has room for a dataset at an image size: memory to train on it, disk to cache it.

Checked before anything is reserved or decoded: without it ``--size 4000`` was killed for memory
after writing a 1.1 GB cache, 20000 started a 29 GB cache, and 100000 exited with no message.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from bench.errors import DataError

# Left free beside a new cache, for everything else on that disk: a fraction of the cache, at least 32 MiB.
MARGIN_FRACTION, MARGIN_MIN = 0.05, 32 * 2**20


def memory_bytes() -> int | None:
    """The memory this process can have: the machine's, or its container's limit if lower (None if unknown)."""
    try:
        found = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            found = min(found, int(text))
        break
    return found


def check_room(name: str, n: int, size: int, root: Path) -> None:
    """A DataError, with the bytes, if ``n`` images at ``size`` px cannot be trained on here (memory)
    or cached in ``root`` (disk, with a margin left for everything else on it)."""
    need = n * size * size * 3
    memory = memory_bytes()
    # Training holds the training fold in memory twice (its copy, and the framework's tensor of it).
    if memory is not None and 2 * need > memory:
        largest = math.isqrt(memory // (2 * 3 * max(n, 1)))
        raise DataError(f"{n} images of {name} at {size} px are {need:,} bytes decoded; training holds them in "
                        f"memory twice, and this machine has {memory:,} bytes. Use --size {largest} or less.")
    free = shutil.disk_usage(root).free
    margin = max(int(need * MARGIN_FRACTION), MARGIN_MIN)
    if need + margin > free:
        raise DataError(f"No space left in {root} for the image cache of {name} at {size} px: it needs {need:,} "
                        f"bytes ({need / 2**20:.1f} MiB) and {margin:,} to spare, and {free:,} are free. Use a "
                        f"smaller --size, free some space there, or point BENCH_CACHE at a folder with room.")

