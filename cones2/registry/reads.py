"""Catalogue reads: resolve references, list, search and show (plain SQL, no ORM)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import BaseModelMismatchError, NotFoundError, UsageError
from .database import Database, to_iso
from .names import validate_name
from .records import _FROM, _VERSION_COLS, SubjectSummary, VersionRecord, _like_escape, _record
from .refs import LATEST, Ref, parse_ref
from .store import BlobStore

if TYPE_CHECKING:
    from ..residual_file import ResidualFile


class CatalogueReads:
    """Read-only queries of a catalogue; :class:`~cones2.registry.catalogue.Catalogue` adds writes."""

    home: Path
    url: str
    store: BlobStore
    db: Database

    # ------------------------------------------------------------------ blobs

    def blob_path(self, sha256: str) -> Path:
        return self.store.path(sha256)

    def read_blob(self, sha256: str) -> bytes:
        """The blob's bytes, verified against the hash (IntegrityError if not)."""
        return self.store.read(sha256)

    # ------------------------------------------------------------------ reads

    def _subject_id(self, name: str) -> int:
        rows = self.db.query("SELECT id FROM subjects WHERE name = :n", {"n": name})
        if not rows:
            raise NotFoundError(f"unknown subject {name!r} (see `cones2 list`)")
        return int(rows[0][0])

    def _tags_of(self, version_id: int) -> tuple[str, ...]:
        rows = self.db.query("SELECT name FROM tags WHERE version_id = :v ORDER BY name", {"v": version_id})
        return tuple(r[0] for r in rows)

    def _find(self, ref: Ref) -> Sequence[Any]:
        sid = self._subject_id(ref.name)
        base = f"SELECT {_VERSION_COLS} {_FROM} WHERE v.subject_id = :s"
        if ref.version is not None:
            rows = self.db.query(base + " AND v.version = :n", {"s": sid, "n": ref.version})
            if not rows:
                raise NotFoundError(f"unknown reference {ref}: {ref.name} has no version {ref.version}{self._known_versions(sid)}")
            return rows[0]
        if ref.tag is not None:
            rows = self.db.query(
                base + " AND v.id = (SELECT t.version_id FROM tags t WHERE t.subject_id = :s AND t.name = :t)",
                {"s": sid, "t": ref.tag},
            )
            if not rows:
                raise NotFoundError(f"unknown reference {ref}: {ref.name} has no tag {ref.tag!r}")
            return rows[0]
        if ref.digest is not None:
            lo = ref.digest
            hi = lo + "g"  # every hex string with the prefix sorts in [lo, hi)
            rows = self.db.query(base + " AND v.sha256 >= :lo AND v.sha256 < :hi ORDER BY v.version DESC", {"s": sid, "lo": lo, "hi": hi})
            if not rows:
                raise NotFoundError(f"unknown reference {ref}: no version of {ref.name} has that digest")
            if len({r[2] for r in rows}) > 1:
                raise NotFoundError(f"ambiguous reference {ref}: the prefix matches {len(rows)} versions; give more hex digits")
            return rows[0]
        rows = self.db.query(
            base + " AND v.id = (SELECT t.version_id FROM tags t WHERE t.subject_id = :s AND t.name = :t)",
            {"s": sid, "t": LATEST},
        )
        if not rows:
            rows = self.db.query(base + " ORDER BY v.version DESC LIMIT 1", {"s": sid})
        if not rows:
            raise NotFoundError(f"unknown reference {ref}: subject {ref.name} has no versions")
        return rows[0]

    def _known_versions(self, sid: int) -> str:
        rows = self.db.query("SELECT version FROM versions WHERE subject_id = :s ORDER BY version", {"s": sid})
        if not rows:
            return " (it has no versions)"
        nums = [str(r[0]) for r in rows]
        return f" (versions: {', '.join(nums[:10])}{', ...' if len(nums) > 10 else ''})"

    def model_ids(self, fingerprint: str) -> list[str]:
        """Model ids and folders seen with this base-model fingerprint."""
        rows = self.db.query(
            "SELECT model_id FROM base_model_ids WHERE fingerprint = :f ORDER BY first_seen, id", {"f": fingerprint}
        )
        return [r[0] for r in rows]

    def _models_text(self, fingerprint: str, extra: str | None = None) -> str:
        ids = self.model_ids(fingerprint)
        if extra and extra not in ids:
            ids.insert(0, extra)
        return ", ".join(ids[:3]) if ids else "model unknown to this catalogue"

    def resolve(self, ref: str, *, base_fingerprint: str | None = None, base_model: str | None = None) -> VersionRecord:
        """The version ``ref`` names; with ``base_fingerprint``, refused unless it was made for it."""
        parsed = parse_ref(ref)
        row = self._find(parsed)
        record = _record(row, self._tags_of(int(row[17])))
        if base_fingerprint is not None and record.base_fingerprint != base_fingerprint:
            raise BaseModelMismatchError(
                f"{record.ref} was learned on base model {record.base_fingerprint[:12]} "
                f"({self._models_text(record.base_fingerprint, record.base_model)}), not on "
                f"{base_fingerprint[:12]} ({self._models_text(base_fingerprint, base_model)})"
            )
        return record

    def load(self, ref: str, *, base_fingerprint: str | None = None, base_model: str | None = None) -> tuple[VersionRecord, ResidualFile]:
        """Resolve ``ref``, read its blob (verified) and parse the residual."""
        from ..residual_file import parse_residual

        record = self.resolve(ref, base_fingerprint=base_fingerprint, base_model=base_model)
        data = self.read_blob(record.sha256)
        return record, parse_residual(data, source=record.ref)

    def list_versions(self, name: str) -> list[VersionRecord]:
        validate_name(name)
        sid = self._subject_id(name)
        rows = self.db.query(f"SELECT {_VERSION_COLS} {_FROM} WHERE v.subject_id = :s ORDER BY v.version", {"s": sid})
        tags: dict[int, list[str]] = {}
        for tag, vid in self.db.query("SELECT name, version_id FROM tags WHERE subject_id = :s ORDER BY name", {"s": sid}):
            tags.setdefault(int(vid), []).append(tag)
        return [_record(r, tags.get(int(r[17]), ())) for r in rows]

    def _summaries(self, where: str = "", params: dict[str, Any] | None = None, limit: int | None = None) -> list[SubjectSummary]:
        lim = f" LIMIT {int(limit)}" if limit else ""
        subjects = self.db.query(
            "SELECT s.id, s.name, s.word, s.description, s.created_at, "
            "(SELECT count(*) FROM versions v WHERE v.subject_id = s.id), "
            "(SELECT max(v.version) FROM versions v WHERE v.subject_id = s.id) "
            f"FROM subjects s {where} ORDER BY s.name{lim}",
            params,
        )
        if not subjects:
            return []
        ids = [int(r[0]) for r in subjects]
        if len(ids) <= 500:
            marks = ", ".join(f":i{i}" for i in range(len(ids)))
            tag_rows = self.db.query(
                f"SELECT t.subject_id, t.name, v.version FROM tags t JOIN versions v ON v.id = t.version_id WHERE t.subject_id IN ({marks})",
                {f"i{i}": sid for i, sid in enumerate(ids)},
            )
        else:
            tag_rows = self.db.query("SELECT t.subject_id, t.name, v.version FROM tags t JOIN versions v ON v.id = t.version_id")
        tags: dict[int, dict[str, int]] = {}
        for sid, tag, version in tag_rows:
            tags.setdefault(sid, {})[tag] = version
        out = []
        for sid, name, word, description, created, count, highest in subjects:
            subject_tags = tags.get(sid)
            subject_tags = dict(sorted(subject_tags.items())) if subject_tags else {}
            latest = subject_tags.get(LATEST, highest)
            out.append(SubjectSummary(name, word, description, to_iso(created) or "", count, latest, subject_tags))
        return out

    def list_subjects(self, prefix: str | None = None) -> list[SubjectSummary]:
        """Every subject (or those whose name starts with ``prefix``), by name."""
        if prefix:
            return self._summaries("WHERE s.name >= :lo AND s.name < :hi", {"lo": prefix, "hi": prefix + "\uffff"})
        return self._summaries()

    def search(self, text: str, *, limit: int | None = 100) -> list[SubjectSummary]:
        """Subjects whose name, word, description or any version's metadata contains ``text``.

        Case-insensitive substring match over the local catalogue (a remote search is
        a separate source that callers may merge in).
        """
        needle = (text or "").strip().lower()
        if not needle:
            raise UsageError("search text is empty")
        if not any(c.isalnum() for c in needle):
            raise UsageError(f"search text {text!r} has no letter or digit: it would match everything")
        return self._summaries(
            "WHERE s.search_text LIKE :p ESCAPE '\\'", {"p": f"%{_like_escape(needle)}%"}, limit=limit
        )

    def show(self, ref: str) -> dict[str, Any]:
        """The resolved version plus its subject: versions, tags and tag history."""
        record = self.resolve(ref)
        sid = self._subject_id(record.name)
        subject = self.db.query("SELECT name, word, description, created_at FROM subjects WHERE id = :s", {"s": sid})[0]
        versions = self.db.query(
            "SELECT version, sha256, size, created_at FROM versions WHERE subject_id = :s ORDER BY version", {"s": sid}
        )
        tag_rows = self.db.query(
            "SELECT t.name, v.version, t.updated_at FROM tags t JOIN versions v ON v.id = t.version_id WHERE t.subject_id = :s ORDER BY t.name",
            {"s": sid},
        )
        history = self.db.query(
            "SELECT tag, action, version, sha256, at FROM tag_events WHERE subject_id = :s ORDER BY id", {"s": sid}
        )
        return {
            "ref": record.ref,
            "version": record.to_dict(),
            "subject": {"name": subject[0], "word": subject[1], "description": subject[2], "created_at": to_iso(subject[3])},
            "versions": [{"version": int(v), "sha256": h, "size": int(n), "created_at": to_iso(c)} for v, h, n, c in versions],
            "tags": {t: int(v) for t, v, _ in tag_rows},
            "tag_history": [
                {"tag": t, "action": a, "version": v, "sha256": h, "at": to_iso(at)} for t, a, v, h, at in history
            ],
            "base_models": self.model_ids(record.base_fingerprint),
        }

    def base_models(self) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT fingerprint, hidden_size, first_seen FROM base_models ORDER BY first_seen")
        return [{"fingerprint": f, "hidden_size": h, "first_seen": to_iso(t), "ids": self.model_ids(f)} for f, h, t in rows]
