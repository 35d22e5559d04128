"""Errors that a user can fix.

Everything a user can get wrong (a dataset name, a folder, a flag value, a file) raises
``BenchError`` with a message that names the thing and says what to do. The CLI prints the
message and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
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


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """``" Did you mean 'a', 'b'?"`` or an empty string, for the end of an error message."""
    found = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.5)
    if not found:
        return ""
    return " Did you mean " + ", ".join(repr(f) for f in found) + "?"
