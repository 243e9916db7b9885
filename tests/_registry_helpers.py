"""Helpers shared by the registry tests: residual files, catalogues, CLI runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def fingerprint_of(model_dir: Path) -> str:
    from cones2.base_model import model_info

    return model_info(str(model_dir)).fingerprint


def write_residual(path: Path, fingerprint: str, *, seed: int = 0, hidden: int = 32, word: str = "dog", meta: dict[str, Any] | None = None) -> Path:
    from cones2.residual_file import make_residual

    rng = np.random.default_rng(seed)
    ids = {"dog": [643], "cat": [644]}[word]  # the demo tokenizer's ids: add checks that they spell the word
    make_residual(rng.standard_normal((1, hidden)).astype("float32"), word, ids, fingerprint, meta or {}).save(path)
    return path


DROP_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search", "--"]


def run_cli(*args: str, env: dict[str, str] | None = None, obey_permissions: bool = False, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``cones2 ARGS`` in a fresh interpreter.

    ``obey_permissions``: as root, drop the capabilities that bypass file permissions
    (so a read-only folder is read-only for the command too).
    """
    cmd = [str(Path(sys.executable).parent / "cones2"), *args]
    if obey_permissions and os.geteuid() == 0:
        cmd = [*DROP_DAC, *cmd]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=str(REPO), timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(f"cones2 {' '.join(args)} failed ({result.returncode}): {result.stderr}")
    return result


def run_json(*args: str, **kwargs: Any) -> Any:
    result = run_cli(*args, "--json", check=True, **kwargs)
    return json.loads(result.stdout)
