"""Reading and writing the small TOML documents of compositions and lockfiles.

Reading uses the standard library's :mod:`tomllib`. Writing covers exactly the values
these documents hold (strings, numbers, booleans, lists, nested tables), with sorted
keys where the caller asks for them, so that equal data gives equal bytes.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomllib

from ..errors import CompositionError

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def read_toml(path: str | Path, what: str = "composition") -> dict[str, Any]:
    """Parse a TOML file; a missing file or bad syntax is one :class:`CompositionError` line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CompositionError(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CompositionError(f"{path}: cannot read the {what} file ({exc})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CompositionError(f"{path}: invalid TOML ({exc})") from None


def key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else json.dumps(name, ensure_ascii=False)


def value(v: Any) -> str:
    """One TOML value (inline)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{key(str(k))} = {value(x)}" for k, x in v.items() if x is not None) + " }"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def dumps(data: Mapping[str, Any], *, header: str = "", sort: bool = False, comments: Mapping[str, str] | None = None) -> str:
    """A TOML document: plain values first, then one ``[table]`` per nested mapping.

    ``None`` values are left out (TOML has no null). ``comments`` maps a dotted table
    name (or a top-level key) to a comment written above it.
    """
    comments = comments or {}
    lines: list[str] = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    if lines:
        lines.append("")
    _table(data, [], lines, sort, comments)
    return "\n".join(lines).rstrip("\n") + "\n"


def _table(data: Mapping[str, Any], path: list[str], lines: list[str], sort: bool, comments: Mapping[str, str]) -> None:
    items = sorted(data.items()) if sort else list(data.items())
    for k, v in items:
        if v is None or isinstance(v, Mapping):
            continue
        if k in comments and not path:
            lines.append(f"# {comments[k]}")
        lines.append(f"{key(k)} = {value(v)}")
    for k, v in items:
        if not isinstance(v, Mapping):
            continue
        sub = [*path, k]
        name = ".".join(key(p) for p in sub)
        if lines and lines[-1] != "":
            lines.append("")
        if name in comments:
            lines.append(f"# {comments[name]}")
        lines.append(f"[{name}]")
        _table(v, sub, lines, sort, comments)
