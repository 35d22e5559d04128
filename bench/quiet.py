"""Keep TensorFlow's own start-up lines off the user's terminal, in a log file instead.

TensorFlow's C++ side writes ``I0000 ... oneDNN custom operations are on``, ``E0000 ...
cuInit`` and the like straight to file descriptor 2, before absl logging is initialised, so no
environment variable (``TF_CPP_MIN_LOG_LEVEL`` included) stops them. ``native_stderr_to_log``
points descriptor 2 at a log file for the duration of a command while Python's ``sys.stderr``,
which carries bench's own messages and tracebacks, keeps the terminal. TensorFlow's Python
warnings ("... triggered tf.function retracing") go to the same log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from bench import paths

__all__ = ["log_file", "native_stderr_to_log"]


def log_file() -> Path:
    """Where the lines go: ``<BENCH_CACHE>/logs/tensorflow.log``, appended to by every process."""
    return paths.cache_dir() / "logs" / "tensorflow.log"


class _BelowErrorToLog(logging.Filter):
    """Warnings and info of a logger go to ``handler`` only; errors go on as usual."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        self.handler.handle(record)
        return False


@contextlib.contextmanager
def native_stderr_to_log(log: Path | None = None) -> Iterator[Path | None]:
    """Descriptor 2 to ``log`` (default ``log_file()``) inside the block; the log used, or None.

    Does nothing when ``sys.stderr`` is not the process's own (a test capturing it, a notebook):
    swapping it there would take the caller's stream away.
    """
    if sys.stderr is not sys.__stderr__ or sys.stderr is None:
        yield None
        return
    log = log or log_file()
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    except OSError:  # nowhere to write it: the lines stay on the terminal, nothing worse
        yield None
        return
    python_stderr = sys.stderr
    python_stderr.flush()
    terminal = os.dup(2)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, encoding=python_stderr.encoding,
                           errors=python_stderr.errors)
    handler = logging.StreamHandler(open(log, "a", buffering=1, encoding="utf-8"))  # noqa: SIM115
    handler.setFormatter(logging.Formatter(logging.BASIC_FORMAT))
    # A logger's filter runs before any handler, including the one TensorFlow adds on import.
    to_log = _BelowErrorToLog(handler)
    tf_logger = logging.getLogger("tensorflow")
    tf_logger.addFilter(to_log)
    try:
        yield log
    finally:
        tf_logger.removeFilter(to_log)
        handler.close()
        sys.stderr.flush()
        sys.stderr.close()
        sys.stderr = python_stderr
        os.dup2(terminal, 2)
        os.close(terminal)
