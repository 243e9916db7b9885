"""The one place cones2 talks to huggingface_hub: endpoint, cache, offline mode, errors.

Every call passes the remote's ``endpoint`` explicitly and ``token=None`` (the client
reads ``HF_TOKEN`` or its stored login; cones2 never stores tokens). The download
cache and offline mode are read from the environment at call time (``HF_HUB_CACHE``,
``HF_HOME``, ``HF_HUB_OFFLINE``), not only when huggingface_hub was imported.
Errors come back as cones2 errors with one-line messages: ``NotFoundError`` for a
missing repo, revision or file, ``ConflictError`` for a stale parent commit,
``RemoteError`` for everything else (unreachable, offline, refused).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ... import __version__
from ...errors import ConflictError, NotFoundError, RemoteError

REPO_TYPE = "model"
_TRUE = {"1", "on", "yes", "true"}


def is_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) now, or as huggingface_hub read it at import."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return True
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> Path:
    """huggingface_hub's download cache, from the environment as it is now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hf_errors() -> Any:
    from huggingface_hub import errors

    return errors


class StaleParentError(ConflictError):
    """The branch moved since its head was read (HTTP 412/409 on commit): re-read and retry."""


@dataclass(frozen=True)
class Refs:
    tags: dict[str, str]  # tag name -> commit id
    head: str | None  # commit id of main


@contextlib.contextmanager
def translate(what: str, endpoint: str) -> Iterator[None]:
    """Turn huggingface_hub / HTTP failures during ``what`` into one-line cones2 errors."""
    from huggingface_hub import errors as hf

    from .http import RetriesExhausted, begin_operation, configure, end_operation, tries_so_far

    configure()
    token = begin_operation()
    try:
        yield
    except (ConflictError, NotFoundError, RemoteError):
        raise
    except RetriesExhausted as exc:
        raise RemoteError(f"{what}: {endpoint} failed: {exc}") from None
    except hf.OfflineModeIsEnabled:
        raise RemoteError(f"{what}: offline (HF_HUB_OFFLINE is set) and not in the local Hub cache") from None
    except hf.LocalEntryNotFoundError:
        reason = "offline (HF_HUB_OFFLINE is set)" if is_offline() else f"cannot reach {endpoint}"
        raise RemoteError(f"{what}: {reason} and not in the local Hub cache ({hub_cache_dir()})") from None
    except hf.RepositoryNotFoundError:
        raise NotFoundError(f"{what}: repository not found on {endpoint} (or no access: check HF_TOKEN)") from None
    except hf.RevisionNotFoundError:
        raise NotFoundError(f"{what}: no such revision on {endpoint}") from None
    except hf.EntryNotFoundError:
        raise NotFoundError(f"{what}: file not found on {endpoint} (not a cones2 subject repo?)") from None
    except hf.HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (409, 412):
            raise StaleParentError(f"{what}: the repository changed meanwhile (HTTP {status})") from None
        if status in (401, 403):
            raise RemoteError(f"{what}: not allowed by {endpoint} (HTTP {status}); set HF_TOKEN or log in") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        n = tries_so_far()
        raise RemoteError(f"{what}: {endpoint} answered HTTP {status} (tried {n} time{'s' if n != 1 else ''}): {first}") from None
    except RecursionError:  # huggingface_hub decodes answers with json.loads: nesting depth is not bounded there
        raise RemoteError(f"{what}: {endpoint} answered JSON nested too deeply to be a Hub answer") from None
    except (OSError, ValueError) as exc:  # connection errors, cut downloads, bad answers
        n = tries_so_far()
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise RemoteError(f"{what}: {type(exc).__name__} (tried {n} time{'s' if n != 1 else ''}): {text}".rstrip(": ")) from None
    except Exception as exc:  # httpx2 errors that are not OSError
        if type(exc).__module__.split(".")[0] in ("httpx2", "httpx", "huggingface_hub", "httpcore", "h11"):
            text = str(exc).splitlines()[0] if str(exc) else ""
            n = tries_so_far()
            raise RemoteError(
                f"{what}: cannot talk to {endpoint} (tried {n} time{'s' if n != 1 else ''}): {type(exc).__name__} {text}".strip()
            ) from None
        raise
    finally:
        end_operation(token)


