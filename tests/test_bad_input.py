"""Bad input through the real CLI: one ``Error:`` line, a non-zero exit, nothing stored changed.

Each case runs ``cones2 ...`` (click's CliRunner on :data:`cones2.cli.main`) and checks
the exit code, that stderr is exactly one line starting with ``Error: `` (no traceback,
no progress bars), and that the catalogue (``list --json``, ``verify --json``) is the
same before and after.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cones2.cli import main

PROMPT = "a dog and a mug on the beach"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    # Anything but a deliberate exit is an unhandled exception (a traceback for a user).
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"cones2 {' '.join(map(str, args))} raised {result.exception!r}"
    )
    return result.exit_code, result.stdout, result.stderr


def state() -> tuple[str, str]:
    code, listed, _ = run("list", "--json")
    assert code == 0
    _, verified, _ = run("verify", "--json")
    return listed, verified


def refused(*args: str, code: int | None = None, text: str | None = None) -> str:
    """Run a command that must fail cleanly; returns its error line."""
    before = state()
    exit_code, _, err = run(*args)
    assert exit_code != 0, f"cones2 {' '.join(map(str, args))} succeeded"
    assert err.startswith("Error: ") and err.count("\n") == 1, err
    if code is not None:
        assert exit_code == code, err
    if text is not None:
        assert text in err, err
    assert state() == before, "the catalogue changed"
    return err


@pytest.fixture()
def fp(demo_model_dir: Path) -> str:
    from cones2.base_model import model_info

    return model_info(str(demo_model_dir)).fingerprint


@pytest.fixture()
def dog(tmp_path: Path, fp: str) -> Path:
    """A valid 'dog' residual file for the demo model, registered as dog-max@1 (tag stable)."""
    from cones2.residual_file import make_residual

    rng = np.random.default_rng(0)
    path = make_residual(rng.standard_normal((1, 32)).astype("float32"), "dog", [643], fp).save(tmp_path / "dog.safetensors")
    assert run("add", path, "--name", "dog-max")[0] == 0
    assert run("tag", "dog-max@1", "stable")[0] == 0
    return path


def _rewrite_header(src: Path, dst: Path, edit) -> Path:  # noqa: ANN001
    """Copy a residual file with its JSON header edited by ``edit(header)``."""
    data = src.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    dst.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])
    return dst


# ---------------------------------------------------------------------------- add: malformed files


def _set_meta(key: str, value: object):  # noqa: ANN202
    def edit(h: dict) -> None:
        h["__metadata__"][key] = value

    return edit


def _set_entry(key: str, value: object):  # noqa: ANN202
    def edit(h: dict) -> None:
        h["residual"][key] = value

    return edit


@pytest.mark.parametrize("edit, text", [
    (_set_meta("word", 5), "invalid subject word"),              # a non-string word crashed
    (_set_meta("word", ""), "invalid subject word"),
    (_set_entry("shape", [1.0, 32]), "malformed tensor entry"),  # float shape crashed
    (_set_entry("shape", [-1, -32]), "malformed tensor entry"),  # negative shape crashed
    (_set_entry("dtype", ["F32"]), "not F32 or F16"),            # unhashable dtype crashed
    (_set_meta("meta", '{"a": NaN}'), "malformed metadata"),     # NaN is not JSON
])
def test_add_malformed_header_is_one_line(dog: Path, tmp_path: Path, edit, text: str) -> None:
    bad = _rewrite_header(dog, tmp_path / "bad.safetensors", edit)
    err = refused("add", bad, "--name", "other", code=3, text=text)
    assert "bad.safetensors" in err  # the error names the file


def test_add_token_id_outside_the_vocabulary(dog: Path, tmp_path: Path) -> None:
    bad = _rewrite_header(dog, tmp_path / "big.safetensors", _set_meta("token_ids", "[99999999]"))
    refused("add", bad, "--name", "other", code=3, text="outside the vocabulary")


@pytest.mark.parametrize("content", [b"", b"hello", b"\x00" * 64])
def test_add_not_a_residual(dog: Path, tmp_path: Path, content: bytes) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(content)
    refused("add", bad, "--name", "dog-max", code=3)


def test_add_nan_residual_and_other_base_model(dog: Path, tmp_path: Path, fp: str) -> None:
    from cones2.residual_file import make_residual

    nan = dog.read_bytes()
    (n,) = struct.unpack("<Q", nan[:8])
    body = bytearray(nan)
    body[8 + n : 8 + n + 4] = np.array([np.nan], dtype="<f4").tobytes()
    (tmp_path / "nan.safetensors").write_bytes(bytes(body))
    refused("add", tmp_path / "nan.safetensors", "--name", "dog-max", code=3, text="NaN")
    other = make_residual(np.ones((1, 32), "float32"), "dog", [643], "0" * 64).save(tmp_path / "o.safetensors")
    refused("add", other, "--name", "dog-max", code=5, text="learned on base model 000000000000")


# ---------------------------------------------------------------------------- add: legacy .pt


def test_legacy_pickle_refusal_is_one_line(dog: Path, tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    """A pickle that is not a tensor: refused unexecuted, and torch's protocol warning stays quiet."""
    import os
    import pickle

    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {marker}",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Evil(), protocol=4))
    refused("add", tmp_path / "evil.pt", "--name", "evil", "--word", "dog", code=3, text="refused legacy .pt")
    assert not marker.exists()
    assert not [w for w in recwarn if "pickle" in str(w.message)], "torch's warning reached the user"


