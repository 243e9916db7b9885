"""Shared fixtures: one tiny demo model per session, an isolated cones2 home per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session", autouse=True)
def session_home(tmp_path_factory: pytest.TempPathFactory):
    """A CONES2_HOME for session- and module-scoped fixtures, which run before ``cones2_home``.

    Without it they would fingerprint models into the user's data folder (its cache).
    """
    with pytest.MonkeyPatch.context() as mp:
        home = tmp_path_factory.mktemp("session-home")
        mp.setenv("CONES2_HOME", str(home))
        yield home


@pytest.fixture(scope="session")
def demo_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model, built once per test session through the public builder."""
    from cones2.demo_model import build_demo_model

    return build_demo_model(tmp_path_factory.mktemp("models") / "demo")


@pytest.fixture(autouse=True)
def cones2_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, demo_model_dir: Path) -> Path:
    """Every test gets an empty CONES2_HOME; the configured base model is the session's demo model."""
    home = tmp_path / "cones2-home"
    monkeypatch.setenv("CONES2_HOME", str(home))
    monkeypatch.setenv("CONES2_BASE_MODEL", str(demo_model_dir))
    monkeypatch.delenv("CONES2_DATABASE_URL", raising=False)
    return home


@pytest.fixture(scope="session")
def demo_text_encoder(demo_model_dir: Path):
    """(tokenizer, text_encoder) of the demo model, loaded once."""
    from cones2.base_model import load_text_encoder

    return load_text_encoder(str(demo_model_dir))


@pytest.fixture(scope="session")
def hub_server():
    """A Hub-compatible HTTP server on 127.0.0.1 (tests/hub_server.py), one per session."""
    from hub_server import start_hub_server

    server = start_hub_server()
    yield server
    server.stop()
