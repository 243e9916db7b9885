"""Pull subject versions from the Hub into the local catalogue.

Order of checks, so that nothing wrong ever enters the store:

1. the manifest (``cones2.json``, a few hundred bytes) at the requested revision;
2. its base-model fingerprint against the local base model (refused on mismatch,
   before any residual byte is downloaded);
3. the catalogue: a version already present with the same sha256 ends the pull (no
   residual bytes move); present with other content is a conflict;
4. the residual through huggingface_hub's cache (resumable, offline-capable), at the
   exact commit the manifest came from; its sha256 and size must match the manifest
   (a cached copy that does not is downloaded again once, then refused);
5. only then :meth:`Catalogue.add_bytes` with provenance (remote, repo, commit).

A pull killed before step 5 leaves the catalogue and the store as they were (at most
a partial download in the Hub cache, which the next pull resumes).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from ...errors import (
    BaseModelMismatchError,
    Cones2Error,
    ConflictError,
    IntegrityError,
    NotFoundError,
    RemoteError,
)
from .client import HubClient, is_offline
from .manifest import (
    MANIFEST_FILE,
    MAX_MANIFEST_BYTES,
    RESIDUAL_FILE,
    SUBJECT_TAG,
    Manifest,
    parse_manifest,
    tag_version,
    version_tag,
)
from .target import parse_target, remote_for

_COMMIT_RE = re.compile(r"[0-9a-f]{40}")
LATEST_TAG = "latest"


@dataclass(frozen=True)
class PullResult:
    name: str  # local subject name
    version: int
    sha256: str
    repo: str
    commit: str | None
    remote: str | None
    status: str  # "pulled" | "present" | "skipped" | "failed"
    tag: str | None = None
    reason: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ref": self.ref}


@dataclass(frozen=True)
class _Fetched:
    manifest: Manifest
    commit: str | None
    label: str
    data: bytes | None  # None when the catalogue already has it


def _base_info() -> Any:
    from ...base_model import model_info

    return model_info(None)


def _choose_label(tags: dict[str, str], repo_id: str) -> str:
    """Revision a bare ref names: the Hub tag ``latest`` if set, else the highest ``vN``."""
    if LATEST_TAG in tags:
        return LATEST_TAG
    versions = [n for n in (tag_version(t) for t in tags) if n is not None]
    if not versions:
        raise NotFoundError(f"{repo_id} has no cones2 versions (no v1, v2, ... tags)")
    return version_tag(max(versions))


def _check_base(manifest: Manifest, source: str, info: Any) -> None:
    if manifest.base_fingerprint != info.fingerprint:
        made_for = f" ({manifest.base_model})" if manifest.base_model else ""
        raise BaseModelMismatchError(
            f"{source}: made for base model {manifest.base_fingerprint[:12]}{made_for}, not for the local base model "
            f"{info.fingerprint[:12]} ({info.source}); refused, nothing stored (set CONES2_BASE_MODEL to the model it was made for)"
        )
    from ...tokencheck import check_word_ids

    check_word_ids(info.path, manifest.word, manifest.token_ids, source, info.source)


def _local(cat: Any, name: str, version: int) -> Any | None:
    try:
        return cat.resolve(f"{name}@{version}")
    except NotFoundError:
        return None


def _fetch_manifest(client: HubClient, repo_id: str, label: str) -> tuple[Manifest, str | None]:
    path = client.download(repo_id, MANIFEST_FILE, label)
    commit = path.parent.name if _COMMIT_RE.fullmatch(path.parent.name) else None
    source = f"{repo_id}@{label}"
    if path.stat().st_size > MAX_MANIFEST_BYTES:  # checked before reading it whole
        raise RemoteError(f"{source}: {MANIFEST_FILE} is {path.stat().st_size} bytes, more than a manifest can be; refused")
    manifest = parse_manifest(path.read_bytes(), source)
    expected = tag_version(label)
    if expected is not None and manifest.version != expected:
        raise RemoteError(f"{source}: the manifest says version {manifest.version}, the tag says {expected}; refused")
    return manifest, commit


def _fetch_residual(client: HubClient, repo_id: str, revision: str, manifest: Manifest, source: str) -> bytes:
    def ok(data: bytes) -> bool:
        return len(data) == manifest.size and hashlib.sha256(data).hexdigest() == manifest.sha256

    data = client.download(repo_id, RESIDUAL_FILE, revision).read_bytes()
    if not ok(data) and not is_offline():  # a stale or damaged cache entry: fetch it afresh once
        data = client.download(repo_id, RESIDUAL_FILE, revision, force=True).read_bytes()
    if not ok(data):
        got = hashlib.sha256(data).hexdigest()
        raise IntegrityError(
            f"{source}: {RESIDUAL_FILE} has sha256 {got[:12]} ({len(data)} bytes) but the manifest says "
            f"{manifest.sha256[:12]} ({manifest.size} bytes); refused, nothing stored"
        )
    return data


def _fetch(client: HubClient, repo_id: str, label: str, info: Any, present: Callable[[Manifest], bool]) -> _Fetched:
    """Network half of a pull: manifest, checks, residual (unless ``present``). No catalogue writes."""
    manifest, commit = _fetch_manifest(client, repo_id, label)
    source = f"{repo_id}@{label}"
    _check_base(manifest, source, info)
    if present(manifest):
        return _Fetched(manifest, commit, label, None)
    data = _fetch_residual(client, repo_id, commit or label, manifest, source)
    return _Fetched(manifest, commit, label, data)


def _present_check(cat: Any, name: str) -> Callable[[Manifest], bool]:
    def present(manifest: Manifest) -> bool:
        rec = _local(cat, name, manifest.version)
        if rec is None:
            return False
        if rec.sha256 != manifest.sha256:
            raise ConflictError(
                f"{name}@{manifest.version} exists locally with other content (sha256:{rec.sha256[:12]}, "
                f"the remote has {manifest.sha256[:12]}); pull it under another name with --as"
            )
        return True

    return present


def _register(cat: Any, name: str, target_repo: str, remote: str | None, fetched: _Fetched, info: Any, tag: str | None) -> PullResult:
    m = fetched.manifest
    status = "present"
    if fetched.data is not None:
        cat.add_bytes(
            fetched.data,
            name,
            base=info,
            description=m.description,
            metadata=m.metadata,
            version=m.version,
            provenance={"kind": "remote", "remote": remote, "repo": target_repo, "commit": fetched.commit},
            source=f"{target_repo}@{fetched.label}",
        )
        status = "pulled"
    if tag is not None:
        cat.tag(f"{name}@{m.version}", tag)
    return PullResult(name, m.version, m.sha256, target_repo, fetched.commit, remote, status, tag)


def pull(ref: str, *, remote: str | None = None, local_name: str | None = None, home: Any = None) -> PullResult:
    """Pull one version (``dog-max``, ``team/dog-max@3``, ``dog-max:stable``) into the catalogue.

    ``local_name``: the catalogue name to register it under (default: the repo's name).
    A Hub label tag (``:stable``) is also set locally on the pulled version.
    """
    from .. import open_catalogue
    from ..names import validate_name

    target = parse_target(ref, remote)
    name = validate_name(local_name or target.name)
    client = HubClient(target.endpoint)
    label = target.label or _choose_label(_tags(client, target.repo_id), target.repo_id)
    info = _base_info()
    remote_name = target.remote.name if target.remote else None
    with open_catalogue(home) as cat:
        fetched = _fetch(client, target.repo_id, label, info, _present_check(cat, name))
        return _register(cat, name, target.repo_id, remote_name, fetched, info, target.tag)


def _tags(client: HubClient, repo_id: str) -> dict[str, str]:
    """Tags of ``repo_id``: from the Hub, or offline from what the Hub cache has seen."""
    if is_offline():
        tags = client.cached_tags(repo_id)
        if not tags:
            raise RemoteError(f"{repo_id}: offline (HF_HUB_OFFLINE is set) and never pulled into the local Hub cache")
        return tags
    return client.refs(repo_id).tags


def pull_all(
    namespace: str | None = None,
    *,
    remote: str | None = None,
    home: Any = None,
    workers: int = 8,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[PullResult]:
    """Mirror every version of every cones2 subject in ``namespace`` (default: the remote's).

    Subjects made for another base model are skipped (status ``skipped``, with the
    reason); other failures do not stop the mirror (status ``failed``). Downloads run
    on ``workers`` threads; the catalogue is written from this thread only.
    """
    from .. import open_catalogue

    r, ns, endpoint = remote_for(namespace, remote)
    client = HubClient(endpoint)
    remote_name = r.name if r else None
    repos = sorted(m.id for m in client.list_subject_repos(ns, filters=(SUBJECT_TAG,)))
    info = _base_info()
    results: list[PullResult] = []

    def failed(repo_id: str, version: int, status: str, exc: Exception) -> PullResult:
        name = repo_id.rsplit("/", 1)[-1]
        return PullResult(name, version, "", repo_id, None, remote_name, status, reason=str(exc))

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        refs = dict(zip(repos, pool.map(lambda r: _safe(lambda: client.refs(r).tags), repos), strict=True))
        plan: list[tuple[str, str, int, str]] = []  # (repo, label, version, commit)
        local_sha: dict[tuple[str, int], str] = {}  # versions present under another commit
        with open_catalogue(home) as cat:
            for repo_id in repos:
                tags = refs[repo_id]
                if isinstance(tags, Exception):
                    results.append(failed(repo_id, 0, "failed", tags))
                    continue
                name = repo_id.rsplit("/", 1)[-1]
                for tag, commit in sorted(tags.items(), key=lambda kv: tag_version(kv[0]) or 0):
                    version = tag_version(tag)
                    if version is None:
                        continue
                    rec = _local(cat, name, version)
                    if rec is not None and rec.provenance.get("commit") == commit:
                        results.append(PullResult(name, version, rec.sha256, repo_id, commit, remote_name, "present"))
                        continue
                    if rec is not None:
                        local_sha[(name, version)] = rec.sha256
                    plan.append((repo_id, tag, version, commit))
        total, done = len(plan), 0
        if progress:
            progress(0, total, "")

        def work(item: tuple[str, str, int, str]) -> _Fetched | Exception:
            repo_id, label, version, _ = item
            have = local_sha.get((repo_id.rsplit("/", 1)[-1], version))
            return _safe(lambda: _fetch(client, repo_id, label, info, lambda m: m.sha256 == have))

        with open_catalogue(home) as cat:
            for item, fetched in zip(plan, pool.map(work, plan), strict=True):
                repo_id, label, version, _ = item
                name = repo_id.rsplit("/", 1)[-1]
                if isinstance(fetched, Exception):
                    status = "skipped" if isinstance(fetched, BaseModelMismatchError) else "failed"
                    results.append(failed(repo_id, version, status, fetched))
                else:
                    try:
                        if fetched.data is not None and _present_check(cat, name)(fetched.manifest):
                            fetched = _Fetched(fetched.manifest, fetched.commit, fetched.label, None)
                        results.append(_register(cat, name, repo_id, remote_name, fetched, info, None))
                    except Cones2Error as exc:
                        results.append(failed(repo_id, version, "failed", exc))
                done += 1
                if progress:
                    progress(done, total, f"{repo_id}@{label}")
    return results


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Cones2Error as exc:
        return exc
