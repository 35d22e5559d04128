"""Debian packages the tests install as root (PostgreSQL, Chromium), one apt-get at a time.

`make test` runs two pytest workers: two fixtures installing at once would have the second
apt-get fail on dpkg's lock. A file lock serialises them, and the caller looks again for what it
needs once it holds the lock (the other worker may have installed it meanwhile).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from filelock import FileLock

T = TypeVar("T")
LOCK = Path(tempfile.gettempdir()) / "bench-tests-apt.lock"


def apt_install(package: str, found: Callable[[], T | None], timeout: float = 900) -> tuple[T | None, str]:
    """``found()`` if it already finds the package's files, else ``apt-get update && apt-get
    install -y PACKAGE`` then ``found()`` again. Returns (what found() gave, "" or the failure)."""
    with FileLock(str(LOCK), timeout=2 * timeout):
        have = found()
        if have is not None:
            return have, ""
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", package]):
            try:
                done = subprocess.run(command, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                                      timeout=timeout, check=False)
            except (OSError, subprocess.TimeoutExpired) as err:
                return None, f"`{' '.join(command)}` failed: {err}"
            if done.returncode != 0:
                tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
                return None, f"`{' '.join(command)}` failed ({done.returncode}):\n{tail}"
        return found(), ""
