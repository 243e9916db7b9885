"""The catalogue commands, run as real processes: output, --json, exit codes, imports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _registry_helpers import fingerprint_of, run_cli, run_json, write_residual

from cones2.errors import (
    BaseModelMismatchError,
    IntegrityError,
    InvalidNameError,
    InvalidResidualError,
    NotFoundError,
)


@pytest.fixture(scope="module")
def files(demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli-residuals")
    fp = fingerprint_of(demo_model_dir)
    return {
        "a": write_residual(d / "a.safetensors", fp, seed=1, meta={"trainer": "alice"}),
        "b": write_residual(d / "b.safetensors", fp, seed=2),
        "h16": write_residual(d / "h16.safetensors", fp, seed=3, hidden=16),
        "other": write_residual(d / "other.safetensors", "ef" * 32, seed=4),
        "junk": _junk(d / "junk.safetensors"),
    }


def _junk(path: Path) -> Path:
    path.write_bytes(b"\x00" * 100)
    return path


def test_full_cli_workflow(files, tmp_path):
    added = run_json("add", str(files["a"]), "--name", "dog-max", "--description", "Max the corgi", "--meta", "steps=800", "--meta", "note=good boy")
    assert added["version"] == 1 and added["created"] is True and added["metadata"] == {"trainer": "alice", "steps": 800, "note": "good boy"}
    again = run_json("add", str(files["a"]), "--name", "dog-max")
    assert again["version"] == 1 and again["created"] is False
    human = run_cli("add", str(files["b"]), "--name", "dog-max", check=True)
    assert human.stdout.startswith("Added dog-max@2")

    listed = run_json("list")
    assert [(s["name"], s["latest"], s["versions"]) for s in listed] == [("dog-max", 2, 2)]
    assert "dog-max" in run_cli("list", check=True).stdout

    tagged = run_json("tag", "dog-max@1", "stable")
    assert tagged["version"] == 1 and tagged["changed"]
    assert "Moved dog-max:stable from @1 to @2" in run_cli("tag", "dog-max@2", "stable", check=True).stdout

    shown = run_json("show", "dog-max:stable")
    assert shown["ref"] == "dog-max@2" and shown["tags"] == {"stable": 2}
    assert [e["action"] for e in shown["tag_history"]] == ["set", "moved"]
    text = run_cli("show", f"dog-max@sha256:{added['sha256'][:12]}", check=True).stdout
    assert "dog-max@1" in text and added["sha256"] in text

    assert [s["name"] for s in run_json("search", "corgi")] == ["dog-max"]
    assert [s["name"] for s in run_json("search", "alice")] == ["dog-max"]
    assert run_json("search", "nothing-like-this") == []

    out = tmp_path / "export.safetensors"
    exported = run_json("export", "dog-max@1", str(out))
    assert exported["path"] == str(out) and out.read_bytes() == files["a"].read_bytes()

    assert run_json("untag", "dog-max", "stable")["version"] == 2
    assert run_json("verify")["ok"] is True
    removed = run_json("rm", "dog-max@2")
    assert removed["removed"] == "version" and removed["version"] == 2
    dry = run_json("gc", "--dry-run")
    assert dry["dry_run"] is True and len(dry["removed"]) == 1
    gc = run_json("gc")
    assert len(gc["removed"]) == 1 and gc["dry_run"] is False
    assert run_json("rm", "dog-max")["removed"] == "subject"
    assert run_json("list") == []
    assert "No subjects." in run_cli("list", check=True).stdout


ERROR_CASES = [
    (["show", "nope"], NotFoundError.exit_code, "unknown subject 'nope'"),
    (["show", "dog@7"], NotFoundError.exit_code, "dog has no version 7"),
    (["show", "Bad/Name/X"], InvalidNameError.exit_code, "invalid subject name"),
    (["add", "{junk}", "--name", "dog"], InvalidResidualError.exit_code, "not a safetensors file"),
    (["add", "{h16}", "--name", "dog"], InvalidResidualError.exit_code, "hidden size 16 does not fit"),
    (["add", "{other}", "--name", "dog"], BaseModelMismatchError.exit_code, "efefefefefef"),
    (["add", "{b}", "--name", "../x"], InvalidNameError.exit_code, "invalid subject name"),
    (["add", "{b}", "--name", "x" * 200], InvalidNameError.exit_code, "invalid subject name"),
    (["add", "{b}", "--name", "dog", "--version", "1"], 9, "already exists with other content"),
    (["tag", "dog", "Bad"], InvalidNameError.exit_code, "invalid tag"),
    (["untag", "dog", "none"], NotFoundError.exit_code, "no tag 'none'"),
    (["rm", "dog@5"], NotFoundError.exit_code, "no version 5"),
    (["add", "{b}", "--name", "dog", "--meta", "novalue"], 2, "KEY=VALUE"),
]

def test_errors_are_one_line_with_exit_codes(files):
    run_cli("add", str(files["a"]), "--name", "dog", check=True)
    before = run_json("show", "dog")
    for args, code, message in ERROR_CASES:
        args = [str(files[a[1:-1]]) if a.startswith("{") else a for a in args]
        result = run_cli(*args, "--json")
        assert result.returncode == code, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], (args, lines)
        assert result.stdout == ""
    after = run_json("show", "dog")  # nothing lost or changed
    assert (after["versions"], after["tags"], after["tag_history"]) == (before["versions"], {}, [])
    assert [s["name"] for s in run_json("list")] == ["dog"]


def test_verify_fails_on_tampered_blob(files, cones2_home):
    added = run_json("add", str(files["a"]), "--name", "dog")
    blob = cones2_home / "blobs" / "sha256" / added["sha256"]
    os.chmod(blob, 0o644)
    blob.write_bytes(blob.read_bytes().replace(b"dog", b"cat", 1))
    result = run_cli("verify")
    assert result.returncode == IntegrityError.exit_code
    assert "CORRUPT" in result.stdout and "dog@1" in result.stdout
    assert result.stderr.strip() == "Error: 1 blob(s) missing or corrupt"
    report = json.loads(run_cli("verify", "--json").stdout)
    assert report["corrupt"][0]["refs"] == ["dog@1"]
    export = run_cli("export", "dog", str(cones2_home / "x.safetensors"))
    assert export.returncode == IntegrityError.exit_code and "is corrupt" in export.stderr
    assert not (cones2_home / "x.safetensors").exists()


def test_catalogue_commands_do_not_import_heavy_libraries(files):
    run_cli("add", str(files["a"]), "--name", "dog", check=True)
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom cones2.cli import main\n"
        "for args in (['list'], ['show', 'dog'], ['search', 'dog'], ['tag', 'dog', 'x'], ['untag', 'dog', 'x'], ['verify'], ['gc', '--dry-run'], ['export', 'dog', sys.argv[1]]):\n"
        "    r = CliRunner().invoke(main, args)\n"
        "    assert r.exit_code == 0, (args, r.output)\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(files["a"].parent / "out.safetensors")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    # `list` at the schema head needs neither SQLAlchemy nor numpy (cold start).
    result = subprocess.run([sys.executable, "-X", "importtime", str(Path(sys.executable).parent / "cones2"), "list"], capture_output=True, text=True)
    assert result.returncode == 0
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "diffusers", "transformers", "sqlalchemy", "alembic", "numpy"}


def test_legacy_pt_import(tmp_path, demo_model_dir):
    torch = pytest.importorskip("torch")
    pt = tmp_path / "dog.pt"
    torch.save(torch.randn(1, 32), pt)
    missing_word = run_cli("add", str(pt), "--name", "dog")
    assert missing_word.returncode == 2 and "--word" in missing_word.stderr
    added = run_json("add", str(pt), "--name", "dog", "--word", "dog")
    assert added["word"] == "dog" and added["metadata"]["imported_from"] == "cones-v2 .pt"
    bad = tmp_path / "bad.pt"
    torch.save(torch.randn(1, 16), bad)
    result = run_cli("add", str(bad), "--name", "dog", "--word", "dog")
    assert result.returncode == InvalidResidualError.exit_code and "hidden size 16" in result.stderr


def test_read_only_home(files, tmp_path):
    """A home that cannot be written: reads work, writes fail with one line, nothing is lost."""
    if os.geteuid() == 0 and not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: cannot make a read-only folder binding for the command")
    home = tmp_path / "ro-home"
    env = {"CONES2_HOME": str(home)}
    run_cli("add", str(files["a"]), "--name", "dog", env=env, check=True)
    before = run_json("show", "dog", env=env)
    tree = [home, *home.rglob("*")]
    try:
        for path in tree:
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
        listed = run_cli("list", "--json", env=env, obey_permissions=True)
        assert listed.returncode == 0, listed.stderr
        assert [s["name"] for s in json.loads(listed.stdout)] == ["dog"]
        shown = run_cli("show", "dog", "--json", env=env, obey_permissions=True)
        assert json.loads(shown.stdout)["version"]["sha256"] == before["version"]["sha256"]
        for args in (["add", str(files["b"]), "--name", "dog"], ["tag", "dog@1", "stable"], ["rm", "dog"], ["gc"]):
            result = run_cli(*args, env=env, obey_permissions=True)
            assert result.returncode == 7, (args, result.stderr)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: "), lines
            assert "not writable" in lines[0] or "read-only" in lines[0] or "Permission denied" in lines[0], lines
    finally:
        for path in tree:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
    after = run_json("show", "dog", env=env)
    assert after["versions"] == before["versions"] and after["tags"] == {}
    assert run_json("verify", env=env)["ok"] is True