def test_legacy_integer_tensor_is_refused(dog: Path, tmp_path: Path) -> None:
    import torch

    torch.save(torch.zeros(32, dtype=torch.int64), tmp_path / "int.pt")
    refused("add", tmp_path / "int.pt", "--name", "w", "--word", "dog", code=3, text="floating-point")


# ---------------------------------------------------------------------------- add: names, versions, meta


@pytest.mark.parametrize("version", ["1000000000", "99999999999999999999"])
def test_add_version_beyond_what_a_reference_can_name(dog: Path, version: str) -> None:
    # 1000000000 used to be stored, then unreachable (refs take at most 9 digits);
    # 20 digits overflowed SQLite with a traceback.
    refused("add", dog, "--name", "big", "--version", version, code=2, text="999999999")


def test_add_largest_version_is_reachable(dog: Path) -> None:
    code, out, _ = run("add", dog, "--name", "big", "--version", "999999999", "--json")
    assert code == 0 and json.loads(out)["version"] == 999999999
    code, out, _ = run("show", "big@999999999", "--json")
    assert code == 0 and json.loads(out)["version"]["version"] == 999999999


def test_meta_nan_and_infinity_stay_text(tmp_path: Path, dog: Path) -> None:
    code, out, _ = run("add", dog, "--name", "m", "--meta", "a=NaN", "--meta", "b=1e999", "--meta", "c=3", "--json")
    assert code == 0
    meta = json.loads(out)["metadata"]  # strict JSON: no NaN / Infinity tokens
    assert meta["a"] == "NaN" and meta["b"] == "1e999" and meta["c"] == 3


# ---------------------------------------------------------------------------- generate


@pytest.mark.parametrize("args, code, text", [
    (["--height", "7"], 2, "multiple of 8"),           # diffusers' ValueError was a traceback
    (["--width", "65"], 2, "multiple of 8"),
    (["--height", "0"], 2, "multiple of 8"),           # 0 was silently the default size
    (["--cfg", "nan"], 2, "finite"),                   # rendered a NaN image with exit 0
    (["--guidance-weight", "inf"], 2, "finite"),
    (["--device", "nope"], 2, "--device"),             # traceback
    (["--layout-image", "L", "--colour", "255,0,0=dog:x"], 2, "WEIGHT"),  # float('x') traceback
    (["-o", "/proc/no/such/out.png"], 2, "cannot write"),   # failed after sampling, with a traceback
])
def test_generate_refusals_are_one_line(tmp_path: Path, args: list[str], code: int, text: str) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(tmp_path / "L.png")
    args = [str(tmp_path / "L.png") if a == "L" else a for a in args]
    out = tmp_path / "x.png"
    refused("generate", PROMPT, "--steps", "1", "-o", out, *args, code=code, text=text)
    assert not out.exists()


def test_generate_unknown_word_has_no_progress_noise(tmp_path: Path) -> None:
    """Loading bars and notes used to come before the error line on stderr."""
    refused("generate", PROMPT, "--steps", "1", "-o", tmp_path / "x.png", "--box", "cat=0,0,0.5,0.5", code=6, text="cat")


