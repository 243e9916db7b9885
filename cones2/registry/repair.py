"""``cones2 doctor``: bring back a catalogue that was emptied, truncated or lost.

The blob store is the ground truth of what was stored: every blob is a complete residual
file carrying its own word, token ids, base-model fingerprint and user metadata. The
repair (1) moves a damaged SQLite file aside (never deletes it), (2) restores the newest
backup copy next to it (the rolling one or a pre-migration one) when there is one, and
(3) registers every blob that no version points to and that parses as a residual under
``recovered/<word>-<sha12>`` (the subject name is not stored in the blob). A healthy
catalogue is left as it is.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import CatalogueDamagedError, InvalidResidualError, RegistryError

RECOVERED_NAMESPACE = "recovered"


@dataclass
class DoctorReport:
    healthy: bool
    moved_aside: list[str] = field(default_factory=list)
    restored_from: str | None = None
    recovered: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy, "moved_aside": list(self.moved_aside), "restored_from": self.restored_from,
            "recovered": list(self.recovered), "skipped": list(self.skipped),
        }


def recovered_name(word: str, sha256: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", word.lower()).strip("-")[:40] or "subject"
    return f"{RECOVERED_NAMESPACE}/{slug}-{sha256[:12]}"


def doctor(home: str | os.PathLike[str] | None = None, url: str | None = None) -> DoctorReport:
    """Check the catalogue of ``home``; repair it from backups and blobs when it is damaged."""
    from ..residual_file import parse_residual
    from .catalogue import open_catalogue

    try:
        with open_catalogue(home, url):
            return DoctorReport(healthy=True)
    except CatalogueDamagedError:
        pass
    report = DoctorReport(healthy=False)
    with _open_for_repair(home, url, report) as cat:
        referenced = {r[0] for r in cat.db.query("SELECT DISTINCT sha256 FROM versions")}
        for digest in sorted(cat.store.iter_digests()):
            if digest in referenced:
                continue
            source = f"blob {digest[:12]}"
            try:
                data = cat.store.read(digest)
                residual = parse_residual(data, source)
                record = cat.add_bytes(data, recovered_name(residual.word, digest), check_base=False, source=source)
                report.recovered.append({"sha256": digest, "ref": record.ref})
            except (InvalidResidualError, RegistryError) as exc:
                report.skipped.append({"sha256": digest, "reason": str(exc)})
    return report


def _open_for_repair(home: str | os.PathLike[str] | None, url: str | None, report: DoctorReport) -> Any:
    """Move a damaged SQLite file aside, restore the newest usable backup, open (new if need be)."""
    from .catalogue import catalogue_location, open_catalogue
    from .database import Database

    home_path, resolved = catalogue_location(home, url)
    db = Database(resolved, home_path)
    if db.path is not None:
        copies = db.backups()
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for suffix in ("", "-wal", "-shm"):
            part = db.path.with_name(db.path.name + suffix)
            if part.exists():
                aside = part.with_name(f"{db.path.name}.damaged-{stamp}{suffix}")
                os.replace(part, aside)
                report.moved_aside.append(str(aside))
        for copy in copies:
            try:
                shutil.copyfile(copy, db.path)
                with open_catalogue(home_path, resolved):
                    report.restored_from = str(copy)
                break
            except (OSError, RegistryError):
                db.path.unlink(missing_ok=True)
    return open_catalogue(home_path, resolved, allow_new=True)