class HubClient:
    """A thin wrapper of :class:`huggingface_hub.HfApi` for one endpoint."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self._api: Any = None

    @property
    def api(self) -> Any:
        if self._api is None:
            from huggingface_hub import HfApi

            self._api = HfApi(endpoint=self.endpoint, token=None, library_name="cones2", library_version=__version__)
        return self._api

    def _online(self, what: str) -> None:
        if is_offline():
            raise RemoteError(f"{what}: needs {self.endpoint}, but offline mode is on (HF_HUB_OFFLINE)")

    # ---------------------------------------------------------------- reads
    def refs(self, repo_id: str) -> Refs:
        self._online(f"list versions of {repo_id}")
        with translate(f"list versions of {repo_id}", self.endpoint):
            refs = self.api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
        head = next((b.target_commit for b in refs.branches if b.name == "main"), None)
        return Refs({t.name: t.target_commit for t in refs.tags}, head)

    def cached_tags(self, repo_id: str) -> dict[str, str]:
        """Tags the local Hub cache knows for ``repo_id`` (for offline use): name -> commit."""
        folder = hub_cache_dir() / ("models--" + repo_id.replace("/", "--")) / "refs"
        out: dict[str, str] = {}
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.is_file():
                    with contextlib.suppress(OSError):
                        out[entry.name] = entry.read_text().strip()
        return out

    def download(self, repo_id: str, filename: str, revision: str, *, force: bool = False) -> Path:
        """A file of ``repo_id`` at ``revision`` through the Hub cache (resumes cut downloads)."""
        from huggingface_hub import hf_hub_download

        from .http import RetriesExhausted, configure

        offline = is_offline()
        etag_timeout = configure().read_timeout

        def fetch(local_only: bool) -> str:
            return hf_hub_download(
                repo_id,
                filename,
                repo_type=REPO_TYPE,
                revision=revision,
                cache_dir=hub_cache_dir(),
                endpoint=self.endpoint,
                token=None,
                local_files_only=local_only,
                force_download=force and not local_only,
                etag_timeout=etag_timeout,
                library_name="cones2",
                library_version=__version__,
            )

        what = f"download {repo_id}/{filename}@{revision}"
        with translate(what, self.endpoint):
            try:
                path = fetch(offline)
            except RetriesExhausted as exc:
                if force:
                    raise
                try:  # the server failed: a copy in the Hub cache still serves (as huggingface_hub does itself)
                    path = fetch(True)
                except hf_errors().LocalEntryNotFoundError:
                    raise RemoteError(f"{what}: {self.endpoint} failed: {exc}") from None
        return Path(path)

    def list_subject_repos(self, namespace: str, search: str | None = None, filters: tuple[str, ...] = ()) -> list[Any]:
        self._online(f"list the library {namespace}")
        with translate(f"list the library {namespace}", self.endpoint):
            return list(self.api.list_models(author=namespace, filter=list(filters) or None, search=search or None))

    # ---------------------------------------------------------------- writes
    def create_repo(self, repo_id: str, private: bool | None = None) -> None:
        self._online(f"create {repo_id}")
        with translate(f"create {repo_id}", self.endpoint):
            self.api.create_repo(repo_id, repo_type=REPO_TYPE, exist_ok=True, private=private)

    def commit(self, repo_id: str, files: dict[str, bytes], message: str, parent: str | None) -> str:
        """Commit ``files`` on main on top of ``parent``; StaleParentError when main moved."""
        from huggingface_hub import CommitOperationAdd

        self._online(f"push to {repo_id}")
        ops = [CommitOperationAdd(path_in_repo=p, path_or_fileobj=data) for p, data in files.items()]
        with translate(f"push to {repo_id}", self.endpoint):
            info = self.api.create_commit(
                repo_id, ops, commit_message=message, repo_type=REPO_TYPE, revision="main", parent_commit=parent
            )
        return str(info.oid)

    def create_tag(self, repo_id: str, tag: str, commit: str) -> None:
        self._online(f"tag {repo_id}")
        with translate(f"tag {repo_id} {tag}", self.endpoint):
            self.api.create_tag(repo_id, tag=tag, revision=commit, repo_type=REPO_TYPE)

    def delete_tag(self, repo_id: str, tag: str) -> None:
        self._online(f"untag {repo_id}")
        with translate(f"untag {repo_id} {tag}", self.endpoint):
            self.api.delete_tag(repo_id, tag=tag, repo_type=REPO_TYPE)
