"""One reference syntax for every command and API call.

==========================  ================================================
``dog-max``                 tag ``latest`` if set, else the highest version
``dog-max@3``               version 3 (versions are integers 1, 2, 3, ...)
``dog-max:stable``          the version tag ``stable`` points to
``dog-max:v3``              version 3, as on a Hub remote (tags ``vN`` are versions)
``dog-max@sha256:0123ab..``  the version whose blob hash starts with the prefix
                            (at least 12 hex characters, unambiguous)
==========================  ================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import InvalidNameError, UsageError
from .names import validate_name, validate_tag

DIGEST_PREFIX = "sha256:"
MIN_DIGEST_PREFIX = 12
_HEX_RE = re.compile(r"[0-9a-f]{12,64}")
LATEST = "latest"
MAX_VERSION = 999_999_999  # nine digits: the most a reference (name@N) can name
_NUMBER_RE = re.compile(r"[0-9]{1,9}")  # ASCII only: str.isdigit() accepts '²', which int() refuses


def _version_number(text: str) -> int | None:
    """The version a reference's ``N`` (of ``@N`` or ``:vN``) names; None unless 1..MAX_VERSION."""
    return int(text) if _NUMBER_RE.fullmatch(text) and int(text) >= 1 else None


@dataclass(frozen=True)
class Ref:
    """A parsed reference: a subject name plus at most one selector."""

    name: str
    version: int | None = None
    tag: str | None = None
    digest: str | None = None  # lowercase hex prefix, 12..64 characters

    @property
    def is_bare(self) -> bool:
        return self.version is None and self.tag is None and self.digest is None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.tag is not None:
            return f"{self.name}:{self.tag}"
        if self.digest is not None:
            return f"{self.name}@{DIGEST_PREFIX}{self.digest}"
        return self.name


def parse_ref(text: str) -> Ref:
    """Parse ``name``, ``name@N``, ``name:tag`` or ``name@sha256:<hex prefix>``."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidNameError("invalid reference '': empty")
    text = text.strip()
    if "@" in text:
        name, _, selector = text.partition("@")
        validate_name(name)
        if selector.startswith(DIGEST_PREFIX):
            digest = selector[len(DIGEST_PREFIX) :]
            if not _HEX_RE.fullmatch(digest):
                raise InvalidNameError(
                    f"invalid reference {text!r}: digest must be {MIN_DIGEST_PREFIX} to 64 lowercase hex characters"
                )
            return Ref(name, digest=digest)
        version = _version_number(selector)
        if version is None:
            raise InvalidNameError(
                f"invalid reference {text!r}: version must be a positive integer (name@3) or name@sha256:<hex>"
            )
        return Ref(name, version=version)
    if ":" in text:
        name, _, tag = text.partition(":")
        validate_name(name)
        version = _version_number(tag[1:]) if tag[:1] == "v" else None
        if version is not None:
            return Ref(name, version=version)  # same meaning as on a Hub remote
        validate_tag(tag)
        return Ref(name, tag=tag)
    validate_name(text)
    return Ref(text)


def check_version(version: int | None) -> None:
    """Refuse a requested version number no ref could name (None: the next one)."""
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION):
        raise UsageError(f"version must be an integer from 1 to {MAX_VERSION}, not {version!r}")
