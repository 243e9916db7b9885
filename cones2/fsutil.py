"""Small filesystem helpers shared by the store, caches and exports."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(
    path: str | os.PathLike[str], data: bytes, mode: int = 0o644, tmp_dir: str | os.PathLike[str] | None = None
) -> Path:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one.

    Temp file (in ``tmp_dir``, default the target's folder; it must be on the same
    filesystem), fsync, rename, then fsync of the folder. A crash leaves at most the
    temp file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_parent = Path(tmp_dir) if tmp_dir is not None else path.parent
    tmp_parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:16]}.", suffix=".tmp", dir=tmp_parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Persist a rename inside ``directory`` (no-op where the OS cannot open folders)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
