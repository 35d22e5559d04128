"""Where a study lives: one ``--storage`` spec, opened the same way by every ``bench run`` worker.

Kinds (the ``_KINDS`` table, keyed by URL scheme):

=================================================  ============================================
spec                                               storage
=================================================  ============================================
(none)                                             SQLite file ``<run dir>/study.db``
``sqlite:///path/study.db`` or ``path/x.db``       SQLite file anywhere (one machine)
``postgresql://user@host:5432/db``                 PostgreSQL, several machines; needs
(``postgresql+psycopg2://...`` names the driver)   ``pip install 'bench[postgres]'``
``mysql://user@host/db``                           MySQL / MariaDB; needs a driver
``journal:PATH``, ``PATH.log``, ``PATH.journal``   Optuna journal file (one machine, or a shared
                                                   file system with atomic symlinks)
=================================================  ============================================

Passwords. A password typed into a URL ends up in shell history, ``ps`` and CI logs, so there
are two other ways: ``BENCH_STORAGE_PASSWORD`` is used for any database when the URL names a
user but no password, and for PostgreSQL libpq itself reads ``PGPASSWORD`` and ``~/.pgpass``.
Nothing this module prints, returns as text or raises contains a password (``redact``). The
storage object keeps the full URL in ``.url`` because Optuna needs it to reconnect after the
storage is pickled into a worker; its ``repr`` shows it redacted.

Crashed workers. RDB storages record a heartbeat of each running trial every
``heartbeat_interval`` seconds. A trial whose last heartbeat is older than ``grace_period``
(Optuna's default: twice the interval) is marked FAIL by the next worker that starts a trial
(``Study.optimize`` calls ``optuna.storages.fail_stale_trials``) and queued again as WAITING
with the same parameters, at most ``max_retry`` times. Optuna 5.0's ``JournalStorage`` has no
heartbeat: a trial whose worker was killed stays RUNNING for good. A budget counted in COMPLETE
trials still ends (``bench status`` shows the trial as running); one that also counts RUNNING
trials waits for it forever. Use PostgreSQL or SQLite when workers may be killed; ``supports_heartbeat`` tells which case a storage is
in. The settings are passed to ``JournalStorage`` as soon as an Optuna version accepts them.

Torn journals. A process killed while appending to a journal leaves a last line without its
newline; Optuna then fails to replay the file and appends the next record onto that line, which
damages it for good. ``repair_torn_journal`` runs first, under the journal's lock: it keeps the
file as ``FILE.torn-<time>``, cuts it back to its last complete record and says so.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import random
import re
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import optuna
import sqlalchemy.exc
from optuna.storages import BaseStorage, InMemoryStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import URL, make_url

from bench.atomic import cut_back
from bench.errors import ConfigError, close_matches

log = logging.getLogger(__name__)

PASSWORD_ENV = "BENCH_STORAGE_PASSWORD"
DEFAULT_FILE = "study.db"
JOURNAL_PREFIX = "journal:"
# A worker that died mid-trial is usually a preempted or killed machine, worth one more try;
# a configuration that kills its worker every time should not eat the whole budget.
DEFAULT_MAX_RETRY = 2

__all__ = [
    "DEFAULT_FILE",
    "PASSWORD_ENV",
    "RedactedRDBStorage",
    "StudyStatus",
    "describe_storage",
    "list_studies",
    "open_storage",
    "redact",
    "storage_file",
    "supports_heartbeat",
    "torn_journal",
]


# --------------------------------------------------------------------------- redaction

_PASSWORD_KEYS = frozenset({"password", "passwd", "pwd"})
_USERINFO_PASSWORD = re.compile(r"(://[^/:@\s]*:)\S*@")
_QUERY_PASSWORD = re.compile(r"([?&](?:password|passwd|pwd)=)[^&\s]*", re.IGNORECASE)


def redact(url: str) -> str:
    """``url`` with any password (in the user part or a ``password=`` query) replaced by ``***``."""
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # ValueError: a port that is not a number
        return _QUERY_PASSWORD.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1***@", url))
    if any(key.lower() in _PASSWORD_KEYS for key in parsed.query):
        query = {k: ("***" if k.lower() in _PASSWORD_KEYS else v) for k, v in parsed.query.items()}
        parsed = parsed.set(query=query)
    # render_as_string percent-encodes the *** it puts in a query; show it as typed.
    return parsed.render_as_string(hide_password=True).replace("=%2A%2A%2A", "=***")


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    """Driver messages are not ours: remove any secret from them, raw or percent-encoded."""
    for secret in secrets:
        text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return text


def _secrets(url: URL) -> tuple[str, ...]:
    found = [url.password] + [v for k, v in url.query.items() if k.lower() in _PASSWORD_KEYS]
    flat = [v for item in found for v in ((item,) if isinstance(item, str) else item or ())]
    return tuple(s for s in flat if s)


class RedactedRDBStorage(RDBStorage):
    """Optuna's RDBStorage, whose ``repr``/``str`` show the URL without its password."""

    def __repr__(self) -> str:
        return f"RDBStorage({redact(self.url)!r})"


