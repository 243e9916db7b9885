"""Catalogue maintenance: garbage collection, verification and export of blobs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import RegistryError
from .records import _FROM
from .writes import CatalogueWrites


class CatalogueMaintenance(CatalogueWrites):
    """gc, verify and export on top of reads and writes."""

    def _referenced(self) -> set[str]:
        return {r[0] for r in self.db.query("SELECT DISTINCT sha256 FROM versions")}

    def gc(self, dry_run: bool = False, *, temp_grace_s: float = 3600.0, force: bool = False) -> dict[str, Any]:
        """Delete blobs no version points to (and stale temp files of interrupted writes).

        A catalogue without a single version next to stored blobs looks emptied rather than
        cleaned up: then gc only reports (``refused`` says why) unless ``force``.
        """
        removed: list[str] = []
        freed = 0
        refused = None
        if not dry_run and not force and not self._referenced() and any(True for _ in self.store.iter_digests()):
            dry_run = True
            refused = (
                f"the catalogue has no versions but {self.store.objects} holds blobs: nothing deleted "
                "(was the catalogue emptied? see `cones2 doctor`); pass --force to delete them all"
            )

        def sweep() -> None:
            nonlocal freed
            referenced = self._referenced()
            if not dry_run and not force and not referenced and any(True for _ in self.store.iter_digests()):
                raise RegistryError("gc: the catalogue has no versions any more; nothing deleted (pass --force)")
            for digest in sorted(self.store.iter_digests()):
                if digest in referenced:
                    continue
                removed.append(digest)
                if dry_run:
                    freed += self.store.path(digest).stat().st_size
                else:
                    freed += self.store.delete(digest)

        temps = self.store.temp_files(temp_grace_s)
        if dry_run:
            sweep()
        else:
            try:
                with self.db.write():  # hold the write lock: no add can commit a row meanwhile
                    sweep()
                    for tmp in temps:
                        tmp.unlink(missing_ok=True)
            except OSError as exc:
                raise RegistryError(f"gc cannot delete from {self.store.root}: {exc.strerror or exc}") from None
        out: dict[str, Any] = {"dry_run": dry_run, "removed": removed, "bytes": freed, "temp_files": len(temps)}
        if refused:
            out["refused"] = refused
        return out

    def verify(self) -> dict[str, Any]:
        """Rehash every blob; report missing and corrupt ones with the versions they hold."""
        refs: dict[str, list[str]] = {}
        for name, number, sha in self.db.query("SELECT s.name, v.version, v.sha256 " + _FROM + " ORDER BY s.name, v.version"):
            refs.setdefault(sha, []).append(f"{name}@{number}")
        on_disk = set(self.store.iter_digests())
        missing, corrupt, unreferenced = [], [], []
        for sha in sorted(set(refs) | on_disk):
            state = self.store.check(sha)
            entry = {"sha256": sha, "refs": refs.get(sha, [])}
            if state == "missing":
                missing.append(entry)
            elif state == "corrupt":
                corrupt.append(entry)
            elif sha not in refs:
                unreferenced.append(sha)
        return {
            "ok": not missing and not corrupt,
            "checked": len(set(refs) | on_disk),
            "missing": missing,
            "corrupt": corrupt,
            "unreferenced": unreferenced,
        }

    def export(self, ref: str, path: str | os.PathLike[str]) -> Path:
        """Write the residual file of ``ref`` (verified) to ``path`` (a file or folder)."""
        from ..fsutil import atomic_write_bytes

        record = self.resolve(ref)
        data = self.read_blob(record.sha256)
        target = Path(path)
        if target.is_dir():
            target = target / f"{record.name.replace('/', '--')}@{record.version}.safetensors"
        try:
            return atomic_write_bytes(target, data)
        except OSError as exc:
            raise RegistryError(f"cannot write {target}: {exc.strerror or exc}") from None
