"""Content-addressed blob store: ``blobs/sha256/<hex>``.

Blobs are written atomically (temp file in ``blobs/tmp``, fsync, rename, folder fsync),
made read-only once in place, stored once per content, and verified against their
hash on every read. A process killed mid-write leaves at most a temp file, which
:meth:`BlobStore.temp_files` lists for ``gc`` to remove; never a partial blob.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import IntegrityError, RegistryError
from ..fsutil import atomic_write_bytes

HEX_RE = re.compile(r"[0-9a-f]{64}")
BLOB_MODE = 0o444


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "sha256"
        self.tmp = root / "tmp"

    def path(self, sha256: str) -> Path:
        if not HEX_RE.fullmatch(sha256):
            raise RegistryError(f"invalid blob digest {sha256!r}")
        return self.objects / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Store ``data`` once; returns its sha256. A damaged copy in place is replaced."""
        digest = sha256 or sha256_hex(data)
        target = self.path(digest)
        if target.is_file():
            try:
                if sha256_hex(target.read_bytes()) == digest:
                    return digest
            except OSError:
                pass
        try:
            atomic_write_bytes(target, data, mode=BLOB_MODE, tmp_dir=self.tmp)
        except OSError as exc:
            raise RegistryError(f"cannot write blob {digest[:12]} to {self.root}: {exc.strerror or exc}") from None
        return digest

    def _stored(self, sha256: str) -> bytes | None:
        """The stored bytes, not yet verified; None when the blob is missing."""
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RegistryError(f"cannot read blob sha256:{sha256[:12]}: {exc.strerror or exc}") from None

    def read(self, sha256: str) -> bytes:
        """The blob's bytes, refused unless they hash to ``sha256``."""
        data = self._stored(sha256)
        if data is None:
            raise IntegrityError(f"blob sha256:{sha256[:12]} is missing from {self.objects}")
        actual = sha256_hex(data)
        if actual != sha256:
            raise IntegrityError(
                f"blob sha256:{sha256[:12]} is corrupt: its content hashes to {actual[:12]} ({self.path(sha256)}); "
                "run `cones2 verify`, then re-add or pull the subject"
            )
        return data

    def check(self, sha256: str) -> str:
        """``"ok"``, ``"missing"`` or ``"corrupt"``."""
        data = self._stored(sha256)
        if data is None:
            return "missing"
        return "ok" if sha256_hex(data) == sha256 else "corrupt"

    def iter_digests(self) -> Iterator[str]:
        if not self.objects.is_dir():
            return
        for entry in os.scandir(self.objects):
            if entry.is_file() and HEX_RE.fullmatch(entry.name):
                yield entry.name

    def delete(self, sha256: str) -> int:
        target = self.path(sha256)
        try:
            size = target.stat().st_size
            target.unlink()
        except FileNotFoundError:
            return 0
        return size

    def temp_files(self, older_than_s: float = 0.0) -> list[Path]:
        if not self.tmp.is_dir():
            return []
        now = time.time()
        return [p for p in self.tmp.iterdir() if p.is_file() and now - p.stat().st_mtime >= older_than_s]
