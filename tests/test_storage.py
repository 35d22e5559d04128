"""Optuna storage: the kinds, several worker processes on one study, killed workers, passwords.

The PostgreSQL cases run on a real server (tests/postgres.py); the workers are separate OS
processes, as `bench run` workers are.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.storages import JournalStorage, RDBStorage
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from bench.errors import ConfigError
from bench.search.storage import (
    PASSWORD_ENV,
    describe_storage,
    list_studies,
    open_storage,
    redact,
    supports_heartbeat,
)

# Registered once per session however many modules name it; importing tests.postgres here as
# well would stop pytest from rewriting its asserts.
pytest_plugins = ["tests.postgres"]
# Optuna marks the heartbeat API experimental; these tests use it on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

optuna.logging.set_verbosity(optuna.logging.WARNING)

KINDS = ["sqlite", "journal", "postgres"]

# A worker as `bench run` will be: its own process, the shared budget enforced by Optuna alone.
# It waits for the other workers before optimizing so that they really run at the same time.
WORKER = r"""
import sys, time
from pathlib import Path
import optuna
from optuna.study import MaxTrialsCallback
from optuna.trial import TrialState
from bench.search.storage import open_storage

spec, run_dir, name, budget, ready_dir, me, n_workers = sys.argv[1:]
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name=name, storage=open_storage(spec, Path(run_dir)))
ready = Path(ready_dir)
(ready / me).touch()
deadline = time.monotonic() + 60
while len(list(ready.iterdir())) < int(n_workers) and time.monotonic() < deadline:
    time.sleep(0.01)

def objective(trial):
    trial.set_user_attr("worker", me)
    time.sleep(0.01)
    return trial.suggest_float("x", 0, 1)

study.optimize(
    objective,
    n_trials=int(budget),
    callbacks=[MaxTrialsCallback(int(budget), states=(TrialState.COMPLETE,))],
)
"""

# A worker whose trial hangs until it is killed; it says which trial through a marker file.
HANGING_WORKER = r"""
import sys, time
from pathlib import Path
import optuna
from bench.search.storage import open_storage

spec, run_dir, name, marker = sys.argv[1:]
storage = open_storage(spec, Path(run_dir), heartbeat_interval=1, grace_period=3)
study = optuna.load_study(study_name=name, storage=storage)

def objective(trial):
    trial.suggest_float("x", 0, 1)
    Path(marker).write_text(str(trial.number))
    time.sleep(600)

