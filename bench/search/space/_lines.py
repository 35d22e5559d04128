"""Line numbers of TOML keys, so that error messages can point at the offending line."""

from __future__ import annotations

import re

_KEY_PART = r'(?:[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\')'
_DOTTED = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER_RE = re.compile(rf"^\[\[?\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEY_RE = re.compile(rf"^({_DOTTED})\s*=(.*)$")
_INLINE_KEY_RE = re.compile(rf"[{{,]\s*({_KEY_PART})\s*=")


def _split_key(dotted: str) -> tuple[str, ...]:
    parts = re.findall(_KEY_PART, dotted)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


def key_lines(text: str) -> dict[tuple[str, ...], int]:
    """Map every key path the TOML text defines to the (1-based) line that first defines it.

    tomllib reports no positions, so this is a light scanner over the raw text: table headers,
    ``key = value`` lines (dotted keys too) and the keys of an inline table on the same line.
    Multi-line strings are skipped so that text inside them cannot look like a key.
    """
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    in_string: str | None = None
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if in_string:
            if line.count(in_string) % 2 == 1:
                in_string = None
            continue
        if not line or line.startswith("#"):
            continue
        header = _HEADER_RE.match(line)
        if header:
            table = _split_key(header.group(1))
            for i in range(1, len(table) + 1):
                lines.setdefault(table[:i], number)
            continue
        key = _KEY_RE.match(line)
        if not key:
            continue
        path = table + _split_key(key.group(1))
        for i in range(1, len(path) + 1):
            lines.setdefault(path[:i], number)
        value = key.group(2)
        for quote in ('"""', "'''"):
            if value.count(quote) % 2 == 1:
                in_string = quote
        if value.lstrip().startswith("{"):
            for inner in _INLINE_KEY_RE.findall(value):
                lines.setdefault(path + _split_key(inner), number)
    return lines


class _Where:
    """Builds ``file, line N ([params.x])`` prefixes for error messages."""

    def __init__(self, origin: str, text: str) -> None:
        self.origin = origin
        self.lines = key_lines(text)

    def line(self, *path: str) -> int:
        for i in range(len(path), 0, -1):
            if path[:i] in self.lines:
                return self.lines[path[:i]]
        return 1

    def __call__(self, *path: str) -> str:
        label = ""
        if path[:1] == ("params",) and len(path) > 1:
            label = f" ([params.{path[1]}])"
        elif path[:1] == ("objective",):
            label = " ([objective])"
        return f"{self.origin}, line {self.line(*path)}{label}"
