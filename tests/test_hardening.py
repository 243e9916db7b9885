"""Issue 14: the hostile inputs and faults that used to lose data, hang or print tracebacks."""

from __future__ import annotations

import json
import os
import time
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


# ---------------------------------------------------------------- 4, 5. bounded parsers


def _safetensors(header: bytes, body: bytes = b"") -> bytes:
    import struct

    return struct.pack("<Q", len(header)) + header + body


DEEP = ("[" * 100000 + "]" * 100000)


def test_deep_json_everywhere_is_one_error(tmp_path: Path, fp: str) -> None:
    import struct

    from cones2.errors import InvalidResidualError, RemoteError
    from cones2.registry.hub.manifest import parse_manifest
    from cones2.residual_file import parse_residual

    with pytest.raises(InvalidResidualError, match="nested deeper"):
        parse_residual(_safetensors(DEEP.encode()), "x")
    good = residual_file(tmp_path / "g.safetensors", fp).read_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    for key in ("meta", "token_ids"):
        header = json.loads(good[8 : 8 + n])
        header["__metadata__"][key] = DEEP
        with pytest.raises(InvalidResidualError, match="malformed metadata"):
            parse_residual(_safetensors(json.dumps(header).encode(), good[8 + n :]), "x")
    with pytest.raises(RemoteError, match="nested deeper"):
        parse_manifest(DEEP.encode(), "hub")
    bad = tmp_path / "deep.safetensors"
    bad.write_bytes(_safetensors(DEEP.encode()))
    code, _, err = run("add", bad, "--name", "deep")
    assert code == 3 and "nested deeper" in one_error(err)