study.optimize(objective, n_trials=1)
"""


@pytest.fixture
def spec_of(request, tmp_path):
    """``spec_of(kind)``: a fresh storage spec of that kind (PostgreSQL started only if asked)."""

    def spec(kind: str) -> str:
        if kind == "postgres":
            return request.getfixturevalue("postgres_url")
        return {"sqlite": f"sqlite:///{tmp_path}/shared.db", "journal": f"journal:{tmp_path}/shared.log"}[kind]

    return spec


def new_study(spec: str, run_dir: Path, **open_kwargs) -> optuna.Study:
    # Tests share the PostgreSQL server: every study gets its own name.
    storage = open_storage(spec, run_dir, **open_kwargs)
    return optuna.create_study(study_name=f"test-{uuid.uuid4().hex[:8]}", storage=storage)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(
                f"worker exited ({proc.returncode}) early:\n{proc.stderr.read() if proc.stderr else ''}"
            )
        assert time.monotonic() < deadline, f"worker did not reach its trial in {timeout} s"
        time.sleep(0.05)


# --------------------------------------------------------------------------- kinds


def test_default_is_sqlite_in_the_run_dir(tmp_path):
    run_dir = tmp_path / "runs" / "odd name?{x}%"  # created; characters a URL must escape
    storage = open_storage(None, run_dir)
    study = optuna.create_study(storage=storage, study_name="s")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)

    assert isinstance(storage, RDBStorage)
    assert (run_dir / "study.db").is_file()
    assert supports_heartbeat(storage)
    assert storage.heartbeat_interval == 30
    # the description is itself a spec that opens the same study
    again = open_storage(describe_storage(storage), tmp_path)
    assert len(optuna.load_study(study_name="s", storage=again).trials) == 2


@pytest.mark.parametrize(
    "form", ["journal:{dir}/j/study.log", "{dir}/study.log", "{dir}/study.journal", "journal:{dir}/plain"]
)
def test_journal_file_forms(tmp_path, form):
    spec = form.format(dir=tmp_path)
    storage = open_storage(spec, tmp_path / "run")
    study = optuna.create_study(storage=storage, study_name="j")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)

    assert isinstance(storage, JournalStorage)
    path = Path(spec.removeprefix("journal:")).resolve()
    assert describe_storage(storage) == f"journal:{path}"
    assert len(optuna.load_study(study_name="j", storage=open_storage(describe_storage(storage), tmp_path)).trials) == 3


def test_sqlite_file_by_suffix_and_url(tmp_path):
    by_suffix = open_storage(str(tmp_path / "a.db"), tmp_path)
    optuna.create_study(storage=by_suffix, study_name="a")
    assert isinstance(by_suffix, RDBStorage)
    assert (tmp_path / "a.db").is_file()
    assert describe_storage(open_storage(f"sqlite:///{tmp_path}/a.db", tmp_path)) == describe_storage(by_suffix)


def test_a_file_that_is_not_a_journal(tmp_path):
    (tmp_path / "notes.log").write_text("hello\nworld\n")
    with pytest.raises(ConfigError, match="not a readable Optuna journal"):
        open_storage(str(tmp_path / "notes.log"), tmp_path)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("postgres://bench:secret@db/bench", "Did you mean 'postgresql'"),
        ("redis://localhost", "unknown scheme 'redis://'"),
        ("study", "neither a database URL nor a journal file"),
        ("postgresql://bench:secret@db:port/bench", "cannot be parsed"),
        ("postgresql+nosuchdriver://bench:secret@db/bench", "nosuchdriver"),
    ],
)
def test_bad_specs(tmp_path, spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        open_storage(spec, tmp_path)
    assert "secret" not in str(err.value)


def test_missing_sqlite_folder(tmp_path):
    with pytest.raises(ConfigError, match="folder exists"):
        open_storage(f"sqlite:///{tmp_path}/missing/x.db", tmp_path)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"heartbeat_interval": 0}, "heartbeat interval 0"),
        ({"heartbeat_interval": 5, "grace_period": 5}, "grace period 5"),
        ({"max_retry": -1}, "max retry -1"),
    ],
)
def test_bad_heartbeat_settings(tmp_path, settings, message):
    with pytest.raises(ConfigError, match=message):
        open_storage(None, tmp_path, **settings)


# --------------------------------------------------------------------------- several workers


@pytest.mark.parametrize("kind", KINDS)
def test_two_worker_processes_share_one_budget(kind, spec_of, tmp_path):
    budget, n_workers = 40, 2
    spec = spec_of(kind)
    name = new_study(spec, tmp_path).study_name
    ready = tmp_path / "ready"
    ready.mkdir()
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                spec,
                str(tmp_path / f"run{i}"),
                name,
                str(budget),
                str(ready),
                f"w{i}",
                str(n_workers),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n_workers)
    ]
    for worker in workers:
        _, stderr = worker.communicate(timeout=180)
        assert worker.returncode == 0, stderr

    trials = optuna.load_study(study_name=name, storage=open_storage(spec, tmp_path)).get_trials(deepcopy=False)
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(trials))), "every trial number exactly once"
    assert len({t._trial_id for t in trials}) == len(trials)
    assert {t.state for t in trials} == {TrialState.COMPLETE}, "none lost, failed or left running"
    # MaxTrialsCallback stops a worker after the trial that reaches the budget; a worker whose
    # trial was already running finishes it, so the total can pass the budget by workers - 1.
    assert budget <= len(trials) <= budget + n_workers - 1
    assert {t.user_attrs["worker"] for t in trials} == {f"w{i}" for i in range(n_workers)}


# --------------------------------------------------------------------------- killed workers


@pytest.mark.parametrize("kind", KINDS)
def test_a_killed_workers_trial_is_failed_and_retried(kind, spec_of, tmp_path):
    spec = spec_of(kind)
    name = new_study(spec, tmp_path).study_name
    marker = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, "-c", HANGING_WORKER, spec, str(tmp_path / "run"), name, str(marker)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(marker, proc)
        time.sleep(0.2)  # let its heartbeat thread record at least once
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    killed = time.monotonic()

    storage = open_storage(spec, tmp_path, heartbeat_interval=1, grace_period=3)
    study = optuna.load_study(study_name=name, storage=storage)
    optuna.storages.fail_stale_trials(study)
    if time.monotonic() - killed < 1.5:  # well inside the grace period: a live trial is left alone
        assert study.trials[0].state == TrialState.RUNNING

    if not supports_heartbeat(storage):
        # Optuna 5.0's JournalStorage: nothing notices, the trial stays RUNNING (see storage.py).
        assert kind == "journal"
        time.sleep(max(0.0, killed + 4.5 - time.monotonic()))
        optuna.storages.fail_stale_trials(study)
        assert [t.state for t in study.trials] == [TrialState.RUNNING]
        return

    deadline = killed + 20
    while study.trials[0].state == TrialState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.25)
        optuna.storages.fail_stale_trials(study)
    # grace (3 s) counts from the last heartbeat, at most one interval (1 s) before the kill
    assert time.monotonic() - killed >= 2 - 0.1, "failed before the grace period passed"
    dead, retry = study.trials
    assert dead.state == TrialState.FAIL
    assert retry.state == TrialState.WAITING
    assert retry.params == dead.params
    retry_class = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", optuna.storages.RetryFailedTrialCallback)
    assert retry_class.retried_trial_number(retry) == dead.number

    # the next worker runs the re-queued trial with the dead one's parameters
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert study.trials[1].state == TrialState.COMPLETE
    assert study.trials[1].value == dead.params["x"]


# --------------------------------------------------------------------------- passwords


@pytest.mark.parametrize(
    "url, shown",
    [
        ("postgresql://bench:secret@db:5432/bench", "postgresql://bench:***@db:5432/bench"),
        ("postgresql+psycopg2://bench:s%40cr%2Fet@db/bench", "postgresql+psycopg2://bench:***@db/bench"),
        ("mysql://bench@db/bench", "mysql://bench@db/bench"),
        (
            "postgresql://bench@db/bench?password=secret&sslmode=require",
            "postgresql://bench@db/bench?password=***&sslmode=require",
        ),
        ("sqlite:////tmp/study.db", "sqlite:////tmp/study.db"),
        # not parseable (port): the regex fallback
        ("postgresql://bench:secret@db:port/bench", "postgresql://bench:***@db:port/bench"),
        ("weird://bench:se@cret@db:x/y?pwd=secret", "weird://bench:***@db:x/y?pwd=***"),
    ],
)
def test_redact(url, shown):
    assert redact(url) == shown


@pytest.fixture
def password(postgres_url) -> str:
    return str(make_url(postgres_url).password)


def test_no_password_in_what_is_shown(postgres_url, password, tmp_path):
    storage = open_storage(postgres_url, tmp_path)
    study = optuna.create_study(storage=storage, study_name=f"test-{uuid.uuid4().hex[:8]}")
    for text in (
        repr(storage),
        str(storage),
        describe_storage(storage),
        describe_storage(study._storage),
        repr(storage.engine),
    ):
        assert password not in text
        assert "bench:***@127.0.0.1" in text
    assert [s.name for s in list_studies(storage) if s.name == study.study_name]


def test_password_from_bench_environment_variable(postgres_url, password, tmp_path, monkeypatch):
    without = postgres_url.replace(f":{password}@", "@")
    monkeypatch.setenv(PASSWORD_ENV, password)
    storage = open_storage(without, tmp_path)
    optuna.create_study(storage=storage, study_name=f"test-{uuid.uuid4().hex[:8]}")
    assert password not in repr(storage) + describe_storage(storage)


def test_password_from_libpq_environment_variable(postgres_url, password, tmp_path, monkeypatch):
    without = postgres_url.replace(f":{password}@", "@")
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with pytest.raises(ConfigError, match="password"):  # the server wants one: the URL alone is refused
        open_storage(without, tmp_path)
    monkeypatch.setenv("PGPASSWORD", password)
    storage = open_storage(without, tmp_path)
    name = f"test-{uuid.uuid4().hex[:8]}"
    optuna.create_study(storage=storage, study_name=name)
    assert name in [s.name for s in list_studies(storage)]  # written to and read back from the server
    assert password not in repr(storage) + describe_storage(storage)


@pytest.mark.parametrize("where", ["url", "environment"])
def test_wrong_password_on_a_real_server(postgres_url, password, tmp_path, monkeypatch, where):
    wrong = "Wr0ng-pa55word"
    monkeypatch.delenv("PGPASSWORD", raising=False)
    if where == "url":
        url = postgres_url.replace(f":{password}@", f":{wrong}@")
    else:
        url = postgres_url.replace(f":{password}@", "@")
        monkeypatch.setenv(PASSWORD_ENV, wrong)
    with pytest.raises(ConfigError) as err:
        open_storage(url, tmp_path)
    message = str(err.value)
    assert "password authentication failed" in message
    assert "bench:***@127.0.0.1" in message
    assert wrong not in message and password not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__  # no driver traceback


def test_unreachable_server(tmp_path):
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.fail("psycopg2 is not installed: pip install -e '.[postgres]'", pytrace=False)
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConfigError) as err:
        open_storage(f"postgresql://bench:secret@127.0.0.1:{port}/bench", tmp_path)
    message = str(err.value)
    assert f"postgresql+psycopg2://bench:***@127.0.0.1:{port}/bench" in message
    assert "Connection refused" in message
    assert "secret" not in message


@pytest.mark.parametrize(
    "url", ["postgresql://bench:secret@127.0.0.1:1/bench", "postgresql+psycopg2://bench:secret@127.0.0.1:1/bench"]
)
def test_missing_driver_names_the_extra(tmp_path, monkeypatch, url):
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # `import psycopg2` now raises ImportError
    with pytest.raises(ConfigError) as err:
        open_storage(url, tmp_path)
    message = str(err.value)
    assert "pip install 'bench[postgres]'" in message
    assert "psycopg2" in message and "secret" not in message


# --------------------------------------------------------------------------- status


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_list_studies_counts_states(tmp_path):
    storage = open_storage(None, tmp_path)
    study = optuna.create_study(storage=storage, study_name="mixed", direction="maximize")
    study.set_user_attr("dataset", "kvasir")
    for value in (0.2, 0.9):
        study.tell(study.ask(), value)
    study.tell(study.ask(), state=TrialState.PRUNED)
    study.tell(study.ask(), state=TrialState.FAIL)
    study.ask()  # left running
    study.enqueue_trial({"x": 0.5})  # waiting
    optuna.create_study(storage=storage, study_name="empty")

    mixed, empty = list_studies(storage)
    assert (mixed.name, mixed.direction, mixed.best_value) == ("mixed", "maximize", 0.9)
    assert (mixed.complete, mixed.pruned, mixed.fail, mixed.running, mixed.waiting) == (2, 1, 1, 1, 1)
    assert mixed.n_trials == 6
    assert mixed.user_attrs == {"dataset": "kvasir"}
    assert (empty.name, empty.direction, empty.best_value, empty.n_trials) == ("empty", "minimize", None, 0)


def test_list_studies_on_a_journal(tmp_path):
    storage = open_storage(f"journal:{tmp_path}/j.log", tmp_path)
    study = optuna.create_study(storage=storage, study_name="j", directions=["minimize", "maximize"])
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1.0), n_trials=2)
    (status,) = list_studies(storage)
    assert (status.direction, status.complete, status.best_value) == ("minimize,maximize", 2, None)


# --------------------------------------------------------------------------- a journal cut mid-write


def _journal_with_trials(path: Path, n: int) -> bytes:
    study = optuna.create_study(study_name="torn", storage=open_storage(f"journal:{path}", path.parent))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
    return path.read_bytes()


def _bench_status(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench", "status", "--storage", f"journal:{path}"],
                          capture_output=True, text=True, timeout=120)


# What a `bench run` worker does first: open the storage to write to it (and so repair it).
_OPEN_AS_WRITER = ("import sys\nfrom pathlib import Path\nfrom bench.search.storage import list_studies, open_storage\n"
                   "storage = open_storage('journal:' + sys.argv[1], Path(sys.argv[1]).parent)\n"
                   "print(' '.join(s.name for s in list_studies(storage)))\n")


def _open_as_writer(path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _OPEN_AS_WRITER, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("damage", ["cut", "cut_then_appended"])
def test_a_journal_torn_mid_record_is_cut_back_and_kept(tmp_path, damage):
    path = tmp_path / "study.log"
    whole = _journal_with_trials(path, 3)
    last_start = whole.rstrip(b"\n").rfind(b"\n") + 1
    torn = whole[: last_start + (len(whole) - last_start) // 2]  # a writer killed half-way through a record
    if damage == "cut_then_appended":  # what an unfixed bench did next: a record glued onto the torn line
        torn += b'{"op_code":0,"worker_id":"w","study_name":"other","directions":[1]}\n'
    path.write_bytes(torn)

    writer = _open_as_writer(path)
    out, err = writer.communicate(timeout=120)
    status = subprocess.CompletedProcess(writer.args, writer.returncode, out, err)
    assert status.returncode == 0, status.stderr
    assert "torn" in status.stdout and "Traceback" not in status.stderr
    copies = list(tmp_path.glob("study.log.torn-*"))
    assert len(copies) == 1 and copies[0].read_bytes() == torn
    assert "incomplete record" in status.stderr and str(copies[0]) in " ".join(status.stderr.split())
    assert path.read_bytes() == whole[:last_start]  # exactly the complete records
    # Optuna can use it again: the study goes on from the records that were whole.
    study = optuna.load_study(study_name="torn", storage=open_storage(f"journal:{path}", tmp_path))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert len(study.trials) == 4 and path.read_bytes().endswith(b"\n")
    assert len(list(tmp_path.glob("study.log.torn-*"))) == 1  # an intact journal is left alone


def test_a_torn_journal_is_left_alone_while_a_writer_holds_its_lock(tmp_path):
    path = tmp_path / "study.log"
    whole = _journal_with_trials(path, 2)
    half = len(whole) - (len(whole) - (whole.rstrip(b"\n").rfind(b"\n") + 1)) // 2
    path.write_bytes(whole[:half])  # a live writer is half-way through its last record
    lock = optuna.storages.journal.JournalFileSymlinkLock(str(path))
    lock.acquire()
    proc = _open_as_writer(path)
    time.sleep(3)
    assert proc.poll() is None  # waiting for the writer's lock, not cutting its record
    with path.open("ab") as f:
        f.write(whole[half:])
    lock.release()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert path.read_bytes() == whole and not list(tmp_path.glob("study.log.torn-*"))


@pytest.mark.parametrize("damage", ["cut", "cut_then_appended"])
def test_bench_status_reports_a_torn_journal_and_leaves_it_as_it_is(tmp_path, damage):
    """`bench status` only reads: it used to cut the journal back (and keep a copy) itself."""
    path = tmp_path / "study.log"
    whole = _journal_with_trials(path, 3)
    last_start = whole.rstrip(b"\n").rfind(b"\n") + 1
    torn = whole[: last_start + (len(whole) - last_start) // 2]
    if damage == "cut_then_appended":
        torn += b'{"op_code":0,"worker_id":"w","study_name":"other","directions":[1]}\n'
    path.write_bytes(torn)

    status = _bench_status(path)
    assert status.returncode == 0, status.stderr
    assert path.read_bytes() == torn and not list(tmp_path.glob("study.log.torn-*"))
    shown = " ".join(status.stdout.split())
    assert "torn" in shown and "incomplete record" in shown and "next `bench run`" in shown
    assert f"{len(torn) - last_start} byte(s)" in shown
    assert "Traceback" not in status.stderr


def _open_at_once(path: str, barrier, results) -> None:
    from bench.search.storage import open_storage

    barrier.wait()
    try:
        open_storage(f"sqlite:///{path}", Path(path).parent)
        results.put("ok")
    except Exception as err:  # noqa: BLE001 - the test reports whatever went wrong
        results.put(f"{type(err).__name__}: {err}")


@pytest.mark.slow  # 20-30 s of real searches or processes: CI runs it with the slow suite
def test_processes_creating_one_new_sqlite_study_at_once_all_open_it(tmp_path):
    """Two `bench run` started together on a new SQLite file race to create Optuna's tables; the
    loser saw "UNIQUE constraint failed: alembic_version.version_num" and exited 2 (found by CI)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    for attempt in range(3):  # a race: give it several chances to happen
        path = tmp_path / f"new{attempt}.db"
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_at_once, args=(str(path), barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(30)
        assert outcomes == ["ok"] * 4, outcomes


def test_a_study_whose_setup_another_machine_is_still_writing_is_waited_for(tmp_path):
    """Two machines start on a new shared study: one creates it and writes its setup one attribute
    at a time; the other must wait for the whole setup, not refuse a half-written one."""
    import threading

    from bench.search.runner import IDENTITY_KEYS, recorded_identity

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    setup = {key: f"value-{key}" for key in IDENTITY_KEYS}

    def write_slowly() -> None:
        for key, value in setup.items():
            study.set_user_attr(key, value)
            time.sleep(0.3)

    study.set_user_attr(IDENTITY_KEYS[0], setup[IDENTITY_KEYS[0]])  # the other machine has begun
    writer = threading.Thread(target=write_slowly)
    writer.start()
    try:
        seen = recorded_identity(optuna.load_study(study_name="s", storage=url), wait=30)
    finally:
        writer.join()
    assert {k: seen.get(k) for k in IDENTITY_KEYS} == setup
    # A study that records nothing is new: nothing to wait for.
    empty = optuna.create_study(study_name="new", storage=url)
    t0 = time.monotonic()
    assert recorded_identity(empty, wait=30) == {} and time.monotonic() - t0 < 5


def test_the_pip_installed_server_serves_a_study(tmp_path):
    """`make test` without root: the dev extra's pgserver wheel brings a PostgreSQL server that
    tests/postgres.py falls back to. Here it is started from that wheel whatever else is installed
    (as root it runs as the postgres user, as any PostgreSQL must)."""
    from tests.postgres import pgserver_bin, start_server

    bin_dir = pgserver_bin()
    assert bin_dir is not None, "the pgserver wheel is missing: pip install -e '.[dev]'"
    server = start_server(bin_dir)
    try:
        storage = open_storage(server.url, tmp_path)
        study = optuna.create_study(study_name="pip-server", storage=storage)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        again = optuna.load_study(study_name="pip-server", storage=open_storage(server.url, tmp_path))
        assert [t.value for t in again.trials] == [t.value for t in study.trials] and len(again.trials) == 3
    finally:
        server.stop()
