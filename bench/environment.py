"""The process's environment: what a run ran on (versions, backend, device, recorded in every
manifest), environment variables set for the length of a block, and where TensorFlow's own
start-up lines go.

Keep TensorFlow's own start-up lines off the user's terminal, in a log file instead.

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
import platform
import sys
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import paths

PACKAGES = ("bench", "keras", "tensorflow", "tensorflow-cpu", "torch", "jax", "optuna", "keras-tuner",
            "scikit-learn", "numpy", "pandas", "pillow")


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def device() -> dict[str, Any]:
    import keras

    backend = keras.backend.backend()
    info: dict[str, Any] = {"backend": backend, "cpu_count": os.cpu_count(), "machine": platform.machine()}
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        info["gpus"] = [g.name for g in gpus]
    elif backend == "torch":
        import torch

        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    elif backend == "jax":
        import jax

        info["gpus"] = [str(d) for d in jax.devices() if d.platform == "gpu"]
    info["device"] = "gpu" if info.get("gpus") else "cpu"
    info["mixed_precision"] = keras.mixed_precision.global_policy().name
    return info


def describe() -> dict[str, Any]:
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "versions": versions(),
        **device(),
    }


@contextlib.contextmanager
def temporary_env(values: Mapping[str, str], *, override: bool = True) -> Iterator[None]:
    """Set ``values`` in ``os.environ`` for the block, then put back what was there.

    ``override=False`` leaves a variable the user already set as it is.
    """
    if not override:
        values = {k: v for k, v in values.items() if k not in os.environ}
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value



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
