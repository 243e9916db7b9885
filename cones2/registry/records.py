"""Row shapes of the catalogue: the records its reads return and the helpers that build them."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UsageError
from .database import to_iso

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

