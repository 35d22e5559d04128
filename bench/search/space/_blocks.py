"""Block counts of backbones (the range of a ``blocks`` parameter), cached in memory and on disk.

Counting builds the backbone, so Keras is imported only when a count is not cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from functools import cache
from pathlib import Path
from typing import Any

from bench.atomic import write_text_atomic
from bench.paths import cache_dir
from bench.search.space._fields import _is_int

_BLOCK_COUNTS: dict[str, int] = {}
BLOCK_CACHE_FILE = "block_counts.json"


@cache
def _block_stamp(backbone: str) -> str:
    """What a cached count depends on: Keras, the block rules and the backbone's source file."""
    import importlib
    import inspect

    import keras

    from bench.models import get_backbone

    h = hashlib.sha256(keras.__version__.encode())
    sources = [importlib.import_module("bench.models.blocks").__file__]
    with contextlib.suppress(TypeError, OSError):
        sources.append(inspect.getfile(get_backbone(backbone).build))
    for src in sources:
        try:
            h.update(Path(src).read_bytes())
        except OSError:
            h.update(str(src).encode())
    return h.hexdigest()[:16]


def block_count(backbone: str, size: int | None = None) -> int:
    """How many blocks ``backbone`` has (the largest unfrozen depth), built once and cached.

    The block structure does not depend on the input size (checked on ResNet50, InceptionV3,
    EfficientNetB0 and ConvNeXtTiny at their minimum size, 96 and 224 px), so the count is cached
    per backbone, in memory and in BENCH_CACHE/block_counts.json; by default the backbone is
    built at its minimum size with random weights, which takes about a second.
    """
    if backbone in _BLOCK_COUNTS:
        return _BLOCK_COUNTS[backbone]
    from bench.models import blocks, check_size, get_backbone

    spec = get_backbone(backbone)
    stamp = _block_stamp(backbone)
    path = cache_dir() / BLOCK_CACHE_FILE
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
        entry = stored.get(backbone, {})
        if entry.get("stamp") == stamp and _is_int(entry.get("blocks")):
            _BLOCK_COUNTS[backbone] = entry["blocks"]
            return entry["blocks"]
    except (OSError, ValueError, AttributeError):
        stored = {}

    side = spec.min_size if size is None else check_size(spec, size)
    base = spec.build((side, side, 3), None)
    n = len(blocks(base))
    del base
    _BLOCK_COUNTS[backbone] = n
    _store_count(path, backbone, {"blocks": n, "stamp": stamp})
    return n


def _store_count(path: Path, backbone: str, entry: dict[str, Any]) -> None:
    # Several workers may share BENCH_CACHE: read-modify-write to a temporary file, then an
    # atomic rename. Losing a concurrent update only costs a rebuild later.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(stored, dict):
                stored = {}
        except (OSError, ValueError):
            stored = {}
        stored[backbone] = entry
        write_text_atomic(path, json.dumps(stored, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only cache only means counting again next time
