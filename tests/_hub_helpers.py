"""Shared helpers of the Hub sync tests (tests/test_hub_*.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest


def fingerprint(model_dir: Path) -> str:
    from cones2.base_model import model_info

    return model_info(str(model_dir)).fingerprint


def residual(fp: str, seed: int = 0, word: str = "dog", meta: dict | None = None):
    from cones2.residual_file import make_residual

    rng = np.random.default_rng(seed)
    return make_residual(rng.standard_normal((1, 32)).astype("float32"), word, [643], fp, meta or {"seed": seed})


def add_local(name: str, fp: str, seed: int = 0, version: int | None = None, **kw):
    from cones2.registry import open_catalogue

    with open_catalogue() as cat:
        return cat.add(residual(fp, seed), name, version=version, **kw)


def use_home(monkeypatch: pytest.MonkeyPatch, path: Path) -> Path:
    monkeypatch.setenv("CONES2_HOME", str(path))
    return path


def new_namespace() -> str:
    return f"team-{uuid.uuid4().hex[:8]}"
