"""The subject catalogue: the Python API behind ``cones2 add/list/show/...``.

Versions are integers 1, 2, 3, ... per subject, allocated inside the write
transaction and never reused (``subjects.last_version``). A version is immutable: the
same content again returns the existing version; other content under an existing
version number is refused. References: see :mod:`cones2.registry.refs`.

Crash safety: the blob is stored (atomically) before the row that points to it is
committed, and checked again inside the write transaction, so a catalogue row never
points to a missing blob; ``gc`` deletes unreferenced blobs under the same write lock.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    BaseModelMismatchError,
    ConflictError,
    InvalidResidualError,
    NotFoundError,
    RegistryError,
    UsageError,
)
from .database import Database, default_url, to_iso
from .names import validate_name, validate_tag
from .refs import LATEST, MAX_VERSION, Ref, parse_ref
from .store import BlobStore, sha256_hex

if TYPE_CHECKING:
    from ..base_model import BaseModelInfo
    from ..residual_file import ResidualFile

_VERSION_COLS = (
    "s.name, v.version, v.sha256, v.size, v.dtype, v.shape, v.word, v.token_ids, v.base_fingerprint, "
    "v.base_model, v.base_revision, v.metadata_json, v.provenance_kind, v.remote_name, v.remote_repo, "
    "v.remote_commit, v.created_at, v.id, s.id"
)
_FROM = "FROM versions v JOIN subjects s ON s.id = v.subject_id"


@dataclass(frozen=True)
class VersionRecord:
    """One immutable version of a subject, as the catalogue records it."""

    name: str
    version: int
    sha256: str
    size: int
    dtype: str
    shape: tuple[int, ...]
    word: str
    token_ids: tuple[int, ...]
    base_fingerprint: str
    base_model: str | None
    metadata: dict[str, Any]
    provenance: dict[str, Any]
    created_at: str
    tags: tuple[str, ...] = ()
    base_revision: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["shape"] = list(self.shape)
        data["token_ids"] = list(self.token_ids)
        data["tags"] = list(self.tags)
        data["ref"] = self.ref
        return data


@dataclass(frozen=True)
class SubjectSummary:
    """A subject with its version count, default version and tags."""

    name: str
    word: str | None
    description: str | None
    created_at: str
    versions: int
    latest: int | None  # what the bare name resolves to
    tags: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "word": self.word, "description": self.description, "created_at": self.created_at,
            "versions": self.versions, "latest": self.latest, "tags": dict(self.tags),
        }


def _record(row: Sequence[Any], tags: Sequence[str] = ()) -> VersionRecord:
    provenance: dict[str, Any] = {"kind": row[12]}
    if row[12] == "remote":
        provenance.update(remote=row[13], repo=row[14], commit=row[15])
    return VersionRecord(
        name=row[0],
        version=int(row[1]),
        sha256=row[2],
        size=int(row[3]),
        dtype=row[4],
        shape=tuple(json.loads(row[5])),
        word=row[6],
        token_ids=tuple(json.loads(row[7])),
        base_fingerprint=row[8],
        base_model=row[9],
        metadata=json.loads(row[11] or "{}"),
        provenance=provenance,
        created_at=to_iso(row[16]) or "",
        tags=tuple(tags),
        base_revision=row[10],
    )


def _search_text(name: str, word: str | None, description: str | None, metas: Sequence[str]) -> str:
    return "\n".join([name, word or "", description or "", *metas]).lower()


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _normalise_provenance(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    prov = dict(provenance or {"kind": "local"})
    kind = prov.get("kind", "local")
    if kind == "local":
        return {"kind": "local"}
    if kind == "remote":
        if not prov.get("repo"):
            raise UsageError("remote provenance needs at least 'repo' (and 'remote', 'commit')")
        return {"kind": "remote", "remote": prov.get("remote"), "repo": prov.get("repo"), "commit": prov.get("commit")}
    raise UsageError(f"provenance kind must be 'local' or 'remote', not {kind!r}")


class Catalogue:
    """A catalogue database plus its blob store. Use :func:`open_catalogue`."""

    def __init__(self, home: Path, url: str) -> None:
        self.home = home
        self.url = url
        self.store = BlobStore(home / "blobs")
        self.db = Database(url, home)
        self.db.open()

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Catalogue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

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

    # ------------------------------------------------------------------ add

    def add(
        self,
        path_or_residual: str | os.PathLike[str] | ResidualFile,
        name: str,
        *,
        word: str | None = None,
        base: str | os.PathLike[str] | BaseModelInfo | None = None,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        version: int | None = None,
        provenance: Mapping[str, Any] | None = None,
        base_revision: str | None = None,
        check_base: bool = True,
    ) -> VersionRecord:
        """Add a residual (file, legacy ``.pt`` or :class:`ResidualFile`) as a version of ``name``.

        ``base``: the base model it must belong to (folder, Hub id or BaseModelInfo;
        default: configured, else demo). A legacy ``.pt`` needs ``word`` and is converted
        with that base model's tokenizer. ``check_base=False`` records the residual's
        own fingerprint without checking it against a local model (for pulls).
        """
        from ..residual_file import ResidualFile, parse_residual, read_residual_bytes

        validate_name(name)
        info = self._base_info(base) if (check_base or base is not None) else None
        if isinstance(path_or_residual, ResidualFile):
            residual, source = path_or_residual, name
            data = residual.to_bytes()
        else:
            path = Path(path_or_residual)
            source = str(path)
            if path.suffix.lower() in (".pt", ".pth", ".bin"):
                residual = self._import_legacy(path, word, info)
                data = residual.to_bytes()
            else:
                data = read_residual_bytes(path)
                residual = parse_residual(data, source)
        return self._add(data, residual, name, source, info, word=word, description=description, metadata=metadata,
                         version=version, provenance=provenance, base_revision=base_revision)

    def add_bytes(
        self,
        data: bytes,
        name: str,
        *,
        word: str | None = None,
        base: str | os.PathLike[str] | BaseModelInfo | None = None,
        description: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        version: int | None = None,
        provenance: Mapping[str, Any] | None = None,
        base_revision: str | None = None,
        check_base: bool = True,
        source: str | None = None,
    ) -> VersionRecord:
        """Like :meth:`add` for residual bytes already in memory (e.g. downloaded); stored as given."""
        from ..residual_file import parse_residual

        validate_name(name)
        info = self._base_info(base) if (check_base or base is not None) else None
        residual = parse_residual(data, source or name)
        return self._add(bytes(data), residual, name, source or name, info, word=word, description=description,
                         metadata=metadata, version=version, provenance=provenance, base_revision=base_revision)

    def _base_info(self, base: Any) -> BaseModelInfo:
        from ..base_model import BaseModelInfo, model_info

        if isinstance(base, BaseModelInfo):
            return base
        return model_info(None if base is None else str(base))

    def _import_legacy(self, path: Path, word: str | None, info: BaseModelInfo | None) -> ResidualFile:
        if not word:
            raise UsageError(f"{path}: a legacy .pt residual needs --word (the subject's class word)")
        if info is None:
            info = self._base_info(None)
        from transformers import CLIPTokenizer

        from ..residual import word_token_ids
        from ..residual_file import import_legacy_pt

        tokenizer = CLIPTokenizer.from_pretrained(str(Path(info.path) / "tokenizer"))
        ids = word_token_ids(tokenizer, word)
        return import_legacy_pt(path, word, ids, info.fingerprint, info.hidden_size)

    def _check_base(self, residual: ResidualFile, source: str, info: BaseModelInfo) -> None:
        if residual.hidden_size != info.hidden_size:
            raise InvalidResidualError(
                f"{source}: hidden size {residual.hidden_size} does not fit base model {info.source} "
                f"(text encoder hidden size {info.hidden_size})"
            )
        if residual.base_fingerprint == info.fingerprint and max(residual.token_ids) >= info.vocab_size:
            raise InvalidResidualError(
                f"{source}: token id {max(residual.token_ids)} is outside the vocabulary of base model {info.source} "
                f"({info.vocab_size} tokens)"
            )
        if residual.base_fingerprint != info.fingerprint:
            raise BaseModelMismatchError(
                f"{source}: learned on base model {residual.base_fingerprint[:12]} "
                f"({self._models_text(residual.base_fingerprint)}), not on {info.fingerprint[:12]} ({info.source}); "
                "pass --base with the model it was made for"
            )

    def _add(
        self,
        data: bytes,
        residual: ResidualFile,
        name: str,
        source: str,
        info: BaseModelInfo | None,
        *,
        word: str | None,
        description: str | None,
        metadata: Mapping[str, Any] | None,
        version: int | None,
        provenance: Mapping[str, Any] | None,
        base_revision: str | None,
    ) -> VersionRecord:
        from sqlalchemy import select

        from .models import BaseModel, BaseModelId, Subject, Version, utcnow

        if word is not None and word != residual.word:
            raise InvalidResidualError(f"{source}: the residual is for the word {residual.word!r}, not {word!r}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= MAX_VERSION):
            raise UsageError(f"version must be an integer from 1 to {MAX_VERSION}, not {version!r}")
        if info is not None:
            self._check_base(residual, source, info)
        meta = {**residual.metadata, **dict(metadata or {})}
        try:
            meta_json = json.dumps(meta, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"metadata must be JSON-serialisable ({exc})") from None
        prov = _normalise_provenance(provenance)
        sha = sha256_hex(data)
        self.store.put(data, sha)  # before the row: a row never points to a missing blob

        with self.db.write() as session:
            subject = session.scalars(select(Subject).where(Subject.name == name)).first()
            if subject is None:
                subject = Subject(name=name, word=residual.word, description=description, created_at=utcnow(), last_version=0, search_text="")
                session.add(subject)
                session.flush()
            elif subject.word and subject.word != residual.word:
                raise ConflictError(f"subject {name} is a {subject.word!r}; this residual is for {residual.word!r}")
            elif description is not None:
                subject.description = description
            existing = None
            if version is None:
                existing = session.scalars(
                    select(Version).where(Version.subject_id == subject.id, Version.sha256 == sha).order_by(Version.version.desc())
                ).first()
            else:
                existing = session.scalars(select(Version).where(Version.subject_id == subject.id, Version.version == version)).first()
                if existing is not None and existing.sha256 != sha:
                    raise ConflictError(
                        f"{name}@{version} already exists with other content (sha256:{existing.sha256[:12]}); "
                        "versions are immutable: add it as a new version"
                    )
            if existing is not None:
                number = existing.version
                if description is not None:
                    subject.search_text = self._subject_search_text(session, subject)
            else:
                number = version if version is not None else subject.last_version + 1
                subject.last_version = max(subject.last_version or 0, number)
                if session.get(BaseModel, residual.base_fingerprint) is None:
                    session.add(BaseModel(fingerprint=residual.base_fingerprint, hidden_size=residual.hidden_size, first_seen=utcnow()))
                    session.flush()
                if info is not None and info.fingerprint == residual.base_fingerprint:
                    known = session.scalars(
                        select(BaseModelId).where(BaseModelId.fingerprint == info.fingerprint, BaseModelId.model_id == info.source)
                    ).first()
                    if known is None:
                        session.add(BaseModelId(fingerprint=info.fingerprint, model_id=info.source, first_seen=utcnow()))
                if not self.store.exists(sha):  # a concurrent gc may have removed an unreferenced copy
                    self.store.put(data, sha)
                session.add(
                    Version(
                        subject_id=subject.id,
                        version=number,
                        sha256=sha,
                        size=len(data),
                        dtype=residual.dtype,
                        shape=json.dumps(list(residual.shape)),
                        word=residual.word,
                        token_ids=json.dumps(list(residual.token_ids)),
                        base_fingerprint=residual.base_fingerprint,
                        base_model=info.source if info is not None else None,
                        base_revision=base_revision,
                        metadata_json=meta_json,
                        provenance_kind=prov["kind"],
                        remote_name=prov.get("remote"),
                        remote_repo=prov.get("repo"),
                        remote_commit=prov.get("commit"),
                        created_at=utcnow(),
                    )
                )
                session.flush()
                subject.search_text = self._subject_search_text(session, subject)
        return self.resolve(f"{name}@{number}")

    @staticmethod
    def _subject_search_text(session: Any, subject: Any) -> str:
        from sqlalchemy import select

        from .models import Version

        metas = session.scalars(select(Version.metadata_json).where(Version.subject_id == subject.id).order_by(Version.version)).all()
        return _search_text(subject.name, subject.word, subject.description, list(metas))

    # ------------------------------------------------------------------ tags

    def tag(self, ref: str, tag: str) -> dict[str, Any]:
        """Point ``tag`` at the version ``ref`` names (create or move it); history is kept."""
        from sqlalchemy import select

        from .models import Tag, TagEvent, utcnow

        validate_tag(tag)
        record = self.resolve(ref)
        row = self._find(Ref(record.name, version=record.version))
        sid, vid = int(row[18]), int(row[17])
        previous = None
        with self.db.write() as session:
            existing = session.scalars(select(Tag).where(Tag.subject_id == sid, Tag.name == tag)).first()
            if existing is not None and existing.version_id == vid:
                return {"name": record.name, "tag": tag, "version": record.version, "previous": record.version, "changed": False}
            now = utcnow()
            if existing is None:
                session.add(Tag(subject_id=sid, name=tag, version_id=vid, updated_at=now))
                action = "set"
            else:
                previous = session.execute(
                    self._version_number_sql(), {"i": existing.version_id}
                ).scalar()
                existing.version_id = vid
                existing.updated_at = now
                action = "moved"
            session.add(TagEvent(subject_id=sid, tag=tag, action=action, version=record.version, sha256=record.sha256, at=now))
        return {"name": record.name, "tag": tag, "version": record.version, "previous": previous, "changed": True}

    @staticmethod
    def _version_number_sql() -> Any:
        from sqlalchemy import text

        return text("SELECT version FROM versions WHERE id = :i")

    def untag(self, name: str, tag: str) -> dict[str, Any]:
        from sqlalchemy import select

        from .models import Tag, TagEvent, utcnow

        validate_name(name)
        validate_tag(tag)
        sid = self._subject_id(name)
        with self.db.write() as session:
            existing = session.scalars(select(Tag).where(Tag.subject_id == sid, Tag.name == tag)).first()
            if existing is None:
                raise NotFoundError(f"subject {name} has no tag {tag!r}")
            number = session.execute(self._version_number_sql(), {"i": existing.version_id}).scalar()
            session.delete(existing)
            session.add(TagEvent(subject_id=sid, tag=tag, action="removed", version=number, sha256=None, at=utcnow()))
        return {"name": name, "tag": tag, "version": number}

    # ------------------------------------------------------------------ remove, gc, verify, export

    def remove(self, ref: str) -> dict[str, Any]:
        """Remove one version (``name@3``, ``name:tag``, digest) or a whole subject (bare name).

        Blobs stay until :meth:`gc`. Tags on a removed version are removed (history kept).
        """
        from sqlalchemy import delete, select

        from .models import Subject, Tag, TagEvent, Version, utcnow

        parsed = parse_ref(ref)
        if parsed.is_bare:
            sid = self._subject_id(parsed.name)
            with self.db.write() as session:
                numbers = session.scalars(select(Version.version).where(Version.subject_id == sid).order_by(Version.version)).all()
                session.execute(delete(TagEvent).where(TagEvent.subject_id == sid))
                session.execute(delete(Tag).where(Tag.subject_id == sid))
                session.execute(delete(Version).where(Version.subject_id == sid))
                session.execute(delete(Subject).where(Subject.id == sid))
            return {"removed": "subject", "name": parsed.name, "versions": list(numbers)}
        row = self._find(parsed)
        record = _record(row)
        sid, vid = int(row[18]), int(row[17])
        with self.db.write() as session:
            tags = session.scalars(select(Tag).where(Tag.version_id == vid)).all()
            now = utcnow()
            for tag in tags:
                session.add(TagEvent(subject_id=sid, tag=tag.name, action="removed", version=record.version, sha256=record.sha256, at=now))
                session.delete(tag)
            session.flush()
            session.execute(delete(Version).where(Version.id == vid))
            subject = session.get(Subject, sid)
            if subject is not None:
                subject.search_text = self._subject_search_text(session, subject)
        return {"removed": "version", "name": record.name, "version": record.version, "sha256": record.sha256,
                "tags": sorted(t.name for t in tags)}

    def _referenced(self) -> set[str]:
        return {r[0] for r in self.db.query("SELECT DISTINCT sha256 FROM versions")}

    def gc(self, dry_run: bool = False, *, temp_grace_s: float = 3600.0) -> dict[str, Any]:
        """Delete blobs no version points to (and stale temp files of interrupted writes)."""
        removed: list[str] = []
        freed = 0

        def sweep() -> None:
            nonlocal freed
            referenced = self._referenced()
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
        return {"dry_run": dry_run, "removed": removed, "bytes": freed, "temp_files": len(temps)}

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


def open_catalogue(home: str | os.PathLike[str] | None = None, url: str | None = None) -> Catalogue:
    """Open (creating and migrating as needed) the catalogue of ``home``.

    ``url``: any SQLAlchemy URL; default ``$CONES2_DATABASE_URL``, the config file's
    ``database_url``, else ``sqlite:///<home>/catalogue.db``. Blobs live in ``<home>/blobs``.
    """
    from .. import config

    home_path = Path(home).expanduser() if home is not None else config.home()
    if url is None:
        url = os.environ.get(config.ENV_DATABASE_URL)
    if url is None and (home_path / config.CONFIG_FILE).is_file():
        url = config.load_config().database_url if home is None else config._str(config._read_file(home_path / config.CONFIG_FILE).get("database_url"))
    return Catalogue(home_path, url or default_url(home_path))
