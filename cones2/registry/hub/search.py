"""``cones2 search --remote``: a library's subjects, from the Hub's model listing.

The listing is filtered by author (the remote's namespace) and the ``cones2-subject``
tag that every pushed model card carries; TEXT is the Hub's own search (repo names).
Each hit says whether it was made for the local base model (card tag
``cones2-base:<fingerprint prefix>``), without downloading anything.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from .client import HubClient
from .manifest import BASE_TAG_PREFIX, LIBRARY_NAME, SUBJECT_TAG
from .remotes import get_remote


@dataclass(frozen=True)
class RemoteSubject:
    repo: str
    name: str
    remote: str
    tags: tuple[str, ...]
    base_prefix: str | None
    compatible: bool | None  # with the local base model; None when unknown
    last_modified: str | None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "tags": list(self.tags), "source": "remote"}


def search_remote(text: str | None = None, *, remote: str | None = None, limit: int | None = 100) -> list[RemoteSubject]:
    r = get_remote(remote)
    client = HubClient(r.url)
    found = client.list_subject_repos(r.namespace, search=(text or "").strip() or None, filters=(SUBJECT_TAG,))
    fingerprint: str | None
    try:
        from ...base_model import model_info

        fingerprint = model_info(None).fingerprint
    except Exception:  # no usable base model here: compatibility unknown
        fingerprint = None
    out = []
    for m in sorted(found, key=lambda m: m.id):
        tags = tuple(t for t in (m.tags or []) if t not in (LIBRARY_NAME, SUBJECT_TAG))
        base = next((t[len(BASE_TAG_PREFIX) :] for t in tags if t.startswith(BASE_TAG_PREFIX)), None)
        compatible = None if base is None or fingerprint is None else fingerprint.startswith(base)
        modified = getattr(m, "last_modified", None) or getattr(m, "lastModified", None)
        out.append(
            RemoteSubject(m.id, m.id.rsplit("/", 1)[-1], r.name, tags, base, compatible, str(modified) if modified else None)
        )
    return out[:limit] if limit else out
