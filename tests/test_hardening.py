"""Issue 14: the hostile inputs and faults that used to lose data, hang or print tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cones2.cli import main


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stdout, result.stderr


def one_error(err: str) -> str:
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture()
def fp(demo_model_dir: Path) -> str:
    from cones2.base_model import model_info

    return model_info(str(demo_model_dir)).fingerprint


def residual_file(path: Path, fp: str, seed: int = 0, word: str = "dog", ids: tuple[int, ...] = (643,), meta: dict | None = None) -> Path:
    from cones2.residual_file import make_residual

    rng = np.random.default_rng(seed)
    return make_residual(rng.standard_normal((len(ids), 32)).astype("float32"), word, list(ids), fp, meta).save(path)


# ---------------------------------------------------------------- 1. damaged catalogue


@pytest.mark.parametrize("damage", ["empty", "missing", "garbage"])
def test_damaged_catalogue_is_refused_and_gc_keeps_the_blobs(tmp_path: Path, fp: str, cones2_home: Path, damage: str) -> None:
    src = residual_file(tmp_path / "d.safetensors", fp)
    assert run("add", src, "--name", "dog")[0] == 0
    db = cones2_home / "catalogue.db"
    for extra in ("-wal", "-shm"):
        db.with_name(db.name + extra).unlink(missing_ok=True)
    if damage == "empty":
        db.write_bytes(b"")
    elif damage == "missing":
        db.unlink()
    else:
        db.write_bytes(b"\x00garbage" * 512)
    blobs = list((cones2_home / "blobs" / "sha256").iterdir())
    assert len(blobs) == 1
    for command in (["verify"], ["gc"], ["list"]):
        code, _, err = run(*command)
        assert code == 7, err
        line = one_error(err)
        assert "doctor" in line and "catalogue.db.rolling.bak" in line  # names the backup to restore
    assert [p.name for p in (cones2_home / "blobs" / "sha256").iterdir()] == [blobs[0].name]


def test_rolling_backup_is_taken_after_writes_at_most_every_interval(tmp_path: Path, fp: str, cones2_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bak = cones2_home / "catalogue.db.rolling.bak"
    assert run("add", residual_file(tmp_path / "a.safetensors", fp), "--name", "dog")[0] == 0
    assert bak.is_file()
    first = bak.stat().st_mtime_ns
    assert run("add", residual_file(tmp_path / "b.safetensors", fp, seed=1), "--name", "dog")[0] == 0
    assert bak.stat().st_mtime_ns == first  # within the interval: no new copy
    monkeypatch.setenv("CONES2_BACKUP_INTERVAL_S", "0")
    assert run("add", residual_file(tmp_path / "c.safetensors", fp, seed=2), "--name", "cat-x", "--word", "dog")[0] == 0
    import sqlite3

    with sqlite3.connect(bak) as conn:
        assert conn.execute("SELECT count(*) FROM versions").fetchone()[0] == 3


def test_doctor_restores_the_backup_and_recovers_blobs_from_their_metadata(tmp_path: Path, fp: str, cones2_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run("add", residual_file(tmp_path / "a.safetensors", fp), "--name", "dog")[0] == 0  # backup holds dog@1
    assert run("add", residual_file(tmp_path / "b.safetensors", fp, seed=1), "--name", "dog")[0] == 0  # not in the backup
    db = cones2_home / "catalogue.db"
    db.write_bytes(b"")
    code, out, err = run("doctor", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["healthy"] is False and report["restored_from"].endswith("catalogue.db.rolling.bak")
    assert [r["ref"].split("@")[0] for r in report["recovered"]] == [report["recovered"][0]["ref"].split("@")[0]]
    assert report["recovered"][0]["ref"].startswith("recovered/dog-")
    code, out, _ = run("list", "--json")
    assert code == 0
    assert sorted(s["name"] for s in json.loads(out)) == sorted(["dog", report["recovered"][0]["ref"].split("@")[0]])
    assert run("verify")[0] == 0
    assert any(p.name.startswith("catalogue.db.damaged-") for p in cones2_home.iterdir())
    code, out, _ = run("doctor", "--json")
    assert json.loads(out)["healthy"] is True


def test_doctor_without_backup_rebuilds_rows_from_blobs(tmp_path: Path, fp: str, cones2_home: Path) -> None:
    assert run("add", residual_file(tmp_path / "a.safetensors", fp, meta={"owner": "ann"}), "--name", "dog")[0] == 0
    for p in cones2_home.glob("catalogue.db*"):
        p.unlink()
    code, out, err = run("doctor", "--json")
    assert code == 0, err
    (item,) = json.loads(out)["recovered"]
    code, out, _ = run("show", item["ref"], "--json")
    shown = json.loads(out)["version"]
    assert shown["word"] == "dog" and shown["token_ids"] == [643] and shown["metadata"] == {"owner": "ann"}
    assert shown["base_fingerprint"] == fp


def test_gc_refuses_to_empty_the_store_when_no_versions_exist(tmp_path: Path, fp: str, cones2_home: Path) -> None:
    assert run("add", residual_file(tmp_path / "a.safetensors", fp), "--name", "dog")[0] == 0
    assert run("rm", "dog")[0] == 0
    code, out, err = run("gc")
    assert code == 7 and "--force" in one_error(err) and "Would delete 1 blob(s)" in out
    assert len(list((cones2_home / "blobs" / "sha256").iterdir())) == 1
    code, out, _ = run("gc", "--force")
    assert code == 0 and "Deleted 1 blob(s)" in out
    assert list((cones2_home / "blobs" / "sha256").iterdir()) == []
