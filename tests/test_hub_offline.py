"""Offline use after a pull (HF_HUB_OFFLINE=1 set before huggingface_hub is imported) and killed pulls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from _hub_helpers import add_local, fingerprint, new_namespace


@pytest.fixture
def env(hub_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, demo_model_dir: Path) -> dict[str, str]:
    monkeypatch.setenv("HF_TOKEN", "dummy")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return {
        **os.environ,
        "HF_TOKEN": "dummy",
        "HF_HUB_CACHE": str(tmp_path / "hf-cache"),
        "CONES2_BASE_MODEL": str(demo_model_dir),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
    }


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cones2", *args], env=env, capture_output=True, text=True, timeout=60)


def test_offline_pull_and_resolve_from_the_cache(hub_server, env, monkeypatch, tmp_path, demo_model_dir):
    from cones2.registry.hub import add_remote, pull, push

    ns = new_namespace()
    fp = fingerprint(demo_model_dir)
    add_remote("team", ns, hub_server.endpoint)
    add_local("dog-max", fp, seed=1)
    add_local("dog-max", fp, seed=2)
    push("dog-max")
    home_b = tmp_path / "home-b"
    monkeypatch.setenv("CONES2_HOME", str(home_b))
    add_remote("team", ns, hub_server.endpoint)
    pull("dog-max@1")
    pull("dog-max")  # v2, via the Hub's refs

    hub_server.reset_stats()
    home_c = tmp_path / "home-c"  # a fresh catalogue that never saw the Hub: everything from the HF cache
    script = textwrap.dedent(
        f"""
        import json, os
        assert os.environ["HF_HUB_OFFLINE"] == "1"
        from cones2.registry import open_catalogue
        from cones2.registry.hub import add_remote, pull, search_remote
        from cones2.errors import RemoteError
        out = {{}}
        with open_catalogue({str(home_b)!r}) as cat:           # what was pulled resolves and loads
            rec, res = cat.load("dog-max@1")
            out["b"] = [rec.version, res.word, cat.resolve("dog-max").version]
        os.environ["CONES2_HOME"] = {str(home_b)!r}
        out["again"] = [pull("dog-max@1").status, pull("dog-max").status]
        os.environ["CONES2_HOME"] = {str(home_c)!r}
        add_remote("team", {ns!r}, {hub_server.endpoint!r})
        out["c"] = [(r.version, r.status) for r in (pull("dog-max@2"), pull("dog-max"), pull("dog-max@1"))]
        try:
            search_remote("dog")
        except RemoteError as exc:
            out["search"] = str(exc)
        print(json.dumps(out))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], env={**env, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["b"] == [1, "dog", 2]
    assert out["again"] == ["present", "present"]
    assert out["c"] == [[2, "pulled"], [2, "present"], [1, "pulled"]]
    assert "offline" in out["search"]
    # the CLI, offline, in yet another process
    proc = cli({**env, "HF_HUB_OFFLINE": "1", "CONES2_HOME": str(home_c)}, "pull", "dog-max", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["status"] == "present"
    proc = cli({**env, "HF_HUB_OFFLINE": "1", "CONES2_HOME": str(home_c)}, "pull", "other-subject")
    assert proc.returncode == 12 and "offline" in proc.stderr and proc.stderr.count("\n") == 1
    assert hub_server.requests == []  # nothing reached the server


def test_pull_killed_midway_then_completes(hub_server, env, monkeypatch, tmp_path, demo_model_dir):
    """SIGKILL a `cones2 pull --all` while it is stuck downloading: catalogue and store unchanged."""
    from cones2.registry import open_catalogue
    from cones2.registry.hub import add_remote, push

    ns = new_namespace()
    fp = fingerprint(demo_model_dir)
    add_remote("team", ns, hub_server.endpoint)
    for i, name in enumerate(("dog-a", "dog-b", "dog-c")):
        add_local(name, fp, seed=i)
        push(name)
    home_b = tmp_path / "home-b"
    monkeypatch.setenv("CONES2_HOME", str(home_b))
    add_remote("team", ns, hub_server.endpoint)
    hub_server.reset_stats()
    hub_server.fail_after_bytes(10, times=1000)  # every download is cut; the client keeps retrying
    proc = subprocess.Popen([sys.executable, "-m", "cones2", "pull", "--all", ns],
                            env={**env, "CONES2_HOME": str(home_b)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while hub_server.bytes_served == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hub_server.bytes_served > 0, "the pull never started downloading"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        hub_server.fail_after_bytes(0, times=0)
    blobs = home_b / "blobs" / "sha256"
    assert not blobs.exists() or not any(blobs.iterdir())
    if (home_b / "catalogue.db").exists():
        with open_catalogue(home_b) as cat:
            assert cat.list_subjects() == []
    done = cli({**env, "CONES2_HOME": str(home_b)}, "pull", "--all", ns, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["counts"] == {"pulled": 3}
    with open_catalogue(home_b) as cat:
        assert [s.name for s in cat.list_subjects()] == ["dog-a", "dog-b", "dog-c"]