# --------------------------------------------------------------------------- kinds of storage


@dataclass(frozen=True)
class _Heartbeat:
    interval: int
    grace: int | None
    max_retry: int


@dataclass(frozen=True)
class _Kind:
    open: Callable[[str, _Kind, _Heartbeat, bool], BaseStorage]  # (target, kind, heartbeat, repair)
    # what to check when the storage cannot be opened
    hint: str
    # create_engine settings that make the database safe for several worker processes
    engine_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # the driver a URL without "+driver" gets, where SQLAlchemy's own choice is not ours
    default_driver: str | None = None


@dataclass(frozen=True)
class _Driver:
    install: str
    # applied unless the URL's query sets the same key
    connect_args: Mapping[str, Any] = field(default_factory=dict)


# Keyed by SQLAlchemy's driver name (``postgresql://`` means psycopg2, ``mysql://`` mysqldb).
# Connect timeouts: a firewalled host otherwise hangs for minutes before saying anything.
_DRIVERS: dict[str, _Driver] = {
    # SQLite's busy timeout: several workers on one file wait for the write lock, not fail.
    "pysqlite": _Driver("nothing to install: it is Python's own sqlite3", {"timeout": 60}),
    "psycopg2": _Driver("pip install 'bench[postgres]'", {"connect_timeout": 10}),
    "psycopg": _Driver("pip install 'psycopg[binary]'", {"connect_timeout": 10}),
    "mysqldb": _Driver(
        "pip install mysqlclient (or write mysql+pymysql:// and pip install pymysql)",
        {"connect_timeout": 10},
    ),
    "pymysql": _Driver("pip install pymysql", {"connect_timeout": 10}),
}

_SERVER_HINT = (
    "Check that the server is running and reachable, the database exists, and the user and "
    f"password are right (password from the URL, {PASSWORD_ENV}, or for PostgreSQL PGPASSWORD "
    "or ~/.pgpass)."
)


# Workers on several machines started together all find an empty database and create Optuna's
# tables at once; the losers fail with "already exists" (PostgreSQL: a duplicate key; SQLite:
# a UNIQUE constraint on alembic_version, or a lock). The tables are then there: try again.
_SCHEMA_RACE = ("already exists", "duplicate key value violates unique constraint", "UNIQUE constraint failed",
                "database is locked")


def _create_rdb(url: URL, engine_kwargs: dict[str, Any], heartbeat: _Heartbeat, attempts: int = 6) -> BaseStorage:
    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                # The heartbeat is a deliberate choice; Optuna's "experimental" notice is noise to users.
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RedactedRDBStorage(
                    _as_template(url.render_as_string(hide_password=False)),
                    engine_kwargs=engine_kwargs,
                    **_heartbeat_kwargs(RDBStorage, heartbeat),
                )
        except sqlalchemy.exc.SQLAlchemyError as err:
            if attempt == attempts - 1 or not any(s in str(err) for s in _SCHEMA_RACE):
                raise
            time.sleep(0.5 + random.random() * (attempt + 1))
    raise AssertionError("unreachable")


