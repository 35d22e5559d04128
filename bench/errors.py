"""Errors that a user can fix.

Everything a user can get wrong (a dataset name, a folder, a flag value, a file) raises
``BenchError`` with a message that names the thing and says what to do. The CLI prints the
message and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable


class BenchError(Exception):
    """A problem the user can fix; ``str(err)`` is the whole message."""

    exit_code = 2


class DataError(BenchError):
    """A dataset, image folder, manifest or image that cannot be used as given."""


class ConfigError(BenchError):
    """A bad entry in datasets.toml, a search space, or a command-line value."""


class NetworkError(BenchError):
    """Something had to be downloaded and could not be."""


def disk_full(err: BaseException) -> str | None:
    """The message for a full disk (or quota), or None when ``err`` is not one: the CLI and the
    held-out step under ``bench run`` (whose stderr is TensorFlow's log) print the same words."""
    if not isinstance(err, OSError) or err.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    where = f" while writing {err.filename}" if err.filename else ""
    return (f"no space left on the disk{where}. Free some space and run the same command again: finished work is "
            "kept, a model or record that was being replaced keeps its previous version, and a run CSV's row cut "
            "short is cut back by the next run.")


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """``" Did you mean 'a', 'b'?"`` or an empty string, for the end of an error message."""
    found = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    if not found:
        return ""
    return " Did you mean " + ", ".join(repr(f) for f in found) + "?"
