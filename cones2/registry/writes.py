"""Catalogue writes: add versions, tag and untag, remove (ORM, under the write lock)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import (
    BaseModelMismatchError,
    ConflictError,
    InvalidResidualError,
    NotFoundError,
    UsageError,
)
from .names import validate_name, validate_pushable_name, validate_tag
from .reads import CatalogueReads
from .records import VersionRecord, _normalise_provenance, _record, _search_text
from .refs import MAX_VERSION, Ref, check_version, parse_ref
from .store import sha256_hex

if TYPE_CHECKING:
    from ..base_model import BaseModelInfo
    from ..residual_file import ResidualFile


class CatalogueWrites(CatalogueReads):
    """Adds, tags and removals on top of the reads.

    After an add, ``last_created`` says whether that call created the version (False:
    the same content was already stored, possibly by a concurrent add) and
    ``last_ignored`` lists what was given but not applied to an existing version
    (``"meta"``: versions are immutable).
    """

    last_created: bool = False
    last_ignored: list[str] = []  # noqa: RUF012 - replaced per add, never mutated in place

    # ------------------------------------------------------------------ add

    def add(
        self,
        residual: str | os.PathLike[str] | ResidualFile | bytes,
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
        """Add a residual (file, legacy ``.pt``, :class:`ResidualFile` or bytes) as a version of ``name``.

        ``base``: the base model it must belong to (folder, Hub id or BaseModelInfo;
        default: configured, else demo). A legacy ``.pt`` needs ``word`` and is converted
        with that base model's tokenizer. Bytes (e.g. downloaded) are stored as given;
        ``source`` names them (or a ResidualFile) in errors. ``check_base=False`` records the
        residual's own fingerprint without checking it against a local model (for pulls).
        """
        from ..residual_file import ResidualFile, parse_residual, read_residual_bytes

        validate_name(name)
        validate_pushable_name(name)
        info = self._base_info(base) if (check_base or base is not None) else None
        if isinstance(residual, (bytes, bytearray, memoryview)):
            source = source or name
            data = bytes(residual)
            parsed = parse_residual(data, source)
        elif isinstance(residual, ResidualFile):
            parsed, source = residual, source or name
            data = parsed.to_bytes()
        else:
            path = Path(residual)
            source = str(path)
            if path.suffix.lower() in (".pt", ".pth", ".bin"):
                parsed = self._import_legacy(path, word, info)
                data = parsed.to_bytes()
            else:
                data = read_residual_bytes(path)
                parsed = parse_residual(data, source)
        return self._add(data, parsed, name, source, info, word=word, description=description, metadata=metadata,
                         version=version, provenance=provenance, base_revision=base_revision)

    def add_bytes(self, data: bytes, name: str, **options: Any) -> VersionRecord:
        """:meth:`add` of residual bytes already in memory (e.g. downloaded), with its keyword options."""
        return self.add(bytes(data), name, **options)

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
        from ..residual_file import legacy_residual, read_legacy_pt

        array = read_legacy_pt(path, info.hidden_size)  # a refused file is refused before the tokenizer loads
        from ..tokencheck import encode_word

        return legacy_residual(array, path, word, encode_word(info.path, word), info.fingerprint)

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
        from ..tokencheck import check_word_ids

        check_word_ids(info.path, residual.word, residual.token_ids, source, info.source)

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
        if word is not None and word != residual.word:
            raise InvalidResidualError(f"{source}: the residual is for the word {residual.word!r}, not {word!r}")
        check_version(version)
        if info is not None:
            self._check_base(residual, source, info)
        meta = {**residual.metadata, **dict(metadata or {})}
        try:
            meta_json = json.dumps(meta, sort_keys=True, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise UsageError(f"metadata must be JSON-serialisable ({exc})") from None
        prov = _normalise_provenance(provenance)
        sha = sha256_hex(data)
        fresh = not self.store.exists(sha)
        self.store.put(data, sha)  # before the row: a row never points to a missing blob
        try:
            return self._add_rows(data, sha, residual, name, info, description=description, metadata=metadata,
                                  meta_json=meta_json, version=version, prov=prov, base_revision=base_revision)
        except BaseException:
            if fresh:
                self._drop_unreferenced(sha)  # a refused add stores nothing
            raise

    def _drop_unreferenced(self, sha: str) -> None:
        """Delete the blob ``sha`` unless a version refers to it (under the write lock, so no
        concurrent add can start referring to it meanwhile)."""
        from sqlalchemy import select

        from .models import Version

        with self.db.write() as session:
            if session.scalars(select(Version.id).where(Version.sha256 == sha)).first() is None:
                self.store.delete(sha)

    def _add_rows(
        self,
        data: bytes,
        sha: str,
        residual: ResidualFile,
        name: str,
        info: BaseModelInfo | None,
        *,
        description: str | None,
        metadata: Mapping[str, Any] | None,
        meta_json: str,
        version: int | None,
        prov: dict[str, Any],
        base_revision: str | None,
    ) -> VersionRecord:
        from sqlalchemy import select

        from .models import BaseModel, BaseModelId, Subject, Version, utcnow

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
            self.last_created = existing is None
            self.last_ignored = []
            if existing is not None:
                number = existing.version
                stored_meta = json.loads(existing.metadata_json or "{}")
                if any(stored_meta.get(key) != value for key, value in dict(metadata or {}).items()):
                    self.last_ignored.append("meta")  # versions are immutable: said, not silently dropped
                if description is not None:
                    subject.search_text = self._subject_search_text(session, subject)
            else:
                number = version if version is not None else subject.last_version + 1
                if number > MAX_VERSION:
                    raise UsageError(
                        f"{name} has used the highest version number ({MAX_VERSION}); nothing stored: "
                        "add it under another name or with an explicit free --version"
                    )
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