def test_failed_generate_leaves_no_empty_folders(tmp_path: Path) -> None:
    """Output and attention-map folders used to be created before the run, and stayed when it failed."""
    refused("generate", PROMPT, "--steps", "1", "-o", tmp_path / "new" / "x.png", "--attention-maps", tmp_path / "maps",
            "--box", "cat=0,0,0.5,0.5", code=6, text="cat")
    assert not (tmp_path / "new").exists() and not (tmp_path / "maps").exists()
    # an output folder that cannot be made is still refused before sampling
    (tmp_path / "file").write_text("x")
    refused("generate", PROMPT, "--steps", "1", "-o", tmp_path / "x.png", "--attention-maps", tmp_path / "file" / "maps",
            code=2, text="cannot write to")


def test_generate_output_is_a_png_whatever_its_extension(tmp_path: Path) -> None:
    """``-o out.xyz`` used to fail after sampling (PIL: unknown extension) with a traceback."""
    code, _, err = run("generate", "a dog", "--steps", "1", "-o", tmp_path / "out.xyz", "--json")
    assert code == 0, err
    assert (tmp_path / "out.xyz").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- layout preview


@pytest.mark.parametrize("args, code, text", [
    (["--width", "0"], 6, "pixels a side"),                  # numpy traceback
    (["--width", "-5"], 6, "pixels a side"),                 # a confusing aspect-ratio error
    (["--width", "100000", "--height", "100000"], 6, "pixels a side"),  # 30 GB canvas
    (["-o", "/proc/no/such/l.png"], 2, "cannot write"),      # mkdir traceback
    (["-o", "OUT/l.xyz"], 2, "cannot write"),                # PIL: unknown extension
    (["--layout-image", "L", "--colour", "255,0,0=dog", "--tolerance", "nan"], 6, "tolerance"),  # matched nothing
    (["--layout-image", "L", "--colour", "255,0,0=dog", "--tolerance", "-1"], 6, "tolerance"),
])
def test_layout_preview_refusals(tmp_path: Path, args: list[str], code: int, text: str) -> None:
    from PIL import Image

    layout = np.zeros((64, 64, 3), np.uint8)
    layout[:, :32] = (255, 0, 0)
    Image.fromarray(layout).save(tmp_path / "L.png")
    args = [str(tmp_path / "L.png") if a == "L" else a.replace("OUT", str(tmp_path)) for a in args]
    refused("layout", "preview", "--box", "dog=0,0,1,1", "-o", tmp_path / "l.png", *args, code=code, text=text)


# ---------------------------------------------------------------------------- remotes and pull


@pytest.mark.parametrize("namespace", ["../x", "a b", "..", "x/y"])
def test_pull_all_refuses_a_bad_namespace(namespace: str) -> None:
    """``pull --all ../x`` used to exit 0 with an empty mirror."""
    refused("pull", "--all", namespace, code=2, text="invalid Hub namespace")


@pytest.mark.parametrize("content", [
    '{"remotes": {"team": "acme"}}',                            # AttributeError traceback
    '{"remotes": {"team": {}}}',                                # KeyError traceback
    '{"remotes": {"team": {"namespace": "acme", "endpoint": 5}}}',
    "not json",
    "[1]",
])
def test_malformed_remotes_file(cones2_home: Path, content: str) -> None:
    cones2_home.mkdir(parents=True, exist_ok=True)
    (cones2_home / "remotes.json").write_text(content)
    refused("remote", "list", code=2, text="remotes.json")
    refused("pull", "dog-max", code=2, text="remotes.json")
    assert (cones2_home / "remotes.json").read_text() == content


def test_remote_add_and_rm_in_a_read_only_home(dog: Path, cones2_home: Path) -> None:
    """Writing remotes.json into a read-only home was a PermissionError traceback."""
    import os
    import shutil
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _registry_helpers import run_cli

    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot make a read-only folder binding for the command")
    assert run("remote", "add", "team", "acme", "--endpoint", "http://127.0.0.1:9")[0] == 0
    before = (cones2_home / "remotes.json").read_text()
    paths = [cones2_home, *cones2_home.rglob("*")]
    try:
        for path in paths:
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
        for args in (["remote", "add", "other", "acme"], ["remote", "rm", "team"]):
            result = run_cli(*args, obey_permissions=True)
            assert result.returncode == 7, result.stderr
            assert result.stderr.startswith("Error: cannot write") and result.stderr.count("\n") == 1, result.stderr
    finally:
        for path in paths:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
    assert (cones2_home / "remotes.json").read_text() == before


