"""``bench perf``: measurements that run the same work two ways on this machine and print ratios.

Each measurement lives in its own module of this package and registers itself with
``register_perf``; importing the package registers them all.
"""

from bench.perf._registry import (
    MEASUREMENTS,
    Measurement,
    PerfOptions,
    PerfRow,
    register_perf,
)

__all__ = ["MEASUREMENTS", "Measurement", "PerfOptions", "PerfRow", "register_perf"]
