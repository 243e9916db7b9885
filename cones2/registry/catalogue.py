"""The subject catalogue: the Python API behind ``cones2 add/list/show/...``.

Versions are integers 1, 2, 3, ... per subject, allocated inside the write
transaction and never reused (``subjects.last_version``). A version is immutable: the
same content again returns the existing version; other content under an existing
version number is refused. References: see :mod:`cones2.registry.refs`.

Crash safety: the blob is stored (atomically) before the row that points to it is
committed, and checked again inside the write transaction, so a catalogue row never
points to a missing blob; ``gc`` deletes unreferenced blobs under the same write lock.

The class is assembled by responsibility: :mod:`.records` (row shapes), :mod:`.reads`,
:mod:`.writes` and :mod:`.maintenance`; this module opens it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .database import Database, default_url
from .maintenance import CatalogueMaintenance
from .records import SubjectSummary, VersionRecord
from .store import BlobStore

__all__ = ["Catalogue", "SubjectSummary", "VersionRecord", "open_catalogue"]


class Catalogue(CatalogueMaintenance):
    """A catalogue database plus its blob store. Use :func:`open_catalogue`."""

    def __init__(self, home: Path, url: str, *, allow_new: bool = False) -> None:
        self.home = home
        self.url = url
        self.store = BlobStore(home / "blobs")
        self.db = Database(url, home)
        self.db.open(on_new=None if allow_new else self._refuse_new)

    def _refuse_new(self) -> None:
        """An empty catalogue next to stored blobs was emptied or lost, not new: never start over silently."""
        count = sum(1 for _ in self.store.iter_digests())
        if not count:
            return
        state = "is empty"
        if self.db.path is not None:
            state = "is missing" if not self.db.path.exists() else f"is empty ({self.db.path.stat().st_size} bytes, no schema)"
        raise self.db.damaged(f"{state} but {self.store.objects} holds {count} blob(s)")

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_catalogue(home: str | os.PathLike[str] | None = None, url: str | None = None, *, allow_new: bool = False) -> Catalogue:
    """Open (creating and migrating as needed) the catalogue of ``home``.

    ``url``: any SQLAlchemy URL; default ``$CONES2_DATABASE_URL``, the config file's
    ``database_url``, else ``sqlite:///<home>/catalogue.db``. Blobs live in ``<home>/blobs``.
    A missing or empty catalogue next to a blob store that holds content is refused
    (:class:`~cones2.errors.CatalogueDamagedError`) unless ``allow_new`` (``cones2 doctor``).
    """
    home_path, resolved = catalogue_location(home, url)
    return Catalogue(home_path, resolved, allow_new=allow_new)


def catalogue_location(home: str | os.PathLike[str] | None = None, url: str | None = None) -> tuple[Path, str]:
    """The home folder and database URL :func:`open_catalogue` would use."""
    from .. import config

    home_path = Path(home).expanduser() if home is not None else config.home()
    if url is None:
        url = os.environ.get(config.ENV_DATABASE_URL)
    if url is None and (home_path / config.CONFIG_FILE).is_file():
        url = config.load_config().database_url if home is None else config._str(config._read_file(home_path / config.CONFIG_FILE).get("database_url"))
    return home_path, url or default_url(home_path)
