"""Issue 14, causes 2 and 3: every Hub call has a timeout; retries are bounded, quiet and end in one line."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cones2.cli import main
from cones2.errors import RemoteError


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout, result.stderr


class _Silent:
    """Accepts connections and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self) -> None:
        self.stopped = True
        self.sock.close()
        for conn in self.held:
            conn.close()


class _Answers(BaseHTTPRequestHandler):
    status = 503
    body = b'{"error": "down for maintenance"}'
    hits: list[str] = []

    def _any(self) -> None:
        type(self).hits.append(self.command)
        if self.status == 0:  # reset: close without answering
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        body = self.body
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = do_POST = _any

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_TOKEN", "dummy")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _local_dog(tmp_path: Path, demo_model_dir: Path) -> None:
    from cones2.base_model import model_info
    from cones2.residual_file import make_residual

    fp = model_info(str(demo_model_dir)).fingerprint
    path = make_residual(np.zeros((1, 32), "float32") + 0.1, "dog", [643], fp).save(tmp_path / "dog.safetensors")
    assert run("add", path, "--name", "dog")[0] == 0


COMMANDS = (("search", "--remote", "r", "dog"), ("pull", "r-ns/dog", "--remote", "r"), ("push", "dog", "--remote", "r"))


def test_silent_server_times_out_quickly(hub_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, demo_model_dir: Path) -> None:
    _local_dog(tmp_path, demo_model_dir)
    server = _Silent()
    try:
        monkeypatch.setenv("CONES2_HUB_READ_TIMEOUT", "0.5")
        monkeypatch.setenv("CONES2_HUB_TRIES", "1")
        assert run("remote", "add", "r", "r-ns", "--endpoint", f"http://127.0.0.1:{server.port}")[0] == 0
        for command in COMMANDS:
            start = time.monotonic()
            code, _, err = run(*command)
            took = time.monotonic() - start
            assert code == RemoteError.exit_code, err
            assert err.startswith("Error: ") and err.count("\n") == 1, err
            assert "no answer within the timeout" in err and "tried 1 time" in err, err
            assert took < 5, (command, took)
    finally:
        server.close()


@pytest.fixture()
def answering() -> Iterator[type[_Answers]]:
    handler = type("H", (_Answers,), {"hits": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    handler.port = httpd.server_address[1]  # type: ignore[attr-defined]
    yield handler
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("status", [503, 500, 0])
def test_failing_server_gives_one_line_after_bounded_tries(hub_env: None, monkeypatch: pytest.MonkeyPatch, answering: type[_Answers], tmp_path: Path, demo_model_dir: Path, status: int, capfd: pytest.CaptureFixture[str]) -> None:
    answering.status = status
    monkeypatch.setenv("CONES2_HUB_TRIES", "2")
    assert run("remote", "add", "r", "r-ns", "--endpoint", f"http://127.0.0.1:{answering.port}")[0] == 0  # type: ignore[attr-defined]
    for command in COMMANDS[:2]:
        answering.hits.clear()
        start = time.monotonic()
        code, _, err = run(*command)
        assert code == RemoteError.exit_code, err
        assert err.startswith("Error: ") and err.count("\n") == 1, err
        assert f"tried {len(answering.hits)} time" in err and 1 <= len(answering.hits) <= 2, (err, answering.hits)
        if status:
            assert f"HTTP {status}" in err, err
        assert time.monotonic() - start < 5
    assert "Retrying" not in capfd.readouterr().err


def test_deeply_nested_json_from_the_server_is_one_line(hub_env: None, answering: type[_Answers], tmp_path: Path, demo_model_dir: Path, cones2_home: Path) -> None:
    """A server whose every answer is nested 100,000 deep: huggingface_hub's json.loads recurses."""
    _local_dog(tmp_path, demo_model_dir)
    answering.status = 200
    answering.body = b"[" * 100_000 + b"]" * 100_000
    assert run("remote", "add", "r", "r-ns", "--endpoint", f"http://127.0.0.1:{answering.port}")[0] == 0  # type: ignore[attr-defined]
    blobs = sorted(p.name for p in (cones2_home / "blobs" / "sha256").iterdir())
    for command in COMMANDS[:2]:
        code, _, err = run(*command)
        assert code == RemoteError.exit_code, err
        assert err.startswith("Error: ") and err.count("\n") == 1 and "nested too deeply" in err, err
    assert sorted(p.name for p in (cones2_home / "blobs" / "sha256").iterdir()) == blobs  # nothing stored


def test_server_down_is_one_line(hub_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there any more
    monkeypatch.setenv("CONES2_HUB_TRIES", "2")
    assert run("remote", "add", "r", "r-ns", "--endpoint", f"http://127.0.0.1:{port}")[0] == 0
    for command in COMMANDS[:2]:
        code, _, err = run(*command)
        assert code == RemoteError.exit_code and err.count("\n") == 1 and "tried " in err, err


def test_network_settings_are_validated(monkeypatch: pytest.MonkeyPatch, cones2_home: Path) -> None:
    from cones2.registry.hub.http import network_settings

    assert network_settings().read_timeout == 30.0 and network_settings().tries == 3
    cones2_home.mkdir(parents=True, exist_ok=True)
    (cones2_home / "config.toml").write_text("hub_read_timeout = 2.5\nhub_tries = 4\n")
    assert (network_settings().read_timeout, network_settings().tries) == (2.5, 4)
    monkeypatch.setenv("CONES2_HUB_TRIES", "0")
    with pytest.raises(Exception, match="CONES2_HUB_TRIES must be positive"):
        network_settings()
