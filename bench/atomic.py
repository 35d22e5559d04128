"""Writing an output file so that a reader sees the old version or the new one, never half of either.

The content goes to a temporary file beside the target and is renamed over it (atomic on POSIX).
If writing fails part-way (a name that cannot be encoded, a full disk, Ctrl-C), the temporary
file is removed and the target keeps its previous content, or stays absent.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def write_atomic(path: Path, write: Callable[[IO[Any]], None], *, binary: bool = False) -> Path:
    """Call ``write(f)`` on a file (UTF-8 text, or bytes) that replaces ``path`` only once it is complete."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline="")) as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda f: f.write(text))
