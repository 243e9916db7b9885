"""In-memory Hugging Face Hub-compatible HTTP server for offline tests.

Speaks the subset of the Hub HTTP API that ``huggingface_hub`` (2.x) uses for
create_repo, repo_info, list_repo_tree, create_commit/upload_file (files are
always inlined as "regular", never LFS/Xet), create_tag/delete_tag,
list_repo_refs, list_models/list_datasets and hf_hub_download/snapshot_download.
See /work/shared/HUB-TESTING.md for the protocol notes.

Like the real Hub, a new repo starts with one commit holding ``.gitattributes``.
Repo ids must be ``namespace/name``. Authentication is ignored.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = ("model", "dataset", "space")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
CONFLICT_MESSAGE = "A commit has happened since. Please refresh and try again."


def git_blob_sha1(data: bytes) -> str:
    """Git blob id of ``data`` (what the Hub uses as ETag/oid of regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def card_tags(readme: bytes | None) -> list[str]:
    """Tags of a model card: ``library_name`` plus the ``tags:`` list of the YAML front matter."""
    lines = (readme or b"").decode("utf-8", "replace").splitlines()
    if not lines or lines[0].strip() != "---":
        return []
    tags: list[str] = []
    library: str | None = None
    in_tags = False
    for line in lines[1:]:
        stripped = line.strip()
        if stripped == "---":
            break
        if in_tags and stripped.startswith("- "):
            tags.append(stripped[2:].strip().strip("'\""))
            continue
        if line[:1] in (" ", "\t") or ":" not in line:
            continue
        in_tags = False
        key, _, value = (s.strip() for s in line.partition(":"))
        if key == "tags":
            if value.startswith("["):
                tags += [t.strip().strip("'\"") for t in value.strip("[]").split(",") if t.strip()]
            elif value:
                tags.append(value.strip("'\""))
            else:
                in_tags = True
        elif key == "library_name" and value:
            library = value.strip("'\"")
    return ([library] if library else []) + tags


class HubError(Exception):
    """An HTTP error answered as ``{"error": message}`` (+ ``X-Error-Code`` when given)."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


@dataclass
class Commit:
    oid: str
    files: dict[str, bytes]
    summary: str
    date: str


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    created: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> Commit:
        """Commit for a branch, tag (optionally ``refs/heads/``/``refs/tags/``) or full commit id."""
        name = rev.removeprefix("refs/heads/").removeprefix("refs/tags/")
        oid = self.branches.get(name) or self.tags.get(name) or rev
        if oid not in self.commits:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return self.commits[oid]


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # only dropped connections get here; _Handler answers every other error


class HubServer:
    """A Hub on 127.0.0.1 (free port), served from a background thread.

    Traffic accounting: ``bytes_served`` (file body bytes sent by GET /resolve),
    ``requests`` (``(method, raw path without query)`` tuples), ``reset_stats()``.
    Fault injection: ``tamper()``, ``fail_after_bytes()``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self._counter = 0
        self._fail_after: int | None = None
        self._fail_times = 0
        self.bytes_served = 0
        self.requests: list[tuple[str, str]] = []
        self._httpd = _HTTPServer((host, port), _Handler)
        self._httpd.hub = self
        self.endpoint = f"http://{host}:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    # -- lifecycle / test helpers -------------------------------------------------
    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def reset_stats(self) -> None:
        with self._lock:
            self.bytes_served = 0
            self.requests = []

    def fail_after_bytes(self, n: int, times: int = 1) -> None:
        """The next ``times`` GET /resolve responses send only ``n`` body bytes, then drop the connection."""
        with self._lock:
            self._fail_after, self._fail_times = n, times

    def tamper(self, repo_id: str, path: str, data: bytes, repo_type: str = "model") -> None:
        """Silently replace ``path`` with ``data`` in every commit (hence every branch/tag) holding it."""
        with self._lock:
            hits = [c for c in self._repo(repo_type, repo_id).commits.values() if path in c.files]
            if not hits:
                raise KeyError(f"{path} not in any commit of {repo_id}")
            for commit in hits:
                commit.files[path] = data

    def head(self, repo_id: str, branch: str = "main", repo_type: str = "model") -> str:
        """Commit id at the tip of ``branch``."""
        with self._lock:
            return self._repo(repo_type, repo_id).resolve(branch).oid

    def files(self, repo_id: str, rev: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """A copy of the file map at ``rev``."""
        with self._lock:
            return dict(self._repo(repo_type, repo_id).resolve(rev).files)

    # -- storage ------------------------------------------------------------------
    def _repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _new_commit(self, repo: Repo, files: dict[str, bytes], summary: str, parent: str) -> str:
        self._counter += 1
        digest = hashlib.sha1(f"{self._counter}\n{repo.repo_id}\n{parent}\n{summary}\n".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{git_blob_sha1(files[path])}\n".encode())
        oid = digest.hexdigest()
        repo.commits[oid] = Commit(oid, files, summary, _now())
        return oid

    def _record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def _take_failure(self) -> int | None:
        with self._lock:
            if self._fail_times <= 0:
                return None
            self._fail_times -= 1
            return self._fail_after

    def _count(self, n: int) -> None:
        with self._lock:
            self.bytes_served += n

    @staticmethod
    def _repo_url(base: str, repo_type: str, repo_id: str) -> str:
        return f"{base}/{repo_id}" if repo_type == "model" else f"{base}/{repo_type}s/{repo_id}"

    # -- API ----------------------------------------------------------------------
    def handle_api(
        self, method: str, parts: list[str], query: dict[str, list[str]], body: bytes, base: str
    ) -> Any:
        """Answer ``/api/<parts...>``; returns the JSON payload or raises HubError."""
        with self._lock:
            if parts == ["repos", "create"] and method == "POST":
                return self._create_repo(json.loads(body or b"{}"), base)
            if parts == ["repos", "delete"] and method == "DELETE":
                key = _repo_key(json.loads(body or b"{}"))
                self._repo(*key)
                del self._repos[key]
                return {}
            if parts == ["validate-yaml"] and method == "POST":
                return {}
            if not parts or not parts[0].endswith("s") or parts[0][:-1] not in REPO_TYPES:
                raise HubError(404, "Not Found")
            repo_type = parts[0][:-1]
            if len(parts) == 1 and method == "GET":
                return self._list_repos(repo_type, query)
            if len(parts) < 3:
                raise HubError(404, "Not Found")
            repo = self._repo(repo_type, f"{parts[1]}/{parts[2]}")
            action, args = (parts[3], parts[4:]) if len(parts) > 3 else ("", [])
            route = (method, action, len(args))
            if route in (("GET", "", 0), ("GET", "revision", 1)):
                return self._info(repo, repo.resolve(args[0] if args else "main"), siblings=True)
            if method == "GET" and action == "tree" and args:
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                return self._tree(repo, repo.resolve(args[0]), "/".join(args[1:]), recursive)
            if route == ("GET", "refs", 0):
                return self._refs(repo, "include_prs" in query)
            if route == ("POST", "preupload", 1):
                return self._preupload(repo, repo.resolve(args[0]), json.loads(body or b"{}"))
            if route == ("POST", "commit", 1):
                if query.get("create_pr", ["0"])[0] not in ("0", "false", ""):
                    raise HubError(400, "Pull requests are not supported by this test server")
                return self._commit(repo, args[0], body, base)
            if route == ("POST", "tag", 1):
                return self._create_tag(repo, repo.resolve(args[0]), json.loads(body or b"{}"))
            if route == ("DELETE", "tag", 1):
                if repo.tags.pop(args[0], None) is None:
                    raise HubError(404, f"Tag {args[0]} not found", "RevisionNotFound")
                return {}
            raise HubError(404, "Not Found")

    def _create_repo(self, req: dict[str, Any], base: str) -> Any:
        repo_type, repo_id = key = _repo_key(req)
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Invalid repo type: {repo_type}")
        url = self._repo_url(base, repo_type, repo_id)
        if key in self._repos:  # the client reads "url" even from this 409 (exist_ok=True)
            raise HubError(409, "You already created this repo", url=url)
        repo = self._repos[key] = Repo(repo_type, repo_id, _now())
        repo.branches["main"] = self._new_commit(
            repo, {".gitattributes": GITATTRIBUTES}, "init", ""
        )
        return {"url": url, "name": repo_id}

    def _info(self, repo: Repo, commit: Commit, siblings: bool) -> dict[str, Any]:
        info: dict[str, Any] = {
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": commit.date,
            "createdAt": repo.created,
            "private": False,
            "disabled": False,
            "gated": False,
            "tags": card_tags(commit.files.get("README.md")),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        if siblings:
            info["siblings"] = [{"rfilename": p} for p in sorted(commit.files)]
        return info

    def _list_repos(self, repo_type: str, query: dict[str, list[str]]) -> list[dict[str, Any]]:
        author = query.get("author", [None])[0]
        search = (query.get("search", [""])[0]).lower()
        wanted = set(query.get("filter", []))
        out = []
        for (rtype, repo_id), repo in sorted(self._repos.items()):
            if rtype != repo_type or (author and repo_id.split("/")[0] != author):
                continue
            if search and search not in repo_id.lower():
                continue
            info = self._info(repo, repo.resolve("main"), siblings=False)
            if wanted <= set(info["tags"]):
                out.append(info)
        limit = query.get("limit")
        return out[: int(limit[0])] if limit else out

    def _tree(self, repo: Repo, commit: Commit, path: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        dirs: dict[str, Any] = {}  # dir path -> running sha1 of its blobs
        files = []
        for fpath in sorted(commit.files):
            if not fpath.startswith(prefix):
                continue
            data = commit.files[fpath]
            segments = fpath[len(prefix) :].split("/")
            for depth in range(1, len(segments)):
                d = prefix + "/".join(segments[:depth])
                dirs.setdefault(d, hashlib.sha1(d.encode())).update(git_blob_sha1(data).encode())
            if recursive or len(segments) == 1:
                files.append(
                    {"type": "file", "path": fpath, "size": len(data), "oid": git_blob_sha1(data)}
                )
        if prefix and not files and not dirs:
            raise HubError(404, f"{path} does not exist at {commit.oid}", "EntryNotFound")
        shown = [d for d in sorted(dirs) if recursive or "/" not in d[len(prefix) :]]
        return [{"type": "directory", "path": d, "oid": dirs[d].hexdigest()} for d in shown] + files

    def _refs(self, repo: Repo, include_prs: bool) -> dict[str, Any]:
        def refs(kind: str, table: dict[str, str]) -> list[dict[str, str]]:
            return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": table[n]} for n in table]

        out = {"branches": refs("heads", repo.branches), "tags": refs("tags", repo.tags)}
        return {**out, "converts": [], **({"pullRequests": []} if include_prs else {})}

    def _preupload(self, repo: Repo, commit: Commit, req: dict[str, Any]) -> dict[str, Any]:
        out = []
        for f in req.get("files", []):
            entry = {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
            if f["path"] in commit.files:
                entry["oid"] = git_blob_sha1(commit.files[f["path"]])
            out.append(entry)
        return {"files": out, "commitOid": commit.oid}

    def _commit(self, repo: Repo, branch: str, body: bytes, base: str) -> dict[str, Any]:
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "First NDJSON line must be the commit header")
        header = lines[0]["value"]
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        head = repo.branches[branch]
        parent = (header.get("parentCommit") or "").lower()
        if parent and not head.startswith(parent):
            raise HubError(412, CONFLICT_MESSAGE)
        files = dict(repo.commits[head].files)
        for op in lines[1:]:
            key, value = op.get("key"), op.get("value", {})
            path = value.get("path", "").strip("/")
            if key == "file":
                raw, b64 = value.get("content", ""), value.get("encoding") == "base64"
                files[path] = base64.b64decode(raw) if b64 else raw.encode()
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"File {path} does not exist", "EntryNotFound")
            elif key == "deletedFolder":
                doomed = [p for p in files if p.startswith(path + "/")]
                if not doomed:
                    raise HubError(404, f"Folder {path} does not exist", "EntryNotFound")
                for p in doomed:
                    del files[p]
            else:
                raise HubError(400, f"Unsupported commit operation {key!r}: only inline files")
        oid = self._new_commit(repo, files, header.get("summary", ""), head)
        repo.branches[branch] = oid
        url = self._repo_url(base, repo.repo_type, repo.repo_id)
        return {"commitUrl": f"{url}/commit/{oid}", "commitOid": oid}

    def _create_tag(self, repo: Repo, commit: Commit, req: dict[str, Any]) -> dict[str, Any]:
        tag = req.get("tag") or ""
        if not tag:
            raise HubError(400, "Missing tag name")
        if tag in repo.tags:
            raise HubError(409, f"Tag {tag} already exists")
        repo.tags[tag] = commit.oid
        return {}

    def lookup_file(self, repo_type: str, repo_id: str, rev: str, path: str) -> tuple[str, bytes]:
        """``(commit id, bytes)`` of ``path`` at ``rev``, or HubError 404 with the Hub's error code."""
        with self._lock:
            commit = self._repo(repo_type, repo_id).resolve(rev)
            if path not in commit.files:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
            return commit.oid, commit.files[path]


def _repo_key(req: dict[str, Any]) -> tuple[str, str]:
    """(type, "ns/name") of a create/delete request; no organization means the user "user"."""
    return req.get("type") or "model", f"{req.get('organization') or 'user'}/{req['name']}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else header+body writes hit delayed ACKs (40 ms each)
    timeout = 60
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def _dispatch(self) -> None:
        hub, url = self.server.hub, urlsplit(self.path)
        hub._record(self.command, url.path)
        # Revisions and tree paths arrive as quote(x, safe=""): split first, then unquote.
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        try:
            body = self._read_body() if self.command in ("POST", "DELETE") else b""
            if parts[0] != "api":
                return self._resolve(parts)
            base = f"http://{self.headers.get('Host') or hub.endpoint.removeprefix('http://')}"
            payload = hub.handle_api(self.command, parts[1:], parse_qs(url.query), body, base)
            self._send(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        except Exception as e:  # every failure becomes an HTTP answer
            if isinstance(e, HubError):
                err = e
            elif isinstance(e, (KeyError, ValueError)):
                err = HubError(400, f"Bad request: {e!r}")
            else:  # a bug in this server: show it, and answer 500 (the client would retry a drop)
                traceback.print_exc()
                err = HubError(500, f"Test Hub server error: {e!r}")
            headers = {"Content-Type": "application/json"}
            if err.code:
                headers.update({"X-Error-Code": err.code, "X-Error-Message": err.message})
            self._send(
                err.status, json.dumps({"error": err.message, **err.extra}).encode(), headers
            )

    do_GET = do_HEAD = do_POST = do_DELETE = _dispatch

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers
        return b"".join(chunks)

    def _resolve(self, parts: list[str]) -> None:
        """HEAD/GET [/datasets|/spaces]/{ns}/{name}/resolve/{rev}/{path}."""
        repo_type = "model"
        if parts[0] in ("datasets", "spaces") and parts[3:4] == ["resolve"]:
            repo_type, parts = parts[0][:-1], parts[1:]
        if self.command not in ("GET", "HEAD") or len(parts) < 5 or parts[2] != "resolve":
            raise HubError(404, "Not Found")
        repo_id, rev, path = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
        commit, data = self.server.hub.lookup_file(repo_type, repo_id, rev, path)
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Repo-Commit": commit,
            "ETag": f'"{git_blob_sha1(data)}"',
            "Accept-Ranges": "bytes",
        }
        status, start, end, size = 200, 0, len(data), len(data)
        range_header = self.headers.get("Range", "")
        if range_header.startswith("bytes=") and self.command == "GET":
            first, _, last = range_header[6:].split(",")[0].strip().partition("-")
            if first:  # "bytes=N-" (what the client sends to resume) or "bytes=N-M"
                start, end = int(first), min(int(last) + 1 if last else size, size)
            else:  # suffix range "bytes=-N"
                start = max(size - int(last), 0)
            if start >= end:
                self._send(416, b"", {**headers, "Content-Range": f"bytes */{size}"})
                return
            status, headers["Content-Range"] = 206, f"bytes {start}-{end - 1}/{size}"
        body = data[start:end]
        cut = self.server.hub._take_failure() if self.command == "GET" else None
        self._send(status, body if cut is None else body[:cut], headers, length=len(body))
        if self.command == "GET":
            self.server.hub._count(len(body) if cut is None else len(body[:cut]))
        if cut is not None:
            self.close_connection = True  # Content-Length promised more: the client sees a cut

    def _send(self, status: int, body: bytes, headers: dict[str, str], length: int = -1) -> None:
        """Send a response with Content-Length (``length`` overrides it; HEAD sends no body)."""
        self.send_response(status)
        for key, value in {**headers, "Content-Length": str(max(length, len(body)))}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


def start_hub_server() -> HubServer:
    """Start a HubServer on a free local port (stop it with ``.stop()``)."""
    return HubServer()


if __name__ == "__main__":  # the README's walkthrough: python tests/hub_server.py --port 8765 &
    import argparse

    parser = argparse.ArgumentParser(description="Serve an in-memory Hub on 127.0.0.1 until stopped.")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    server = HubServer(port=parser.parse_args().port)
    print(f"Hub test server on {server.endpoint} (in memory; stop it with Ctrl-C or kill)", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()