def test_pull_all_with_a_failure_ends_with_one_error_line(hub_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fp: str) -> None:
    """Per-version failures are part of the report (stdout); stderr has exactly one Error line."""
    import uuid

    from cones2.registry import open_catalogue
    from cones2.registry.hub import add_remote, push
    from cones2.residual_file import make_residual

    monkeypatch.setenv("HF_TOKEN", "dummy")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    ns = f"team-{uuid.uuid4().hex[:8]}"
    add_remote("team", ns, hub_server.endpoint, default=True)
    with open_catalogue() as cat:
        cat.add(make_residual(np.ones((1, 32), "float32"), "dog", [643], fp), "dog-max")
    push("dog-max")
    monkeypatch.setenv("CONES2_HOME", str(tmp_path / "home-b"))
    add_remote("team", ns, hub_server.endpoint, default=True)
    with open_catalogue() as cat:  # a local dog-max@1 with other content: that version cannot be pulled
        cat.add(make_residual(np.zeros((1, 32), "float32") + 2, "dog", [643], fp), "dog-max")
    for extra in ([], ["--json"]):
        before = state()
        code, out, err = run("pull", "--all", ns, *extra)
        assert code == 12
        assert err.startswith("Error: 1 of 1 version(s) failed to pull") and err.count("\n") == 1, err
        assert state() == before
        if not extra:
            assert "failed: " in out


# ---------------------------------------------------------------------------- correct already: keep it so


@pytest.mark.parametrize("command", ["show", "export", "rm", "tag"])
@pytest.mark.parametrize("ref, code", [
    ("dog-max@0", 2), ("dog-max@-1", 2), ("dog-max@x", 2), ("dog-max@", 2), ("dog-max:", 2),
    ("dog-max@sha256:", 2), ("dog-max@sha256:702b4b", 2), ("dog-max@sha256:zzzzzzzzzzzz", 2),
    ("dog-max@sha256:ABCDEF012345", 2), ("dog-max@1@2", 2), ("../x", 2), ("a/b/c", 2), ("UPPER", 2), ("", 2),
    ("nope", 8), ("dog-max@2", 8), ("dog-max:nope", 8), ("dog-max@sha256:ffffffffffff", 8),
])
def test_bad_references_everywhere(dog: Path, tmp_path: Path, command: str, ref: str, code: int) -> None:
    extra = {"export": [str(tmp_path / "x.safetensors")], "tag": ["beta"]}.get(command, [])
    refused(command, ref, *extra, "--json", code=code)
    assert not (tmp_path / "x.safetensors").exists()


def test_tampered_blob_is_refused_by_generate_and_healed_by_re_adding(dog: Path, cones2_home: Path, tmp_path: Path) -> None:
    import os

    code, out, _ = run("show", "dog-max", "--json")
    blob = cones2_home / "blobs" / "sha256" / json.loads(out)["version"]["sha256"]
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    refused("generate", "a dog", "--subject", "dog=dog-max", "--steps", "1", "-o", tmp_path / "x.png", code=10, text="corrupt")
    assert not (tmp_path / "x.png").exists()
    assert run("add", dog, "--name", "dog-max")[0] == 0  # same content again rewrites the blob
    code, out, _ = run("verify", "--json")
    assert code == 0 and json.loads(out)["ok"]


@pytest.mark.parametrize("args, code", [
    (["push", "dog-max"], 8), (["pull", "dog-max"], 8), (["pull", "--remote", "nope", "dog-max"], 8),
    (["search", "--remote", "nope", "dog"], 8), (["remote", "rm", "nope"], 8),
    (["remote", "add", "../x", "acme"], 2), (["remote", "add", "UPPER", "acme"], 2), (["remote", "add", "a/b", "acme"], 2),
    (["remote", "add", "team", "../x"], 2), (["remote", "add", "team", "acme", "--endpoint", "ftp://x"], 2),
    (["pull"], 2), (["pull", "a/b/c"], 2), (["pull", "dog-max@sha256:702b4b077dfa"], 2),
])
def test_remote_commands_without_or_with_bad_remotes(dog: Path, args: list[str], code: int) -> None:
    refused(*args, code=code)


