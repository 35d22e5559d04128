"""Finding and loading space files: a path, or the name of a space shipped in search_spaces/."""

from __future__ import annotations

from pathlib import Path

from bench.errors import ConfigError, close_matches
from bench.paths import PACKAGE_DIR
from bench.search.space._parse import parse_space
from bench.search.space._space import SearchSpace

BUILTIN_DIR = PACKAGE_DIR / "search_spaces"


def load_space(path: Path | str) -> SearchSpace:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"Search space {path} does not exist. Built-in spaces: {', '.join(builtin_names())}."
        ) from None
    return parse_space(text, str(path), path)


def builtin_names() -> list[str]:
    return sorted(p.stem for p in BUILTIN_DIR.glob("*.toml"))


def builtin_space(name: str) -> Path:
    """The file of a shipped space (``default``, ``smoke``)."""
    path = BUILTIN_DIR / f"{name}.toml"
    if not path.is_file():
        names = builtin_names()
        raise ConfigError(
            f"No built-in search space '{name}'.{close_matches(name, names)} "
            f"Built-in spaces: {', '.join(names)}; or give the path of a .toml file."
        )
    return path


def resolve_space(spec: str | Path) -> Path:
    """A ``--space`` argument: an existing file, else the name of a built-in space."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if isinstance(spec, str) and "/" not in spec and not spec.endswith(".toml"):
        return builtin_space(spec)
    raise ConfigError(
        f"Search space {str(spec)!r} is neither a file nor a built-in space "
        f"({', '.join(builtin_names())})."
    )
