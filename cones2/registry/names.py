"""Subject and tag names: what is allowed, with one clear error for what is not.

A name is one or two parts separated by ``/`` (``namespace/name``); each part matches
``[a-z0-9][a-z0-9._-]{0,63}`` and may not contain ``..``. Tags follow the part rule.
Names never become file paths, but they are still kept free of traversal-like forms
so they are safe wherever a remote or an export uses them.
"""

from __future__ import annotations

import re

from ..errors import InvalidNameError

PART_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
NAME_RULE = "lowercase [a-z0-9][a-z0-9._-]{0,63}, optionally namespace/name"


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _check_part(part: str, whole: str, what: str) -> None:
    if not PART_RE.fullmatch(part) or ".." in part:
        raise InvalidNameError(f"invalid {what} {_shown(whole)}: use {NAME_RULE}")


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid subject name, else raise InvalidNameError."""
    if not isinstance(name, str) or not name:
        raise InvalidNameError(f"invalid subject name {_shown(str(name or ''))}: empty (use {NAME_RULE})")
    parts = name.split("/")
    if len(parts) > 2:
        raise InvalidNameError(f"invalid subject name {_shown(name)}: at most one '/' (namespace/name)")
    for part in parts:
        _check_part(part, name, "subject name")
    return name


def validate_tag(tag: str) -> str:
    """Return ``tag`` if it is a valid tag name (one part), else raise InvalidNameError."""
    if not isinstance(tag, str) or not tag:
        raise InvalidNameError("invalid tag '': empty")
    _check_part(tag, tag, "tag")
    if tag.isdigit():
        raise InvalidNameError(f"invalid tag {_shown(tag)}: all digits would read as a version")
    if tag[0] == "v" and tag[1:].isdigit():
        # On a Hub remote, tag vN *is* version N (name:v3 == name@3); a local tag of that
        # name pointing elsewhere would make the same ref mean two things.
        raise InvalidNameError(f"invalid tag {_shown(tag)}: v<number> is reserved for versions (use @{tag[1:]})")
    return tag


def validate_pushable_name(name: str) -> str:
    """Refuse names the Hub would refuse as repo names (checked at ``add``, so every name can be pushed).

    Hugging Face repo names may not start or end with ``-`` or ``.`` and may not contain
    ``--`` or ``..``.
    """
    for part in name.split("/"):
        if part[-1] in "-." or "--" in part:
            raise InvalidNameError(
                f"invalid subject name {_shown(name)}: a Hub repo name cannot end with '-' or '.' "
                "or contain '--' (it could not be pushed)"
            )
    return name
