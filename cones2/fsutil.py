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


def clear_output_folder(directory: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Make ``directory`` ready to be written: an empty or missing folder as it is; a non-empty
    one removed when ``overwrite``, else refused with one line."""
    import shutil

    from .errors import UsageError

    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        if not overwrite:
            raise UsageError(f"{directory} exists and is not empty (use overwrite=True / --force)")
        shutil.rmtree(directory)
    return directory


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


def check_writable_folder(folder: str | os.PathLike[str]) -> None:
    """Refuse, with one line, a folder that cannot be created or written; leave nothing behind.

    Used before long work whose output goes there, so a doomed run fails at once and a
    failed run leaves no empty folders: missing folders are created to prove they can be,
    then removed again (the output step creates them for real).
    """
    from .errors import UsageError

    target = Path(folder).absolute()
    missing = []
    probe = target
    while not probe.exists() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(20, "not a folder", str(probe))
        for made in reversed(missing):
            made.mkdir()
        if not os.access(target, os.W_OK | os.X_OK):
            raise PermissionError(13, "not writable", str(target))
    except OSError as exc:
        raise UsageError(f"cannot write to {folder}: {exc.strerror or exc}") from None
    finally:
        for made in missing:
            with contextlib.suppress(OSError):
                made.rmdir()
