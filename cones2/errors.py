"""One typed error hierarchy for everything cones2 refuses.

Every error carries a one-line, human-readable message and an exit code that the
CLI uses verbatim, so scripts can tell "not found" from "corrupt" without parsing text.
"""

from __future__ import annotations


class Cones2Error(Exception):
    """Base class of every error cones2 raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str) -> None:
        # Keep messages on one line: they are printed as-is by the CLI.
        super().__init__(" ".join(str(message).split()))

    @property
    def message(self) -> str:
        return str(self)


class UsageError(Cones2Error):
    """Arguments that cannot work together or a malformed option value."""

    exit_code = 2


class InvalidResidualError(Cones2Error):
    """A residual file or tensor that fails validation (format, shape, values)."""

    exit_code = 3


class TokenLocationError(Cones2Error):
    """A subject word that cannot be placed on the prompt's tokens."""

    exit_code = 4


class BaseModelError(Cones2Error):
    """A base model that cannot be found, loaded or fingerprinted."""

    exit_code = 5


class BaseModelMismatchError(BaseModelError):
    """A residual learned on another base text encoder than the one in use."""


class LayoutError(Cones2Error):
    """A layout (boxes, masks, colour image) that cannot be used for this prompt."""

    exit_code = 6


class RegistryError(Cones2Error):
    """Catalogue or blob-store failures."""

    exit_code = 7


class InvalidNameError(RegistryError):
    """A subject name or reference that breaks the naming rules."""

    exit_code = 2


class CatalogueDamagedError(RegistryError):
    """A catalogue that is empty, missing or unreadable while the blob store holds content."""


class NotFoundError(RegistryError):
    """An unknown subject, version, tag or remote."""

    exit_code = 8


class ResidualNotFoundError(NotFoundError, InvalidResidualError):
    """A residual file path that does not exist: "not found" (exit 8), like an unknown ref."""

    exit_code = 8


class ConflictError(RegistryError):
    """An operation that would change something declared immutable."""

    exit_code = 9


class IntegrityError(RegistryError):
    """Stored content whose hash does not match what the catalogue recorded."""

    exit_code = 10


class CatalogueVersionError(RegistryError):
    """A catalogue written by a newer cones2 than this one."""

    exit_code = 11


class RemoteError(Cones2Error):
    """Hub sync failures: unreachable remote, bad manifest, refused push."""

    exit_code = 12


class TrainingError(Cones2Error):
    """Training that cannot start or go on: unusable images, settings, a failed run."""

    exit_code = 13


class TrainingInterrupted(TrainingError):
    """Training stopped by the user (Ctrl-C); a resumable checkpoint was written."""

    exit_code = 130


class CompositionError(UsageError, ValueError):
    """A composition (TOML file, PNG record, options) that is malformed; names the field."""


class LockError(Cones2Error):
    """A lockfile that is stale, incomplete or does not match what it pins (``--locked``, ``--check``)."""

    exit_code = 14
