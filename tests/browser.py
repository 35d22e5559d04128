"""Headless Chromium for tests: screenshot a page, dump its rendered DOM, collect its console errors.

Uses the browser named by ``BENCH_CHROMIUM``, else the system's Chromium or Chrome (Debian's
``/usr/bin/chromium``, or ``chromium``, ``chromium-browser``, ``google-chrome`` on PATH). When there
is none, as root it installs Debian's package (``apt-get update && apt-get install -y chromium``);
otherwise, or if that is impossible, the helper FAILS the test with the command that fixes it (a
browser test that silently skips checks nothing).
The browser runs with networking features off and a throw-away profile, so the only thing it
can load is the file it is given.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.apt import apt_install

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")
INSTALL_HINT = "apt-get update && apt-get install -y chromium"
BROWSER_ENV = "BENCH_CHROMIUM"  # a Chromium or Chrome binary to use instead of looking for one
BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> Path | None:
    """``BENCH_CHROMIUM``, else the system's Chromium or Chrome, or None."""
    named = os.environ.get(BROWSER_ENV)
    if named:
        return Path(named)
    if CHROMIUM.exists():
        return CHROMIUM
    found = next((p for name in BROWSER_NAMES if (p := shutil.which(name))), None)
    return Path(found) if found else None


def chromium() -> Path:
    """The browser binary, installing Debian's Chromium as root if needed; fails the test if it cannot."""
    found = find_browser()
    if found is not None:
        if not found.is_file():
            pytest.fail(f"{BROWSER_ENV}={found} is not a file: point it at a Chromium or Chrome binary.", pytrace=False)
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.fail(f"No Chromium or Chrome found ({CHROMIUM}, {', '.join(BROWSER_NAMES)} on PATH). Install one "
                    f"(Debian: sudo {INSTALL_HINT}) or set {BROWSER_ENV} to a Chromium or Chrome binary.",
                    pytrace=False)
    installed, problem = apt_install("chromium", lambda: CHROMIUM if CHROMIUM.exists() else None)
    if problem:
        pytest.fail(f"Installing Chromium failed: {problem}. Install it by hand (as root): {INSTALL_HINT}", pytrace=False)
    if installed is None:
        pytest.fail(f"apt-get installed chromium but {CHROMIUM} is still missing.", pytrace=False)
    return CHROMIUM


@dataclass
class Page:
    screenshot: Path
    dom: str
    log: str  # Chromium's stderr with --enable-logging=stderr: console messages and errors

    def console_errors(self) -> list[str]:
        """JavaScript errors and console.error lines Chromium logged for the page.

        Chromium logs page console messages as ``...:INFO:CONSOLE:<level>] "message", source: ...``
        (older versions ``CONSOLE(<line>)``); level 3 is an error, and uncaught exceptions say
        "Uncaught". Chromium's own complaints (D-Bus, GPU) are not the page's and are ignored.
        """
        errors = []
        for line in self.log.splitlines():
            if "CONSOLE" not in line:
                continue
            if ":CONSOLE:3]" in line or "ERROR:CONSOLE" in line or "Uncaught" in line:
                errors.append(line)
        return errors


def _run(args: list[str], profile: Path, timeout: float) -> subprocess.CompletedProcess:
    cmd = [str(chromium()), *FLAGS, f"--user-data-dir={profile}", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"Chromium did not finish within {timeout:.0f} s: {' '.join(cmd)}", pytrace=False)
        raise err  # unreachable, for type checkers


def open_page(html: Path, out_dir: Path, *, width: int = 1400, height: int = 3000, timeout: float = 120) -> Page:
    """Render ``html`` headless: a screenshot, the DOM after scripts ran, and the browser's log."""
    url = Path(html).resolve().as_uri()
    out_dir.mkdir(parents=True, exist_ok=True)
    shot = out_dir / "screenshot.png"
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        logging = ["--enable-logging=stderr", "--v=0"]
        first = _run([*logging, f"--screenshot={shot}", f"--window-size={width},{height}", url], Path(profile), timeout)
        if not shot.exists():
            pytest.fail(f"Chromium wrote no screenshot (exit {first.returncode}): {first.stderr[-2000:]}",
                        pytrace=False)
        second = _run([*logging, "--dump-dom", url], Path(profile), timeout)
        if second.returncode != 0 or "<html" not in second.stdout:
            pytest.fail(f"Chromium --dump-dom failed (exit {second.returncode}): {second.stderr[-2000:]}",
                        pytrace=False)
    return Page(shot, second.stdout, first.stderr + "\n" + second.stderr)