def _open_rdb(url_text: str, kind: _Kind, heartbeat: _Heartbeat, repair: bool = True) -> BaseStorage:
    # ``repair`` is for journals: a database's writes are transactions, never torn.
    try:
        url = make_url(url_text)
    except (sqlalchemy.exc.ArgumentError, ValueError) as err:
        raise ConfigError(
            f"storage URL {redact(url_text)!r} cannot be parsed ({_scrub(str(err), ())}). "
            "Write it as dialect://user@host:port/database, e.g. postgresql://bench@db:5432/bench."
        ) from None
    if url.username and url.password is None and os.environ.get(PASSWORD_ENV):
        url = url.set(password=os.environ[PASSWORD_ENV])
    if "+" not in url.drivername and kind.default_driver:
        url = url.set(drivername=f"{url.drivername}+{kind.default_driver}")
    secrets = _secrets(url)
    shown = redact(url.render_as_string(hide_password=False))
    driver_name = url.get_driver_name()  # loads the dialect class, not its driver
    driver = _DRIVERS.get(driver_name, _Driver(f"install the Python package of the '{driver_name}' driver"))
    engine_kwargs = dict(kind.engine_kwargs)
    connect_args = {k: v for k, v in driver.connect_args.items() if k not in url.query}
    if connect_args:
        engine_kwargs["connect_args"] = connect_args
    try:
        return _create_rdb(url, engine_kwargs, heartbeat)
    except ImportError as err:
        # Optuna re-raises the driver's ImportError with a generic message; the cause names it.
        reason = _scrub(_one_line(err.__cause__ or err), secrets)
        raise ConfigError(
            f"storage {shown}: its database driver '{driver_name}' is not installed ({reason}). "
            f"Install it: {driver.install}"
        ) from None
    except sqlalchemy.exc.ArgumentError as err:  # NoSuchModuleError: postgresql+nosuchdriver://
        raise ConfigError(
            f"storage {shown}: {_scrub(_one_line(err), secrets)}. Use one of "
            "sqlite:///path, postgresql://..., postgresql+psycopg2://..., mysql://..."
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = _scrub(_one_line(getattr(err, "orig", None) or err), secrets)
        end = "" if reason.endswith(("?", "!")) else "."
        raise ConfigError(f"cannot open storage {shown}: {reason}{end} {kind.hint}") from None
    except RuntimeError as err:  # Optuna's table schema check: a database made by another version
        raise ConfigError(
            f"storage {shown} was made by another Optuna version "
            f"({_scrub(_one_line(err), secrets)}). Upgrade it: optuna storage upgrade --storage URL"
        ) from None


def _end_of_last_record(data: bytes) -> int | None:
    """Where the last complete, parseable record of a journal ends; None if nothing there is one.

    Optuna appends records as JSON lines in one write, so a writer killed mid-write leaves a last
    line without its newline; a later append glued onto that line makes it a complete line that
    does not parse. Either is dropped; anything further back is real damage, not a torn write.
    """

    def parses(start: int, end: int) -> bool:
        try:
            json.loads(data[start:end])
        except ValueError:
            return False
        return True

    end = data.rfind(b"\n") + 1
    start = data.rfind(b"\n", 0, max(end - 1, 0)) + 1
    if end and not parses(start, end):
        end = start
        start = data.rfind(b"\n", 0, max(end - 1, 0)) + 1
    return end if end and parses(start, end) else None


def repair_torn_journal(path: Path) -> Path | None:
    """Cut a journal back to its last complete record; return the copy kept of the torn file, if any.

    Runs under the journal's own lock (the one Optuna's writers take), so a record another process
    is writing right now is never mistaken for a torn one.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        end = _end_of_last_record(data)
        if end is None or end == len(data):  # intact, or not a journal at all (Optuna says so)
            return None
        copy = cut_back(path, end)
    finally:
        lock.release()
    log.warning("%s ended in an incomplete record (a writer was killed mid-write): cut back to its last "
                "complete record, dropping %d byte(s); the file as it was is kept as %s",
                path, len(data) - end, copy)
    return copy


def torn_journal_bytes(path: Path) -> int:
    """How many bytes at the end of a journal a repair would cut (0: intact, empty or not a journal).

    A read-only look: what ``bench status`` reports instead of repairing.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    data = path.read_bytes()
    end = _end_of_last_record(data)
    return 0 if end is None else len(data) - end


def torn_journal(spec: str) -> tuple[Path, int] | None:
    """(journal file, bytes of its torn tail) when ``spec`` names a journal whose last record is torn."""
    scheme, target = _classify(spec.strip())
    if scheme != "journal":
        return None
    path = Path(target).expanduser().resolve()
    torn = torn_journal_bytes(path)
    return (path, torn) if torn else None


def _open_journal(path_text: str, kind: _Kind, heartbeat: _Heartbeat, repair: bool = True) -> BaseStorage:
    path = Path(path_text).expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if repair:  # before Optuna replays it: it would append its next record onto the torn line
            repair_torn_journal(path)
        # Without repair (a reader), Optuna's replay skips a torn last line by itself.
        backend = JournalFileBackend(str(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return JournalStorage(backend, **_heartbeat_kwargs(JournalStorage, heartbeat))
    except OSError as err:
        raise ConfigError(f"cannot open journal file {path}: {err.strerror or err}. {kind.hint}") from None
    except ValueError as err:  # replaying a file that is not a journal (or is damaged mid-file)
        raise ConfigError(
            f"{path} is not a readable Optuna journal ({_one_line(err)}). Give a new file name, "
            "or the journal an earlier `bench run` wrote."
        ) from None


_KINDS: dict[str, _Kind] = {
    "sqlite": _Kind(_open_rdb, "Check that the file's folder exists and is writable."),
    # SQLAlchemy 2.1 gives a bare postgresql:// psycopg 3; bench's postgres extra installs psycopg2.
    "postgresql": _Kind(_open_rdb, _SERVER_HINT, {"pool_pre_ping": True}, default_driver="psycopg2"),
    "mysql": _Kind(_open_rdb, _SERVER_HINT, {"pool_pre_ping": True, "pool_recycle": 3600}),
    "journal": _Kind(_open_journal, "Check that the folder exists and is writable."),
}

# A plain file name says its kind by its suffix.
_SUFFIX_KINDS = {".log": "journal", ".journal": "journal", ".db": "sqlite", ".sqlite": "sqlite", ".sqlite3": "sqlite"}


def _sqlite_url(path: Path) -> str:
    # URL.create escapes ? % # in the path, which a hand-built "sqlite:///" + path would not.
    return URL.create("sqlite", database=str(path.expanduser().resolve())).render_as_string()


def _classify(spec: str) -> tuple[str, str]:
    """(scheme, what to open) for a ``--storage`` spec."""
    if "://" in spec:
        scheme = spec.split("://", 1)[0].split("+", 1)[0].lower()
        return scheme, spec[len("journal://") :] if scheme == "journal" else spec
    if spec.startswith(JOURNAL_PREFIX):
        return "journal", spec[len(JOURNAL_PREFIX) :]
    scheme = _SUFFIX_KINDS.get(Path(spec).suffix.lower(), "")
    if scheme == "sqlite":
        return scheme, _sqlite_url(Path(spec))
    if scheme:
        return scheme, spec
    raise ConfigError(
        f"storage {redact(spec)!r} is neither a database URL nor a journal file. Give "
        "postgresql://user@host:port/db, sqlite:///path/study.db, journal:PATH (or a file ending "
        "in .log/.journal/.db), or leave --storage out to use <run dir>/study.db."
    )


def storage_file(spec: str) -> Path | None:
    """The file a SQLite or journal storage lives in (None for a server, or a spec that names none)."""
    try:
        scheme, target = _classify(spec.strip())
        if scheme == "journal":
            return Path(target).expanduser()
        database = make_url(target).database if scheme == "sqlite" else None
    except (ConfigError, sqlalchemy.exc.ArgumentError, ValueError):
        return None
    return Path(database).expanduser() if database and database != ":memory:" else None


def _validate_heartbeat(interval: int, grace: int | None, max_retry: int) -> _Heartbeat:
    def whole(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if not whole(interval) or interval < 1:
        raise ConfigError(f"heartbeat interval {interval!r} must be a whole number of seconds >= 1 (default 30).")
    if grace is not None and (not whole(grace) or grace <= interval):
        raise ConfigError(
            f"grace period {grace!r} must be a whole number of seconds longer than the heartbeat "
            f"interval ({interval} s), or left out for {2 * interval} s; a shorter one would fail "
            "trials whose workers are alive."
        )
    if not whole(max_retry) or max_retry < 0:
        raise ConfigError(f"max retry {max_retry!r} must be a whole number >= 0 (default {DEFAULT_MAX_RETRY}).")
    return _Heartbeat(interval, grace, max_retry)


def _heartbeat_kwargs(storage_class: type, heartbeat: _Heartbeat) -> dict[str, Any]:
    """The heartbeat arguments ``storage_class`` accepts in the installed Optuna, or none."""
    params = inspect.signature(storage_class).parameters
    if "heartbeat_interval" not in params:
        return {}
    # Optuna 4.9 renamed failed_trial_callback / RetryFailedTrialCallback; 4.0-4.8 know only those.
    retry_class = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
    callback_arg = "heartbeat_stale_trial_callback"
    if retry_class is None or callback_arg not in params:
        retry_class, callback_arg = optuna.storages.RetryFailedTrialCallback, "failed_trial_callback"
    return {
        "heartbeat_interval": heartbeat.interval,
        "grace_period": heartbeat.grace,
        callback_arg: retry_class(max_retry=heartbeat.max_retry),
    }


def _as_template(url: str) -> str:
    # RDBStorage runs url.format(SCHEMA_VERSION=...): a literal brace in a path would break it.
    return url.replace("{", "{{").replace("}", "}}").replace("{{SCHEMA_VERSION}}", "{SCHEMA_VERSION}")


def _one_line(err: object) -> str:
    return " ".join(str(err).split()).rstrip(".")


def open_storage(
    spec: str | None,
    run_dir: Path,
    *,
    heartbeat_interval: int = 30,
    grace_period: int | None = None,
    max_retry: int = DEFAULT_MAX_RETRY,
    repair: bool = True,
) -> BaseStorage:
    """The Optuna storage that ``spec`` names; ``None`` means ``<run_dir>/study.db``.

    ``repair=False`` is for commands that only read (``bench status``): a journal's torn tail is
    left as it is (``torn_journal`` tells them to say so); the next writer cuts it back.

    Raises ``ConfigError`` (never with a password in it) for an unknown spec, a missing driver,
    an unreachable or refusing server, or heartbeat settings that make no sense.
    """
    heartbeat = _validate_heartbeat(heartbeat_interval, grace_period, max_retry)
    if spec is None:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        scheme, target = "sqlite", _sqlite_url(run_dir / DEFAULT_FILE)
    else:
        scheme, target = _classify(spec.strip())
    kind = _KINDS.get(scheme)
    if kind is None:
        raise ConfigError(
            f"storage {redact(spec or '')!r}: unknown scheme '{scheme}://', expected one of "
            f"{', '.join(s + '://' for s in _KINDS if s != 'journal')} or journal:PATH." + close_matches(scheme, _KINDS)
        )
    return kind.open(target, kind, heartbeat, repair)


# --------------------------------------------------------------------------- reading it back


def _unwrap(storage: BaseStorage) -> BaseStorage:
    # A Study wraps an RDBStorage in Optuna's _CachedStorage; the URL is on the one inside.
    while isinstance(storage, optuna.storages._CachedStorage):
        storage = storage._backend
    return storage


def _describe_journal(storage: JournalStorage) -> str:
    backend = getattr(storage, "_backend", None)
    path = getattr(backend, "_file_path", None)
    return f"journal:{path}" if path else f"journal ({type(backend).__name__})"


_DESCRIBERS: dict[type, Callable[[Any], str]] = {
    RDBStorage: lambda storage: redact(storage.url),
    JournalStorage: _describe_journal,
    InMemoryStorage: lambda storage: "in-memory",
}


def describe_storage(storage: BaseStorage) -> str:
    """One line naming where a study lives, password redacted: for manifests and ``bench status``.

    For files and databases it is itself a spec ``open_storage`` accepts (give the password again).
    """
    storage = _unwrap(storage)
    for storage_class, describe in _DESCRIBERS.items():
        if isinstance(storage, storage_class):
            return describe(storage)
    return type(storage).__name__


def supports_heartbeat(storage: BaseStorage) -> bool:
    """Whether trials of killed workers on this storage are detected and failed (see module doc)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


@dataclass(frozen=True)
class StudyStatus:
    """One study in a storage, for ``bench status``."""

    name: str
    direction: str  # "minimize" / "maximize"; comma-joined for a multi-objective study
    complete: int = 0
    pruned: int = 0
    fail: int = 0
    running: int = 0
    waiting: int = 0
    best_value: float | None = None  # best COMPLETE value; None if none or multi-objective
    user_attrs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def n_trials(self) -> int:
        return self.complete + self.pruned + self.fail + self.running + self.waiting


_STATE_FIELDS = {
    TrialState.COMPLETE: "complete",
    TrialState.PRUNED: "pruned",
    TrialState.FAIL: "fail",
    TrialState.RUNNING: "running",
    TrialState.WAITING: "waiting",
}


def _best_value(directions: list[StudyDirection], trials: list[FrozenTrial]) -> float | None:
    if len(directions) != 1:
        return None
    values = [t.value for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not values:
        return None
    return max(values) if directions[0] == StudyDirection.MAXIMIZE else min(values)


def list_studies(storage: BaseStorage) -> list[StudyStatus]:
    """Every study in ``storage`` with its trial counts by state and best value."""
    statuses = []
    for study in storage.get_all_studies():
        # FrozenStudy keeps its id private; the name is the public key.
        study_id = storage.get_study_id_from_name(study.study_name)
        trials = storage.get_all_trials(study_id, deepcopy=False)
        counts = Counter(_STATE_FIELDS[t.state] for t in trials if t.state in _STATE_FIELDS)
        statuses.append(
            StudyStatus(
                name=study.study_name,
                direction=",".join(d.name.lower() for d in study.directions),
                best_value=_best_value(study.directions, trials),
                user_attrs=dict(study.user_attrs),
                **counts,
            )
        )
    return statuses


def redact_command(argv: list[str]) -> str:
    """A shell-quoted command line with the password of any storage URL in it replaced by ***."""
    import shlex

    return " ".join(shlex.quote(redact(a) if "://" in a else a) for a in argv)
