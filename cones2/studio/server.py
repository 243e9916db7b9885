"""The studio's HTTP server: a JSON API over the library and the render adapter, plus one page.

Built on the standard library's :class:`http.server.ThreadingHTTPServer`: the page is
plain HTML and JavaScript served from ``cones2/studio/static``, so the studio adds no
dependency and starts in well under a second (see the README for why not Gradio).
It listens on 127.0.0.1 unless told otherwise and never contacts anything but the
configured Hub remotes (and only when the user pulls).
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
import shutil
import sys
import tempfile
import threading
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import Cones2Error, NotFoundError, UsageError
from . import adapter, library
from .jobs import JobQueue, one_line

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY = 32 * 1024 * 1024


class Studio:
    """The state behind one studio server: model, folders, the job queue and the renderer."""

    def __init__(self, folder: str | Path = ".", model: str | None = None, device: str | None = None) -> None:
        self.folder = Path(folder).resolve()
        self.model = model
        self.renders = Path(tempfile.mkdtemp(prefix="cones2-studio-"))
        self.renderer = adapter.Renderer(model, device)
        self.jobs = JobQueue()

    def close(self) -> None:
        self.jobs.stop()
        shutil.rmtree(self.renders, ignore_errors=True)

    # -- actions (each returns what the API answers) ----------------------------------

    def state(self) -> dict[str, Any]:
        return {**library.overview(self.model), "folder": str(self.folder)}

    def render(self, page: Any) -> dict[str, Any]:
        design = adapter.Design.from_page(page)
        adapter.check_design(design, self.model)  # unknown subject, other base model: refused now

        def work(progress: Any) -> dict[str, Any]:
            folder = self.renders / f"job-{job.id}"

            def on_step(step: int, total: int) -> None:
                progress(step, total, f"step {step} of {total}")

            out = self.renderer.render(design, folder, on_step)
            base = f"/renders/job-{job.id}/"
            return {
                "image": base + Path(out["image"]).name,
                "layout": base + Path(out["layout"]).name if out["layout"] else None,
                "attention": {k: base + Path(p).name for k, p in out["attention"].items()},
                "width": out["width"], "height": out["height"], "seed": design.seed,
                "subjects": out["subjects"], "resolved": out["resolved"],
            }

        job = self.jobs.submit("render", design.prompt, work)
        return self.jobs.describe(job)

    def pull(self, data: Any) -> dict[str, Any]:
        remote = (data or {}).get("remote") or None
        ref = ((data or {}).get("ref") or "").strip() or None
        work = library.pull_work(ref, remote)
        job = self.jobs.submit("pull", f"pull {ref or 'all'}" + (f" from {remote}" if remote else ""), work)
        return self.jobs.describe(job)

    def save(self, data: Any) -> dict[str, Any]:
        design = adapter.Design.from_page((data or {}).get("design"))
        return adapter.save_design(design, self.folder, self.model)

    def open(self, data: Any) -> dict[str, Any]:
        data = data or {}
        name = str(data.get("filename") or "upload")
        if data.get("data") is not None:
            try:
                content = base64.b64decode(str(data["data"]), validate=True)
            except (binascii.Error, ValueError):
                raise UsageError(f"{name}: the upload is not base64") from None
        elif data.get("path"):
            path = Path(str(data["path"])).expanduser()
            if not path.is_absolute():
                path = self.folder / path
            try:
                content = path.read_bytes()
            except OSError as exc:
                raise NotFoundError(f"{path}: {exc.strerror or exc}") from None
            name = path.name
        else:
            raise UsageError("open: give a file")
        return {"design": adapter.open_file(name, content).to_page()}

    def render_file(self, rel: str) -> Path:
        path = (self.renders / rel).resolve()
        if self.renders not in path.parents or not path.is_file():
            raise NotFoundError(f"no such render file: {rel}")
        return path


class Handler(BaseHTTPRequestHandler):
    server_version = "cones2-studio"
    studio: Studio  # set on the subclass made by make_server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        if getattr(self.server, "verbose", False):
            super().log_message(format, *args)

    # -- plumbing

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200) -> None:
        self._send(status, json.dumps(data, default=str).encode("utf-8"), "application/json")

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise UsageError(f"request too large ({length} bytes; the limit is {MAX_BODY})")
        raw = self.rfile.read(length) if length else b"{}"
        try:
            return json.loads(raw or b"{}")
        except json.JSONDecodeError:
            raise UsageError("the request body is not JSON") from None

    def _dispatch(self, routes: dict[str, Any]) -> None:
        url = urlsplit(self.path)
        try:
            for prefix, handler in routes.items():
                if url.path == prefix or (prefix != "/" and prefix.endswith("/") and url.path.startswith(prefix)):
                    handler(url.path[len(prefix):], parse_qs(url.query))
                    return
            raise NotFoundError(f"no such page: {url.path}")
        except Cones2Error as exc:
            status = HTTPStatus.NOT_FOUND if isinstance(exc, NotFoundError) else HTTPStatus.BAD_REQUEST
            self._json({"error": str(exc), "kind": type(exc).__name__, "exit_code": exc.exit_code}, status)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # never a stack trace in the page; the log has it
            traceback.print_exc(file=sys.stderr)
            self._json({"error": one_line(exc), "kind": type(exc).__name__}, HTTPStatus.INTERNAL_SERVER_ERROR)

    # -- routes

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        s = self.studio
        self._dispatch({
            "/": lambda *_: self._static("index.html"),
            "/static/": lambda rest, _: self._static(rest),
            "/api/state": lambda *_: self._json(s.state()),
            "/api/subjects": lambda _, q: self._json(library.subjects((q.get("q") or [""])[0], s.model)),
            "/api/words": lambda _, q: self._json(library.words((q.get("prompt") or [""])[0], s.model)),
            "/api/jobs": lambda *_: self._json({"jobs": s.jobs.all()}),
            "/api/jobs/": lambda rest, _: self._job(rest),
            "/renders/": lambda rest, _: self._file(s.render_file(unquote(rest))),
        })

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802
        s = self.studio
        self._dispatch({
            "/api/render": lambda *_: self._json(s.render(self._body()), HTTPStatus.ACCEPTED),
            "/api/pull": lambda *_: self._json(s.pull(self._body()), HTTPStatus.ACCEPTED),
            "/api/save": lambda *_: self._json(s.save(self._body())),
            "/api/open": lambda *_: self._json(s.open(self._body())),
        })

    def _job(self, rest: str) -> None:
        job = self.studio.jobs.get(int(rest)) if rest.isdigit() else None
        if job is None:
            raise NotFoundError(f"no such job: {rest}")
        self._json(self.studio.jobs.describe(job))

    def _static(self, name: str) -> None:
        path = (STATIC / name).resolve()
        if STATIC not in path.parents or not path.is_file():
            raise NotFoundError(f"no such page: /static/{name}")
        self._file(path)

    def _file(self, path: Path) -> None:
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith("javascript"):
            kind += "; charset=utf-8"
        self._send(200, path.read_bytes(), kind)


class StudioServer(ThreadingHTTPServer):
    daemon_threads = True
    verbose = False

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


def make_server(host: str = "127.0.0.1", port: int = 7860, *, folder: str | Path = ".", model: str | None = None,
                device: str | None = None, verbose: bool = False) -> tuple[StudioServer, Studio]:
    """A studio server bound to ``host:port`` (port 0: a free one), not yet serving."""
    studio = Studio(folder, model, device)
    handler = type("StudioHandler", (Handler,), {"studio": studio})
    try:
        server = StudioServer((host, port), handler)
    except OSError as exc:
        studio.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    server.verbose = verbose
    return server, studio


def serve_in_thread(host: str = "127.0.0.1", port: int = 0, **kwargs: Any) -> tuple[StudioServer, Studio, threading.Thread]:
    """Start a studio on a background thread (for tests and notebooks); stop with ``server.shutdown()``."""
    server, studio = make_server(host, port, **kwargs)
    thread = threading.Thread(target=server.serve_forever, name="cones2-studio", daemon=True)
    thread.start()
    return server, studio, thread
