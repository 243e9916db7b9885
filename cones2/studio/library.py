"""What the studio's Library tab and subject pickers read: catalogue, remotes, pulls.

Every answer is built from the catalogue's own ``to_dict()`` results, so the page shows
what ``cones2 list/search/show --json`` print.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .adapter import prompt_words

LIMIT = 200


def _fingerprint(model: str | None) -> dict[str, Any]:
    from ..base_model import model_info

    info = model_info(model)
    return {"source": info.source, "fingerprint": info.fingerprint, "is_demo": info.is_demo}


def overview(model: str | None) -> dict[str, Any]:
    """The base model in use, the presets and the configured remotes."""
    from ..registry.hub.remotes import list_remotes
    from ..sampler.presets import PRESETS
    from ..sampler.preview import PALETTE

    return {
        "model": _fingerprint(model),
        "palette": [list(c) for c in PALETTE],
        "presets": {name: s.to_dict() for name, s in PRESETS.items()},
        "remotes": [r.to_dict() for r in list_remotes()],
    }


def subjects(query: str = "", model: str | None = None) -> dict[str, Any]:
    """Subjects (all, or those matching ``query``) with every version, its tags and whether
    it was learned on the base model in use."""
    from ..registry import open_catalogue

    fingerprint = _fingerprint(model)["fingerprint"]
    out = []
    with open_catalogue() as cat:
        found = cat.search(query, limit=LIMIT) if query.strip() else cat.list_subjects()[:LIMIT]
        for summary in found:
            versions = []
            for record in cat.list_versions(summary.name):
                versions.append({
                    "version": record.version, "ref": record.ref, "tags": list(record.tags), "word": record.word,
                    "sha256": record.sha256, "base_model": record.base_model, "created_at": record.created_at,
                    "compatible": record.base_fingerprint == fingerprint,
                    "source": record.provenance.get("kind"),
                })
            item = summary.to_dict()
            item["version_list"] = versions
            item["compatible"] = any(v["compatible"] for v in versions)
            out.append(item)
    return {"query": query, "subjects": out, "fingerprint": fingerprint}


def words(prompt: str, model: str | None = None) -> dict[str, Any]:
    """The words of ``prompt`` that some subject in the library was learned for, with those subjects."""
    listing = subjects("", model)["subjects"]
    offered = []
    for word in prompt_words(prompt):
        choices = []
        for subject in listing:
            for v in reversed(subject["version_list"]):
                if v["word"].lower() == word:
                    choices.append({"name": subject["name"], "ref": subject["name"], "latest": subject["latest"],
                                    "compatible": subject["compatible"], "tags": subject["tags"]})
                    break
        if choices:
            offered.append({"word": word, "subjects": choices})
    return {"prompt": prompt, "words": offered, "all_words": prompt_words(prompt)}


def pull_work(ref: str | None, remote: str | None) -> Callable[[Callable[[int, int, str], None]], Any]:
    """The job that pulls ``ref`` (or every subject of the remote) with progress."""

    def work(progress: Callable[[int, int, str], None]) -> Any:
        from ..registry import hub

        if ref:
            progress(0, 1, f"pulling {ref}")
            result = hub.pull(ref, remote=remote)
            progress(1, 1, f"{result.status} {result.ref}")
            return {"results": [result.to_dict()]}
        results = hub.pull_all(None, remote=remote, progress=lambda done, total, label: progress(done, total, label))
        return {"results": [r.to_dict() for r in results]}

    return work
