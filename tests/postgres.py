"""A real PostgreSQL server for tests, started once per test session on 127.0.0.1.

Use it from a test module with ``pytest_plugins = ["tests.postgres"]`` (pytest registers the
plugin once however many modules name it) and a ``postgres_url`` argument. Importing the fixture
instead also works: the server is a module-level singleton, so two modules never start two.

The server runs from Debian's binaries (``/usr/lib/postgresql/<version>/bin``) or any on PATH;
when there are none, as root (CI on Debian) ``ensure_postgres_binaries`` installs Debian's
``postgresql`` package, and as any other user it uses the self-contained server of the ``pgserver``
wheel (the dev extra installs it), so ``make test`` needs no root. ``.ci/run`` can call it ahead of
the tests with ``python -m tests.postgres``. Anything missing makes the tests FAIL with the fix,
never skip: a skipped database test hides a broken storage. PostgreSQL refuses to run as root, so
as root it runs as the ``postgres`` user (which Debian's package creates).
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.apt import apt_install

USER = "bench"
PASSWORD = "secret"
DATABASE = "bench"
SYSTEM_USER = "postgres"  # made by Debian's postgresql-common; the server's owner when we are root

# Durability is pointless for a throwaway server; these settings make it start and commit fast.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
}


class PostgresUnavailable(RuntimeError):
    """The server cannot be had here; the message says what to install."""


def find_postgres_bin() -> Path | None:
    """The newest directory holding both ``initdb`` and ``pg_ctl``, or None."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)] or [0],
        reverse=True,
    )
    # Other systems (Homebrew, Fedora) put them on PATH.
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).parent)
    for bin_dir in candidates:
        if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            return bin_dir
    return None


def pgserver_bin() -> Path | None:
    """The server binaries bundled in the ``pgserver`` wheel (found without importing it), or None."""
    spec = importlib.util.find_spec("pgserver")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        bin_dir = Path(folder) / "pginstall" / "bin"
        if (bin_dir / "initdb").is_file() and (bin_dir / "pg_ctl").is_file():
            return bin_dir
    return None


def ensure_postgres_binaries() -> Path:
    """The PostgreSQL bin directory: the system's; else, as root, Debian's package installed now;
    else the ``pgserver`` wheel's (no root needed)."""
    found = find_postgres_bin()
    if found:
        return found
    # As root the server must run as another user, which Debian's package creates: install it.
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        bundled = pgserver_bin()
        if bundled is not None and os.geteuid() != 0:
            return bundled
        raise PostgresUnavailable(
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed. Without root: pip install "
            "pgserver (make test's dev extra does); with root: sudo apt-get install postgresql"
        )
    found, problem = apt_install("postgresql", find_postgres_bin)
    if problem:
        raise PostgresUnavailable(problem)
    if not found:
        raise PostgresUnavailable("apt-get installed postgresql but no initdb/pg_ctl is under /usr/lib/postgresql")
    return found


