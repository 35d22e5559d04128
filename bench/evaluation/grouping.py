"""Rows by any factor: the searched parameters that the leaderboard and ``bench final`` group trials by.

``--by backbone`` (the default) keeps one entry per backbone, named by the backbone alone, as bench
always has: file names, final.json keys and tables are unchanged. ``--by backbone,weights`` keeps one
per combination ("ResNet50 from scratch vs ResNet50 ImageNet"), each the best trial by CV within it.
An entry has a label for people ("resnet50 · imagenet") and a file-safe slug for its model and
figure files ("resnet50__weights-imagenet"); a weights *file* shows as its file name.

``Entry`` is that identity, one object for every writer and reader: ``key`` (the slug: file names,
final.json's keys and the ``entry`` column of every held-out CSV), ``label`` (display), ``backbone``
(the backbone's name, always the ``backbone`` column) and ``factors`` (one column per ``--by``
parameter, so ``df.groupby("weights")`` needs no parsing of the label).

This module knows configurations (plain dicts) only: both the report and ``bench final`` use it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import ConfigError

DEFAULT_BY = ("backbone",)
SEPARATOR = " · "


def parse_by(text: str) -> tuple[str, ...]:
    """``"backbone, weights"`` -> ``("backbone", "weights")``: names in order, each once."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise ValueError(f"must name one or more parameters separated by commas (e.g. backbone,weights), "
                         f"got {text!r}")
    return names


def display_value(name: str, value: Any) -> str:
    """A parameter's value as a reader wants it: None as "none", a weights file by its file name."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if name == "weights" and isinstance(value, str) and value != "imagenet":
        return Path(value).name
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


@dataclass(frozen=True)
class Entry:
    """One leaderboard entry (a refit of ``bench final``): what every file and table names it by."""

    key: str
    label: str
    backbone: str
    factors: tuple[tuple[str, str], ...] = ()

    @property
    def columns(self) -> dict[str, str]:
        """The identity columns every held-out row carries: ``entry``, ``backbone`` and each factor."""
        return {"entry": self.key, "backbone": self.backbone, **dict(self.factors)}

    def record(self) -> dict[str, Any]:
        """What final.json keeps of the identity (``from_final`` reads it back)."""
        return {"backbone": self.backbone, "label": self.label, "factors": dict(self.factors)}

    @classmethod
    def from_final(cls, key: str, info: Mapping[str, Any]) -> Entry:
        """The entry of a final.json record; records written before ``factors`` existed derive them from
        their ``by`` and label (a ``--by`` entry) or are their backbone's (the default)."""
        backbone = str(info.get("backbone") or key)
        label = str(info.get("label") or backbone)
        factors = info.get("factors")
        if not factors:
            by = list(info.get("by") or DEFAULT_BY)
            values = label.split(SEPARATOR) if len(by) > 1 else [backbone if by == ["backbone"] else label]
            factors = dict(zip(by, values)) if len(values) == len(by) else {"backbone": backbone}
        return cls(key, label, backbone, tuple((str(k), str(v)) for k, v in factors.items()))


@dataclass(frozen=True)
class Grouping:
    """How trials are grouped into entries (rows of a table, refits of ``bench final``)."""

    by: tuple[str, ...] = DEFAULT_BY

    @property
    def is_default(self) -> bool:
        return self.by == DEFAULT_BY

    @property
    def title(self) -> str:
        """The column header of the entries: "backbone", "backbone · weights"."""
        return SEPARATOR.join(self.by)

    @property
    def noun(self) -> str:
        """What one entry is, for captions: "backbone", "backbone · weights combination"."""
        return self.by[0] if len(self.by) == 1 else f"{self.title} combination"

    def values(self, config: Mapping[str, Any]) -> tuple[str, ...]:
        return tuple(display_value(n, config.get(n)) for n in self.by)

    def label(self, config: Mapping[str, Any]) -> str:
        return SEPARATOR.join(self.values(config))

    def slug(self, config: Mapping[str, Any]) -> str:
        """The entry's name in file names and final.json: the backbone alone by default (as always)."""
        if self.is_default:
            return str(config.get("backbone"))
        return "__".join(_file_safe(v) if n == "backbone" else f"{n}-{_file_safe(v)}"
                         for n, v in zip(self.by, self.values(config)))

    def entry(self, config: Mapping[str, Any]) -> Entry:
        """The identity of the entry ``config`` (a trial's configuration) belongs to."""
        return Entry(self.slug(config), self.label(config), str(config.get("backbone")),
                     tuple(zip(self.by, self.values(config))))

    def check(self, available: Iterable[str], where: str) -> None:
        """Every name must be a parameter of the trials' configurations; the error lists those there are."""
        have = sorted(set(available))
        unknown = [n for n in self.by if n not in have]
        if unknown:
            raise ConfigError(f"--by {','.join(unknown)}: not a parameter of the trials in {where}. The trials' "
                              f"parameters are: {', '.join(have) or 'none (no finished trial)'}. "
                              f"Example: --by backbone,weights.")


def entries(grouping: Grouping, configs: Iterable[tuple[int, Mapping[str, Any]]]) -> dict[str, int]:
    """The first trial of each entry, keyed by slug, from ``(trial, config)`` pairs best first.

    Two different combinations with one slug (two weights files of the same name in different
    folders) would overwrite each other's files: that is an error naming both.
    """
    chosen: dict[str, int] = {}
    seen: dict[str, tuple[Any, ...]] = {}
    for trial, config in configs:
        slug = grouping.slug(config)
        raw = tuple(str(config.get(n)) for n in grouping.by)
        if slug in seen and seen[slug] != raw:
            raise ConfigError(f"--by {','.join(grouping.by)}: the combinations {seen[slug]} and {raw} share the "
                              f"name {slug!r} (files of the same name?); rename one of the files.")
        seen.setdefault(slug, raw)
        chosen.setdefault(slug, int(trial))
    return chosen
