"""Push local subject versions to a remote: one commit and one ``vN`` tag per version.

Concurrency: each commit names the head it was built on (``parent_commit``); when
another pusher got in first the Hub answers 412, and the push re-reads the refs and
tries again on the new head (at most :data:`MAX_ATTEMPTS` times). Version tags are
the claim on a version number: a tag is never moved, and a ``vN`` that already exists
on the remote with other content is refused. Files of every version live at the same
paths, so ``main`` shows the version pushed last and every version stays reachable
by its tag.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict, dataclass
from typing import Any

from ...errors import ConflictError, NotFoundError, RemoteError, UsageError
from ..names import validate_tag
from ..refs import parse_ref
from .client import HubClient, Refs, StaleParentError
from .manifest import (
    CARD_FILE,
    MANIFEST_FILE,
    RESIDUAL_FILE,
    Manifest,
    model_card,
    parse_manifest,
    tag_version,
    version_tag,
)
from .remotes import get_remote

MAX_ATTEMPTS = 8
RESERVED_TAGS = {"main"}


@dataclass(frozen=True)
class PushResult:
    name: str
    version: int
    sha256: str
    repo: str
    remote: str
    commit: str
    status: str  # "pushed" | "present"
    attempts: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ref": f"{self.name}@{self.version}", "tag": version_tag(self.version)}


def _backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, 0.05 * attempt))  # de-synchronise racing pushers


def _remote_manifest(client: HubClient, repo_id: str, commit: str) -> Manifest:
    path = client.download(repo_id, MANIFEST_FILE, commit)
    return parse_manifest(path.read_bytes(), f"{repo_id}@{commit[:12]}")


def _refuse_or_present(client: HubClient, repo_id: str, tag: str, commit: str, manifest: Manifest) -> bool:
    """True when the remote's ``tag`` holds this exact residual; ConflictError when it holds another."""
    theirs = _remote_manifest(client, repo_id, commit)
    if theirs.sha256 == manifest.sha256:
        return True
    raise ConflictError(
        f"{repo_id} already has version {manifest.version} (tag {tag}) with other content "
        f"(sha256:{theirs.sha256[:12]}, local sha256:{manifest.sha256[:12]}); versions are immutable: "
        "add yours locally as a new version and push that"
    )


def _push_version(client: HubClient, repo_id: str, manifest: Manifest, data: bytes, refs: Refs) -> tuple[str, str, int, Refs]:
    """Land one version; returns ``(status, commit, attempts, refs after)``."""
    tag = version_tag(manifest.version)
    files = {RESIDUAL_FILE: data, MANIFEST_FILE: manifest.to_bytes(), CARD_FILE: model_card(manifest, repo_id)}
    for attempt in range(1, MAX_ATTEMPTS + 1):
        if tag in refs.tags:
            commit = refs.tags[tag]
            _refuse_or_present(client, repo_id, tag, commit, manifest)
            return "present", commit, attempt, refs
        try:
            commit = client.commit(repo_id, files, f"cones2: {manifest.name} version {manifest.version}", refs.head)
            client.create_tag(repo_id, tag, commit)
        except StaleParentError:  # main moved, or someone tagged vN first: look again
            _backoff(attempt)
            refs = client.refs(repo_id)
            continue
        # The tag is the claim; check it holds what we pushed (a no-op commit returns the head).
        if not _refuse_or_present(client, repo_id, tag, commit, manifest):  # pragma: no cover - raises instead
            raise RemoteError(f"{repo_id}: tag {tag} does not hold the pushed version")
        return "pushed", commit, attempt, Refs({**refs.tags, tag: commit}, commit)
    raise RemoteError(f"{repo_id}: gave up pushing version {manifest.version} after {MAX_ATTEMPTS} conflicting attempts")


def push(
    ref: str,
    *,
    remote: str | None = None,
    tags: tuple[str, ...] = (),
    home: Any = None,
    private: bool | None = None,
) -> list[PushResult]:
    """Upload the versions of ``ref`` that the remote lacks.

    A bare name pushes every local version; ``name@3`` / ``name:stable`` just that one.
    The Hub repo is ``REMOTE_NAMESPACE/NAME`` (a local ``ns/name`` drops its namespace:
    the remote decides where it lands). ``tags``: Hub label tags (like ``stable``) to
    point at the version ``ref`` names; unlike version tags, these move.
    """
    from .. import open_catalogue

    r = get_remote(remote)
    parsed = parse_ref(ref)
    for t in tags:
        validate_tag(t)
        if tag_version(t) is not None or t in RESERVED_TAGS:
            raise UsageError(f"--tag {t}: version tags (v1, v2, ...) are set by push itself and never moved")
    with open_catalogue(home) as cat:
        chosen = cat.resolve(ref)
        records = cat.list_versions(parsed.name) if parsed.is_bare else [chosen]
        description = cat.show(f"{chosen.name}@{chosen.version}")["subject"].get("description")
        payload = [(rec, cat.read_blob(rec.sha256)) for rec in records]
    if not payload:
        raise NotFoundError(f"{ref}: no versions to push")
    repo_id = f"{r.namespace}/{parsed.name.rsplit('/', 1)[-1]}"
    client = HubClient(r.url)
    client.create_repo(repo_id, private=private)
    refs = client.refs(repo_id)
    results: list[PushResult] = []
    for rec, data in payload:
        manifest = Manifest.from_record(rec, description)
        status, commit, attempts, refs = _push_version(client, repo_id, manifest, data, refs)
        results.append(PushResult(rec.name, rec.version, rec.sha256, repo_id, r.name, commit, status, attempts))
    target = next(x for x in results if x.version == chosen.version) if tags else None
    for t in tags:
        assert target is not None
        if refs.tags.get(t) == target.commit:
            continue
        if t in refs.tags:
            client.delete_tag(repo_id, t)
        client.create_tag(repo_id, t, target.commit)
    if tags:  # the pusher's catalogue shows the labels it just set, as a pull would mirror them
        with open_catalogue(home) as cat:
            for t in tags:
                cat.tag(f"{chosen.name}@{chosen.version}", t)
    return results
