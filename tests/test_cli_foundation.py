"""CLI of the foundation: help, demo-model, base-model info, quickstart, error lines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from cones2.cli import main


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_help_lists_commands() -> None:
    code, out, _ = run("--help")
    assert code == 0
    for command in ("demo-model", "base-model", "quickstart"):
        assert command in out


def test_demo_model_and_info(tmp_path: Path) -> None:
    code, out, _ = run("demo-model", str(tmp_path / "m"), "--json")
    assert code == 0, out
    data = json.loads(out)
    assert Path(data["path"]).is_dir() and len(data["fingerprint"]) == 64
    code, out, _ = run("base-model", "info", str(tmp_path / "m"), "--json")
    info = json.loads(out)
    assert code == 0 and info["fingerprint"] == data["fingerprint"]
    assert info["hidden_size"] == 32 and info["vocab_size"] == 845 and info["is_demo"] is True
    code, out, _ = run("base-model", "info", str(tmp_path / "m"))
    assert "demo model" in out and data["fingerprint"] in out
    # Existing non-empty folder: one-line error, non-zero exit, nothing replaced.
    code, _, err = run("demo-model", str(tmp_path / "m"))
    assert code == 2 and err.strip().count("\n") == 0 and "not empty" in err


def test_base_model_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, _, err = run("base-model", "info", str(tmp_path / "empty"))
    assert code == 5
    assert err.startswith("Error: ") and "not a Stable Diffusion folder" in err and err.count("\n") == 1


def test_quickstart(tmp_path: Path) -> None:
    from PIL import Image

    code, out, _ = run("quickstart", "--out", str(tmp_path / "qs"), "--steps", "3", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["changed_positions"] == {"dog": [2], "mug": [5]}
    assert all(v > 0 for v in data["change_norms"].values())
    assert data["unchanged_max_abs"] == 0.0
    for word, path in data["residual_files"].items():
        assert Path(path).stat().st_size == data["residual_sizes"][word]
    assert data["registered"] == {"dog": "dog-max@1", "mug": "mug-red@1"}
    image = Image.open(data["render"]["images"][0])
    assert image.size == (64, 64)
    meta = json.loads(image.text["cones2"])
    assert {s["name"] for s in meta["subjects"].values()} == {"dog-max", "mug-red"}
    assert "demo model" in image.text["cones2-demo-model"]
    assert len(data["render"]["attention_maps"]) == 3  # one heat map per subject + the strip
    assert Path(data["render"]["layout_preview"]).name == "layout.png"
    assert all(Path(p).is_file() for p in [*data["render"]["attention_maps"], data["render"]["layout_preview"]])
    # Running it again is idempotent: same residual content, same registered versions.
    code, out, _ = run("quickstart", "--out", str(tmp_path / "qs"), "--no-render", "--json")
    assert code == 0 and json.loads(out)["registered"] == data["registered"]
    code, out, _ = run("list", "--json")
    assert code == 0 and "dog-max" in out and "mug-red" in out


def test_console_script_runs_in_a_fresh_process() -> None:
    out = subprocess.run([sys.executable, "-m", "cones2", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "cones2" in out.stdout
