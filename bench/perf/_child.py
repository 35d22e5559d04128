"""Run ``bench`` as a child process in its own runs and cache folders: wall seconds, peak RSS.

Measurements that time a whole command run it this way so that what is timed is what a user
runs (start-up, data preparation, cache building and all), in folders that start empty.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SAMPLE_SECONDS = 0.2


@dataclass(frozen=True)
class ChildRun:
    seconds: float
    peak_rss_bytes: int  # the largest sum of RSS over the child's process tree seen while sampling


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(pid: int) -> int:
    """RSS of ``pid`` and all its descendants (Linux /proc; pages shared between them count once
    per process, so this is an upper bound of what the tree holds)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += _rss_bytes(p)
        todo += _children(p)
    return total


def run_bench(args: list[str], workdir: Path, *, sample_rss: bool = False, env: dict[str, str] | None = None) -> ChildRun:
    """``python -m bench ARGS`` with BENCH_RUNS and BENCH_CACHE under ``workdir`` (and ``env`` on
    top of this process's environment); raises with the tail of its output if it fails."""
    if sample_rss and not Path("/proc/self/status").exists():
        raise RuntimeError("peak RSS sampling reads /proc: Linux only")
    env = {**os.environ, **(env or {}), "BENCH_RUNS": str(workdir / "runs"), "BENCH_CACHE": str(workdir / "cache")}
    log = workdir / "child.log"
    peak = [0]
    t0 = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen([sys.executable, "-m", "bench", *args, "--offline"], stdout=out,
                                 stderr=subprocess.STDOUT, env=env)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(SAMPLE_SECONDS):
                peak[0] = max(peak[0], tree_rss(child.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        if sample_rss:
            sampler.start()
        code = child.wait()
        done.set()
    seconds = time.perf_counter() - t0
    if sample_rss:
        sampler.join()
    if code != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"bench {' '.join(args[:1])} exited {code}:\n{tail}")
    return ChildRun(seconds, peak[0])
