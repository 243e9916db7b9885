"""A throwaway PostgreSQL server for the registry tests.

Uses ``$CONES2_TEST_POSTGRES_URL`` (a server URL whose user may create databases) if
set; otherwise starts a private server from Debian's binaries
(``/usr/lib/postgresql/*/bin``) on a free port in a temp folder, as the ``postgres``
user when running as root (initdb and pg_ctl refuse root). No binaries: the tests
skip with the reason shown.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV_URL = "CONES2_TEST_POSTGRES_URL"


def find_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url.rstrip("/")  # postgresql+psycopg://user@host:port

    def create_database(self) -> str:
        """A fresh empty database; returns its SQLAlchemy URL."""
        import psycopg

        name = "cones2_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.base_url.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"{self.base_url}/{name}"


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    url = os.environ.get(ENV_URL)
    if url:
        yield PostgresServer(url)
        return
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("PostgreSQL tests need psycopg (pip install 'psycopg[binary]')")
    bindir = find_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL tests skipped: no PostgreSQL server binaries (apt-get install postgresql, or set CONES2_TEST_POSTGRES_URL)")
    if os.geteuid() == 0 and not shutil.which("runuser"):
        pytest.skip("PostgreSQL tests skipped: running as root without runuser to drop to the postgres user")
    root = Path(tempfile.mkdtemp(prefix="cones2-pg-"))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()

    def run(cmd: list[str]) -> None:
        proc = subprocess.run(_as_postgres(cmd), capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
            log_tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {detail[0]}\n{log_tail}")

    run([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync", "--no-instructions"])
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    run([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start"])
    try:
        yield PostgresServer(f"postgresql+psycopg://postgres@127.0.0.1:{port}")
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]), capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)
