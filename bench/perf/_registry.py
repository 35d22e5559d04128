"""The registry of ``bench perf`` measurements: each runs the same work two ways and gives ratios.

A measurement is a function registered under a name; it receives the shared ``PerfOptions`` and
returns one or more ``PerfRow``. Rows compare two ways of doing one job on this machine (``ratio``
= seconds of the slow way / seconds of the fast way, or a measured figure against a target), so a
table of them stays meaningful on any machine: perf never asserts an absolute time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class PerfOptions:
    """What every measurement may read: the dataset to use, the seed and how quick to be."""

    dataset: str = "pneumonia-demo"
    quick: bool = False  # smaller sizes, for tests: the same code path, not the same figures
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PerfRow:
    measurement: str  # the registry name
    what: str  # one line: the job measured and its settings
    baseline: str  # the slower / reference way
    bench: str  # bench's way
    baseline_value: float  # seconds, or the measured figure when unit is not "s"
    bench_value: float
    unit: str = "s"
    target: str = ""  # e.g. ">= 20x" or "< 8 GiB"
    met: bool | None = None  # None: no target
    note: str = ""

    @property
    def ratio(self) -> float:
        """How many times faster bench's way is (baseline / bench); NaN when not comparable."""
        if self.unit != "s" or self.bench_value <= 0:
            return float("nan")
        return self.baseline_value / self.bench_value

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


Measurement = Callable[[PerfOptions], list[PerfRow]]
MEASUREMENTS: dict[str, Measurement] = {}


def register_perf(name: str) -> Callable[[Measurement], Measurement]:
    """Register a measurement under ``name`` (the order of registration is the table's order)."""

    def decorate(fn: Measurement) -> Measurement:
        if name in MEASUREMENTS:
            raise ValueError(f"perf measurement '{name}' registered twice")
        MEASUREMENTS[name] = fn
        return fn

    return decorate