def require_psycopg2() -> None:
    try:
        import psycopg2  # noqa: F401
    except ImportError as err:
        raise PostgresUnavailable(
            f"psycopg2 is not installed ({err}). Install it: pip install -e '.[postgres]'"
        ) from None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    bin_dir: Path
    base: Path  # owns everything: data dir, socket, log, password file
    port: int = 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def log(self) -> Path:
        return self.base / "server.log"

    def _run(self, *command: str) -> subprocess.CompletedProcess[str]:
        command = (str(self.bin_dir / command[0]), *command[1:])
        if os.geteuid() == 0:
            if shutil.which("runuser"):
                command = ("runuser", "-u", SYSTEM_USER, "--", *command)
            else:
                command = ("su", SYSTEM_USER, "-s", "/bin/sh", "-c", shlex.join(command))
        return subprocess.run(
            command, check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120
        )

    def _check(self, done: subprocess.CompletedProcess[str], what: str) -> None:
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise PostgresUnavailable(f"{what} failed ({done.returncode}): {done.stdout}{done.stderr}\n{log}")

    def initdb(self) -> None:
        password_file = self.base / "password"
        password_file.write_text(PASSWORD + "\n")
        _give_to_owner(password_file)
        done = self._run(
            "initdb", "-D", str(self.base / "data"), "-U", USER, f"--pwfile={password_file}",
            "--auth=scram-sha-256", "--encoding=UTF8", "--no-locale", "--no-sync", "--no-instructions",
        )  # fmt: skip
        self._check(done, "initdb")

    def start(self) -> None:
        # A port found free can be taken before the server binds it: try a few.
        for _attempt in range(3):
            self.port = _free_port()
            settings = {**SERVER_SETTINGS, "port": str(self.port), "unix_socket_directories": str(self.base)}
            options = " ".join(f"-c {key}={value}" for key, value in settings.items())
            done = self._run(
                "pg_ctl", "-D", str(self.base / "data"), "-l", str(self.log), "-w", "-t", "60", "-o", options, "start"
            )
            if done.returncode == 0:
                self._create_database()
                return
            self._pg_ctl_stop()  # in case it came up after pg_ctl stopped waiting
            if not self.log.exists() or "already in use" not in self.log.read_text(errors="replace"):
                break
        self._check(done, "pg_ctl start")

    def _create_database(self) -> None:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, password=PASSWORD, dbname="postgres")
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{DATABASE}"')
        finally:
            connection.close()

    def _pg_ctl_stop(self) -> None:
        if (self.base / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.base / "data"), "-m", "immediate", "-w", "stop")

    def stop(self) -> None:
        self._pg_ctl_stop()
        shutil.rmtree(self.base, ignore_errors=True)
        if self in _started:
            _started.remove(self)


def _give_to_owner(path: Path) -> None:
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresUnavailable(
                f"running as root but there is no '{SYSTEM_USER}' user to run PostgreSQL as "
                "(it refuses root). Install Debian's postgresql package: apt-get install postgresql"
            ) from None
        os.chown(path, owner.pw_uid, owner.pw_gid)


_lock = threading.Lock()
_server: PostgresServer | None = None
_users = 0
_started: list[PostgresServer] = []  # every server this process started, stopped at exit at the latest


def start_server(bin_dir: Path | None = None) -> PostgresServer:
    """A new server from ``bin_dir`` (default: ``ensure_postgres_binaries``); ``stop`` it when done."""
    require_psycopg2()
    if os.geteuid() == 0:
        ensure_postgres_binaries()  # as root, whichever binaries: Debian's package makes the user to run them as
    bin_dir = bin_dir or ensure_postgres_binaries()
    # Not under pytest's tmp dir: that is 0700 root's, which the postgres user cannot enter.
    base = Path(tempfile.mkdtemp(prefix="bench-postgres-", dir="/tmp" if os.geteuid() == 0 else None))
    server = PostgresServer(bin_dir, base)
    _started.append(server)
    try:
        _give_to_owner(base)
        server.initdb()
        server.start()
    except BaseException:
        server.stop()
        raise
    return server


def acquire() -> PostgresServer:
    """The session's server, started on first use; pair every call with ``release``."""
    global _server, _users
    with _lock:
        if _server is None:
            _server = start_server()
        _users += 1
        return _server


def release() -> None:
    global _users
    with _lock:
        _users -= 1
        if _users <= 0:
            _stop_locked()


def _stop_locked() -> None:
    global _server, _users
    if _server is not None:
        _server.stop()
    _server, _users = None, 0


@atexit.register
def _stop_all() -> None:
    """A session that ends without running finalizers (or a failed start) leaves no server behind."""
    while _started:
        _started.pop().stop()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """``postgresql+psycopg2://bench:secret@127.0.0.1:PORT/bench`` on a real server; tests share it,
    so each should use its own study names."""
    try:
        server = acquire()
    except PostgresUnavailable as err:
        problem = str(err)
    else:
        problem = ""
    if problem:  # failed outside the except block, so pytest shows the fix, not a chained traceback
        pytest.fail(problem, pytrace=False)
    try:
        yield server.url
    finally:
        release()


if __name__ == "__main__":  # `python -m tests.postgres`: install the server binaries for CI
    print(f"PostgreSQL binaries: {ensure_postgres_binaries()}")