@pytest.mark.parametrize("args, code, text", [
    (["--subject", "cat=DOG"], 4, "learned for the word 'dog'"),
    (["--subject", "dog"], 2, "LEFT=RIGHT"),
    (["--subject", "dog=DOG", "--subject", "dog=DOG"], 2, "twice"),
    (["--subject", "dog=dog-max@9"], 8, "no version 9"),
    (["--subject", "dog=../x"], 2, "invalid subject name"),
    (["--box", "dog=0,0,1,1", "--box", "dog=0,0,0.5,0.5"], 2, "twice"),
    (["--box", "dog=0.6,0,0.4,0.5"], 6, None),
    (["--box", "dog=nan,0,1,1"], 6, None),
    (["--mask", "dog=MASK10"], 6, None),           # wrong size
    (["--mask", "dog=NOTIMG"], 6, "not a readable image"),
    (["--layout-image", "L", "--colour", "0,255,0=dog"], 6, "matches no pixel"),
    (["--layout-image", "L", "--colour", "a,b,c=dog"], 6, None),
    (["--weight", "dog=1"], 2, "needs a layout"),
    (["--steps", "0"], 2, "at least 1"),
    (["--num-images", "0"], 2, "at least 1"),
    (["--model", "/nonexistent"], 5, "not a model folder"),
])
def test_generate_refusals_already_one_line(dog: Path, tmp_path: Path, args: list[str], code: int, text: str | None) -> None:
    from PIL import Image

    layout = np.zeros((64, 64, 3), np.uint8)
    layout[:, :32] = (255, 0, 0)
    Image.fromarray(layout).save(tmp_path / "L.png")
    mask = np.zeros((10, 30), np.uint8)
    mask[2:8, 2:8] = 255
    Image.fromarray(mask).save(tmp_path / "m10.png")
    (tmp_path / "notimg.png").write_text("hello")
    subs = {"DOG": str(dog), "L": str(tmp_path / "L.png"), "MASK10": str(tmp_path / "m10.png"), "NOTIMG": str(tmp_path / "notimg.png")}
    def fill(arg: str) -> str:
        for key, value in subs.items():
            arg = value if arg == key else arg.replace(f"={key}", f"={value}")
        return arg

    args = [fill(a) for a in args]
    refused("generate", PROMPT, "--steps", "1", "-o", tmp_path / "x.png", *args, code=code, text=text)
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("case, code, text", [
    ("empty-folder", 2, "no training images"),
    ("corrupt", 13, "corrupt"),
    ("small", 13, "smaller than the training resolution 32"),
    ("special-word", 4, "not whole tokens"),
    ("long-word", 4, "too long"),
    ("other-word", 9, "is a 'dog', not a 'mug'"),
    ("bad-resolution", 2, "multiple of 8"),
    ("unwritable-output", 2, "cannot write"),
    ("bad-name", 2, "invalid subject name"),
])
def test_train_refusals_one_line(dog: Path, tmp_path: Path, case: str, code: int, text: str) -> None:
    from PIL import Image

    good = tmp_path / "good.png"
    Image.fromarray(np.full((40, 40, 3), 128, np.uint8)).save(good)
    (tmp_path / "empty").mkdir()
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"x" * 40)
    Image.fromarray(np.zeros((16, 40, 3), np.uint8)).save(tmp_path / "small.png")
    (tmp_path / "file").write_text("x")
    images, word, name, extra = [good], "dog", "dog-max", []
    if case == "empty-folder":
        images = [tmp_path / "empty"]
    elif case in ("corrupt", "small"):
        images = [good, tmp_path / f"{case}.png"]
    elif case == "special-word":
        word = "<|endoftext|>"
    elif case == "long-word":
        word = "dog" * 40
    elif case == "other-word":
        word = "mug"
    elif case == "bad-resolution":
        extra = ["--resolution", "30"]
    elif case == "unwritable-output":
        extra = ["--output-dir", tmp_path / "file" / "out"]
    elif case == "bad-name":
        name = "Dog Max"
    args = ["--resolution", "32", "--steps", "1", *extra] if case != "bad-resolution" else ["--steps", "1", *extra]
    refused("train", *images, "--word", word, "--name", name, *args, code=code, text=text)
