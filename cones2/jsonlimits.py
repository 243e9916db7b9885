"""JSON from untrusted sources, bounded: nesting depth and size are checked before parsing.

``json.loads`` recurses once per ``[``/``{``, so a header of 100,000 brackets ends in a
RecursionError traceback. :func:`check_depth` scans the text once (strings skipped) and
refuses anything nested deeper than :data:`MAX_DEPTH`, so the parser never recurses far.
"""

from __future__ import annotations

import re
from typing import Any

MAX_DEPTH = 64
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)


class JSONLimitError(ValueError):
    """JSON nested deeper than allowed (a ValueError, as json.loads' own errors)."""


def check_depth(text: str, max_depth: int = MAX_DEPTH) -> None:
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                raise JSONLimitError(f"JSON nested deeper than {max_depth} levels")
        elif token in "]}":
            depth -= 1


def loads(text: str | bytes, max_depth: int = MAX_DEPTH, **kwargs: Any) -> Any:
    """``json.loads`` after :func:`check_depth`; every failure is a ValueError."""
    import json

    if isinstance(text, bytes):
        text = text.decode("utf-8")  # UnicodeDecodeError is a ValueError too
    check_depth(text, max_depth)
    try:
        return json.loads(text, **kwargs)
    except RecursionError:  # cannot happen below MAX_DEPTH; kept as a last guard
        raise JSONLimitError("JSON nested too deeply") from None
