"""Source kinds whose images are not image files in a folder, and what each does instead.

Most datasets are image files (kinds embedded, local, archive): the index walks a folder, the
cache decodes each file, `bench fetch` downloads and unpacks an archive. A kind that stores its
pixels some other way registers a ``Source`` here, with its own answer to each question the rest
of bench asks of a dataset: where it lives (``root``), what its index is (``build_index``, whose
``pixels`` tell the cache how to read it), what `bench datasets` says about it (``location``)
and how `bench fetch` gets it (``fetch``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.data.index import DatasetIndex, build_folder_index
from bench.data.spec import DatasetSpec


@dataclass(frozen=True)
class Source:
    kind: str
    root: Callable[[DatasetSpec], Path]
    build_index: Callable[[DatasetSpec, Path], DatasetIndex]
    location: Callable[[DatasetSpec], tuple[str, int | None]]  # (what to show, images found or None)
    fetch: Callable[..., str]  # fetch(spec, size=..., progress=...) -> a line to print


# Filled by ``register_source`` in each kind's module; ``bench/data/__init__.py`` imports them, so
# this registry imports none of its plugins.
SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> Source:
    SOURCES[source.kind] = source
    return source


def special_source(kind: str) -> Source | None:
    """The ``Source`` of ``kind``, or None for image files in a folder (handled by index/cache/fetch)."""
    return SOURCES.get(kind)


def build_index(spec: DatasetSpec, root: Path) -> DatasetIndex:
    """List a dataset's images with labels, groups and official test membership, whatever its kind."""
    source = special_source(spec.source.kind)
    if source is not None:
        return source.build_index(spec, root)
    return build_folder_index(spec, root)