def test_huge_declared_tensor_and_huge_file_are_refused_without_reading(tmp_path: Path, fp: str) -> None:
    import resource
    import struct

    good = residual_file(tmp_path / "g.safetensors", fp).read_bytes()
    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + n])
    header["residual"]["shape"] = [1, 536870912]
    header["residual"]["data_offsets"] = [0, 4 * 536870912]
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(_safetensors(json.dumps(header).encode()))
    os.truncate(huge, 2 << 30)  # sparse: no disk, no memory
    zeros = tmp_path / "zeros.safetensors"
    zeros.touch()
    os.truncate(zeros, 2 << 30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for path in (huge, zeros):
        start = time.monotonic()
        code, _, err = run("add", path, "--name", "huge")
        assert code == 3 and "not read" in one_error(err)
        assert time.monotonic() - start < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200_000  # KiB: nothing read whole
    from cones2.errors import InvalidResidualError
    from cones2.residual_file import parse_residual

    with pytest.raises(InvalidResidualError, match="larger than a residual can be"):
        parse_residual(_safetensors(json.dumps(header).encode()), "declared")


# ---------------------------------------------------------------- 7. legacy .pt


def test_pt_accepts_parameters_and_refuses_sparse_in_one_line(tmp_path: Path) -> None:
    import torch

    param = tmp_path / "param.pt"
    torch.save(torch.nn.Parameter(torch.randn(32)), param)
    code, out, err = run("add", param, "--name", "dog-param", "--word", "dog")
    assert code == 0, err
    sparse = tmp_path / "sparse.pt"
    torch.save(torch.randn(1, 32).to_sparse(), sparse)
    code, _, err = run("add", sparse, "--name", "dog-sparse", "--word", "dog")
    assert code == 3 and "dense tensor" in one_error(err)


def test_pt_refusals_come_before_torch_is_imported(tmp_path: Path) -> None:
    import subprocess
    import sys

    import torch

    torch.save(torch.randn(1, 32).to_sparse(), tmp_path / "sparse.pt")
    torch.save({"residual": torch.randn(1, 32)}, tmp_path / "dict.pt")
    (tmp_path / "payload.pt").write_bytes(b"\x80\x02cos\nsystem\n(S'echo pwned'\ntR.")
    (tmp_path / "junk.pt").write_bytes(b"not a pickle at all")
    torch.save(torch.nn.Parameter(torch.randn(32)), tmp_path / "param.pt")
    script = (
        "import sys\nfrom cones2.residual_file import read_legacy_pt\nfrom cones2.errors import InvalidResidualError\n"
        f"for name in ('sparse', 'dict', 'payload', 'junk'):\n"
        f"    try:\n        read_legacy_pt({str(tmp_path)!r} + '/' + name + '.pt', 32)\n"
        "    except InvalidResidualError as exc:\n        print(name, exc)\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
        f"print(read_legacy_pt({str(tmp_path)!r} + '/param.pt', 32).shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert [line.split()[0] for line in out[:4]] == ["sparse", "dict", "payload", "junk"]
    assert "dense tensor, not a sparse one" in out[0] and "found dict" in out[1] and "'os system'" in out[2]
    assert "refused legacy .pt file" in out[3]
    assert out[4] == "no torch"  # every refusal above came from reading the pickle's opcodes, not from torch.load
    assert out[5] == "(1, 32)"  # a Parameter passes the screen and loads


# ---------------------------------------------------------------- 8. versions


def test_version_overflow_is_refused_before_anything_commits(tmp_path: Path, fp: str, cones2_home: Path) -> None:
    from cones2.registry.refs import MAX_VERSION

    assert run("add", residual_file(tmp_path / "a.safetensors", fp), "--name", "dog", "--version", MAX_VERSION)[0] == 0
    code, _, err = run("add", residual_file(tmp_path / "b.safetensors", fp, seed=1), "--name", "dog")
    assert code == 2 and "highest version number" in one_error(err) and "nothing stored" in err
    code, out, _ = run("list", "--json")
    assert json.loads(out)[0]["versions"] == 1
    assert len(list((cones2_home / "blobs" / "sha256").iterdir())) == 1  # the refused content left no blob


def test_a_refused_add_keeps_a_blob_that_a_version_refers_to(tmp_path: Path, fp: str, cones2_home: Path) -> None:
    src = residual_file(tmp_path / "a.safetensors", fp)
    assert run("add", src, "--name", "dog")[0] == 0
    code, _, err = run("add", src, "--name", "dog", "--version", "1000000000")
    assert code == 2
    code, _, err = run("add", src, "--name", "mug", "--word", "cat")  # refused after the blob existed already
    assert code != 0, err
    assert run("verify")[0] == 0


# ---------------------------------------------------------------- 9, 10. layouts


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (the pixel data is never decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("size", [(40000, 40000), (9000, 9000)])
def test_huge_layout_images_are_refused_in_one_line(tmp_path: Path, size: tuple[int, int]) -> None:
    from cones2.errors import LayoutError
    from cones2.sampler.layout import Layout

    png = _png_header_only(tmp_path / "big.png", *size)
    with pytest.raises(LayoutError, match="scale it down"):
        Layout.from_colour_image(png, {"255,0,0": "dog"})
    with pytest.raises(LayoutError, match="scale it down"):
        Layout.from_masks({"dog": png})


@pytest.mark.parametrize("option", ["--mask", "--layout-image"])
def test_huge_layout_files_are_refused_before_any_model_is_read(tmp_path: Path, option: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import cones2.base_model

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the base model was read before the layout was checked")

    monkeypatch.setattr(cones2.base_model, "model_info", no_model)
    png = _png_header_only(tmp_path / "big.png", 40000, 40000)
    layout = ["--mask", f"dog={png}"] if option == "--mask" else ["--layout-image", png, "--colour", "255,0,0=dog"]
    code, _, err = run("generate", "a dog", *layout, "--steps", "1", "--output", tmp_path / "o.png")
    assert code == 6 and "scale it down" in one_error(err)
    assert not (tmp_path / "o.png").exists()


def test_one_colour_for_two_words_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    img = tmp_path / "layout.png"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(img)
    code, _, err = run("generate", "a dog and a mug", "--layout-image", img, "--colour", "255,0,0=dog",
                       "--colour", "#ff0000=mug", "--output", tmp_path / "out")
    assert code == 6 and "already given for 'dog'" in one_error(err)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ---------------------------------------------------------------- 11. smaller ones


@pytest.mark.parametrize("name", ["dog.", "dog-", "a--b", "ns/dog-"])
def test_names_the_hub_would_refuse_are_refused_at_add(tmp_path: Path, fp: str, name: str) -> None:
    code, _, err = run("add", residual_file(tmp_path / "a.safetensors", fp), "--name", name)
    assert code == 2 and "could not be pushed" in one_error(err)


def test_search_for_punctuation_only_is_refused(tmp_path: Path, fp: str) -> None:
    assert run("add", residual_file(tmp_path / "a.safetensors", fp, meta={"k": "v"}), "--name", "dog")[0] == 0
    code, _, err = run("search", '"')
    assert code == 2 and "would match everything" in one_error(err)
    code, out, _ = run("search", "dog", "--json")
    assert [s["name"] for s in json.loads(out)] == ["dog"]


def test_meta_with_stored_content_is_reported_as_ignored(tmp_path: Path, fp: str) -> None:
    src = residual_file(tmp_path / "a.safetensors", fp)
    assert run("add", src, "--name", "dog")[0] == 0
    code, out, _ = run("add", src, "--name", "dog", "--meta", "owner=ann")
    assert code == 0 and "--meta ignored" in out
    code, out, _ = run("add", src, "--name", "dog", "--meta", "owner=ann", "--json")
    data = json.loads(out)
    assert data["created"] is False and data["ignored"] == ["meta"] and data["metadata"] == {}


def test_concurrent_adds_of_the_same_content_report_one_creation(tmp_path: Path, fp: str) -> None:
    import subprocess
    import sys

    src = residual_file(tmp_path / "a.safetensors", fp)
    cmd = [str(Path(sys.executable).parent / "cones2"), "add", str(src), "--name", "dog", "--json"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    results = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    assert sum(json.loads(out)["created"] for out, _ in results) == 1


# ---------------------------------------------------------------- 6. token ids


def test_token_ids_must_spell_the_word_at_add(tmp_path: Path, fp: str) -> None:
    code, _, err = run("add", residual_file(tmp_path / "a.safetensors", fp, ids=(644,)), "--name", "dog")
    assert code == 3 and "spell" in one_error(err) and "not the word 'dog'" in err
    code, _, err = run("add", residual_file(tmp_path / "b.safetensors", fp, word="teapot", ids=(83, 68, 64, 79, 78, 339)), "--name", "pot")
    assert code == 0, err


def test_token_ids_are_checked_at_pull(demo_model_dir: Path) -> None:
    from types import SimpleNamespace

    from cones2.base_model import model_info
    from cones2.errors import InvalidResidualError
    from cones2.registry.hub.pull import _check_base

    info = model_info(str(demo_model_dir))
    manifest = SimpleNamespace(base_fingerprint=info.fingerprint, base_model=None, word="dog", token_ids=(644,))
    with pytest.raises(InvalidResidualError, match="spell"):
        _check_base(manifest, "hub", info)
    _check_base(SimpleNamespace(**{**vars(manifest), "token_ids": (643,)}), "hub", info)


def test_add_takes_bytes_and_add_bytes_refuses_unpushable_names_like_add(tmp_path: Path, fp: str) -> None:
    from cones2.errors import InvalidNameError
    from cones2.registry import open_catalogue

    data = residual_file(tmp_path / "d.safetensors", fp).read_bytes()
    with open_catalogue() as cat:
        record = cat.add(data, "dog", source="downloaded")
        assert record.version == 1 and record.sha256 == __import__("hashlib").sha256(data).hexdigest()
        with pytest.raises(InvalidNameError, match="could not be pushed"):
            cat.add_bytes(data, "dog-")
        assert cat.add_bytes(data, "cat", description="same bytes").name == "cat"


def test_pt_import_encodes_the_word_like_transformers_without_importing_it(demo_model_dir: Path) -> None:
    import subprocess
    import sys

    from transformers import CLIPTokenizer

    from cones2.residual import word_token_ids

    reference = CLIPTokenizer.from_pretrained(str(demo_model_dir / "tokenizer"))
    words = ["dog", "teapot", "Red  Mug", "cat-toy", "a's 3d", "café", "sks dog"]
    script = (
        "import json, sys\nfrom cones2.tokencheck import encode_word\n"
        f"print(json.dumps([encode_word({str(demo_model_dir)!r}, w) for w in {words!r}]))\n"
        "print('transformers' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.splitlines()
    assert json.loads(out[0]) == [word_token_ids(reference, w) for w in words]
    assert out[1] == "False"


def test_add_refuses_bad_files_and_names_before_the_catalogue_is_created(tmp_path: Path, fp: str, cones2_home: Path) -> None:
    (tmp_path / "random.safetensors").write_bytes(os.urandom(512))
    (tmp_path / "payload.pt").write_bytes(b"\x80\x02cos\nsystem\n(S'echo pwned'\ntR.")
    good = residual_file(tmp_path / "good.safetensors", fp)
    for args, code in (([tmp_path / "random.safetensors", "--name", "x"], 3), ([tmp_path / "payload.pt", "--name", "x", "--word", "dog"], 3),
                       ([tmp_path / "missing.pt", "--name", "x", "--word", "dog"], 8), ([good, "--name", "dog-"], 2), ([good, "--name", "dog", "--version", "0"], 2)):
        got, _, err = run("add", *args)
        assert got == code, err
        one_error(err)
    assert not (cones2_home / "catalogue.db").exists()  # nothing was opened, created or migrated for a refusal
    assert run("add", good, "--name", "dog")[0] == 0 and (cones2_home / "catalogue.db").is_file()
