"""Residual file format v1: round trip, sizes, and every refusal with a one-line error."""

from __future__ import annotations

import json
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import save

from cones2.errors import BaseModelMismatchError, InvalidResidualError
from cones2.residual_file import (
    ResidualFile,
    ensure_compatible,
    import_legacy_pt,
    make_residual,
    parse_residual,
    read_residual,
)

FP = "ab" * 32
OTHER_FP = "cd" * 32


def _meta(**over: str) -> dict[str, str]:
    meta = {
        "format": "cones2.residual",
        "format_version": "1",
        "word": "dog",
        "token_ids": "[643]",
        "hidden_size": "4",
        "base": FP,
        "dtype": "float32",
        "meta": "{}",
    }
    meta.update(over)
    return {k: v for k, v in meta.items() if v is not None}


def _raw(tensors: dict[str, np.ndarray] | None = None, **meta: str) -> bytes:
    if tensors is None:
        tensors = {"residual": np.ones((1, 4), dtype=np.float32)}
    return save(tensors, metadata=_meta(**meta))


def test_round_trip_float32_and_float16(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    rf = make_residual(arr, "teapot", [1, 2], FP, {"trained_steps": 4000, "note": "ünïcode"})
    path = rf.save(tmp_path / "r.safetensors")
    back = read_residual(path)
    assert back.word == "teapot" and back.token_ids == (1, 2) and back.base_fingerprint == FP
    assert back.metadata == {"trained_steps": 4000, "note": "ünïcode"}
    np.testing.assert_array_equal(back.residual, arr)
    assert back.sha256() == rf.sha256()
    half = rf.with_dtype("float16")
    back16 = parse_residual(half.to_bytes())
    assert back16.dtype == "float16" and back16.shape == (2, 8)
    np.testing.assert_allclose(back16.residual.astype(np.float32), arr, atol=1e-2)


def test_torch_tensor_input_and_as_torch() -> None:
    t = torch.randn(1, 16)
    rf = make_residual(t, "dog", [643], FP)
    assert torch.equal(rf.as_torch(), t)
    one_d = make_residual(torch.randn(16), "dog", [643], FP)
    assert one_d.shape == (1, 16)


def test_sizes_of_a_one_token_sd2_residual(tmp_path: Path) -> None:
    """The paper reports 4.8 KB per subject; the issue bounds ours at 4,600 / 2,500 bytes."""
    arr = np.random.default_rng(1).standard_normal((1, 1024)).astype(np.float32)
    rf = make_residual(arr, "dog", [1929], FP)
    f32 = rf.save(tmp_path / "f32.safetensors").stat().st_size
    f16 = rf.with_dtype("float16").save(tmp_path / "f16.safetensors").stat().st_size
    assert f32 <= 4600, f32
    assert f16 <= 2500, f16
    assert f32 > 4096 and f16 > 2048  # the data itself is in there


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not a safetensors file (too short"),
        (b"\x00" * 7, "too short"),
        (struct.pack("<Q", 5) + b"{}", "header cut off"),
        (struct.pack("<Q", 2) + b"[]", "header is not an object"),
        (struct.pack("<Q", 3) + b"abc", "header is not JSON"),
        (b"PK\x03\x04" + b"\x00" * 100, "not a safetensors file"),
    ],
)
def test_not_safetensors(data: bytes, message: str) -> None:
    with pytest.raises(InvalidResidualError, match="^x.st: .*" + message.replace("(", r"\(")):
        parse_residual(data, "x.st")


def test_truncated_file(tmp_path: Path) -> None:
    data = _raw()
    path = tmp_path / "t.safetensors"
    path.write_bytes(data[:-3])
    with pytest.raises(InvalidResidualError, match=f"^{path}: truncated safetensors file"):
        read_residual(path)
    path.write_bytes(data + b"junk")
    with pytest.raises(InvalidResidualError, match="trailing bytes"):
        read_residual(path)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tensors": {"other": np.ones((1, 4), np.float32)}}, "expected exactly one tensor 'residual', found other"),
        ({"tensors": {"residual": np.ones((1, 4), np.float32), "x": np.ones(1, np.float32)}}, "exactly one tensor"),
        ({"format_version": "2"}, "unknown format version '2'"),
        ({"format": "something"}, "not a cones2 residual file"),
        ({"word": None}, "missing metadata word"),
        ({"tensors": {"residual": np.ones((4,), np.float32)}}, "rank 2"),
        ({"tensors": {"residual": np.ones((1, 1, 4), np.float32)}}, "rank 2"),
        ({"hidden_size": "8"}, "hidden size 4 does not match the declared 8"),
        ({"token_ids": "[1, 2]"}, r"2 token id\(s\) \[1, 2\] but the residual has 1 row"),
        ({"token_ids": "[]"}, "non-empty list"),
        ({"token_ids": "[-1]"}, "non-negative"),
        ({"token_ids": "nope"}, "malformed metadata"),
        ({"meta": "[1]"}, "malformed metadata"),
        ({"base": "xyz"}, "64 lower-case hex"),
        ({"dtype": "float16"}, "metadata says dtype float16"),
        ({"tensors": {"residual": np.ones((1, 4), np.float64)}}, "not F32 or F16"),
        ({"tensors": {"residual": np.array([[1.0, np.nan, 0, 0]], np.float32)}}, "NaN or Inf"),
        ({"tensors": {"residual": np.array([[1.0, np.inf, 0, 0]], np.float32)}}, "NaN or Inf"),
    ],
)
def test_invalid_contents(kwargs: dict, message: str) -> None:
    tensors = kwargs.pop("tensors", None)
    with pytest.raises(InvalidResidualError, match=message) as info:
        parse_residual(_raw(tensors, **kwargs), "bad.safetensors")
    assert str(info.value).startswith("bad.safetensors: ")
    assert "\n" not in str(info.value)


def test_no_metadata_at_all() -> None:
    data = save({"residual": np.ones((1, 4), np.float32)})
    with pytest.raises(InvalidResidualError, match="no cones2 metadata"):
        parse_residual(data, "plain")


def test_constructor_validation() -> None:
    with pytest.raises(InvalidResidualError, match="NaN"):
        make_residual(np.full((1, 4), np.nan, np.float32), "dog", [1], FP)
    with pytest.raises(InvalidResidualError, match="1 token id"):
        make_residual(np.ones((2, 4), np.float32), "dog", [1], FP)
    with pytest.raises(InvalidResidualError, match="JSON-serialisable"):
        make_residual(np.ones((1, 4), np.float32), "dog", [1], FP, {"x": object()})
    with pytest.raises(InvalidResidualError, match="invalid subject word"):
        ResidualFile(np.ones((1, 4), np.float32), " ", (1,), FP)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidResidualError, match="no such file"):
        read_residual(tmp_path / "nope.safetensors")


def test_ensure_compatible() -> None:
    rf = make_residual(np.ones((1, 4), np.float32), "dog", [1], FP)
    ensure_compatible(rf, FP, 4)
    with pytest.raises(InvalidResidualError, match="hidden size 4 does not fit the base model's text encoder \\(1024\\)"):
        ensure_compatible(rf, FP, 1024)
    with pytest.raises(BaseModelMismatchError, match=f"learned on base model {FP[:12]}, not on {OTHER_FP[:12]} \\(sd21\\)"):
        ensure_compatible(rf, OTHER_FP, 4, model="sd21")


# ----------------------------------------------------------------- legacy .pt import


def test_legacy_pt_import(tmp_path: Path) -> None:
    t = torch.randn(1, 32)
    torch.save(t, tmp_path / "dog.pt")
    rf = import_legacy_pt(tmp_path / "dog.pt", "dog", [643], FP, hidden_size=32)
    assert rf.shape == (1, 32) and rf.metadata["imported_from"] == "cones-v2 .pt"
    np.testing.assert_array_equal(rf.residual, t.numpy())
    torch.save(torch.randn(32), tmp_path / "flat.pt")
    assert import_legacy_pt(tmp_path / "flat.pt", "dog", [643], FP, hidden_size=32).shape == (1, 32)
    torch.save(torch.randn(2, 32), tmp_path / "two.pt")
    assert import_legacy_pt(tmp_path / "two.pt", "teapot", [5, 6], FP, hidden_size=32).shape == (2, 32)


@pytest.mark.parametrize(
    ("obj", "kwargs", "message"),
    [
        ({"residual": torch.randn(1, 32)}, {}, "must hold a bare tensor, found dict"),
        (torch.randn(1, 16), {}, "hidden size 16 does not match the base model's 32"),
        (torch.randn(2, 32), {}, r"2 row\(s\) but 'dog' is 1 token"),
        (torch.randn(1, 2, 32), {}, "must have shape"),
        (torch.full((1, 32), float("nan")), {}, "NaN"),
    ],
)
def test_legacy_pt_refusals(tmp_path: Path, obj: object, kwargs: dict, message: str) -> None:
    torch.save(obj, tmp_path / "bad.pt")
    with pytest.raises(InvalidResidualError, match=message):
        import_legacy_pt(tmp_path / "bad.pt", "dog", [643], FP, hidden_size=32)


class _Exploit:
    """Unpickling this would create a marker file: the import must never run it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save(_Exploit(str(marker)), path)
    # A plain pickle too (not a torch zip archive).
    raw = tmp_path / "evil_raw.pt"
    raw.write_bytes(pickle.dumps(_Exploit(str(marker))))
    for candidate in (path, raw):
        with pytest.raises(InvalidResidualError, match="refused legacy .pt file"):
            import_legacy_pt(candidate, "dog", [643], FP, hidden_size=32)
    assert not marker.exists()
    # Proof that the payload is live: loading it unsafely would have created the marker.
    pickle.loads(raw.read_bytes())
    assert marker.exists()


def test_garbage_pt(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a pickle at all")
    with pytest.raises(InvalidResidualError, match="refused legacy .pt file"):
        import_legacy_pt(tmp_path / "junk.pt", "dog", [643], FP, hidden_size=32)
    with pytest.raises(InvalidResidualError, match="no such file"):
        import_legacy_pt(tmp_path / "missing.pt", "dog", [643], FP, hidden_size=32)


def test_metadata_is_json_strings(tmp_path: Path) -> None:
    rf = make_residual(np.ones((1, 4), np.float32), "dog", [643], FP, {"a": [1, 2]})
    data = rf.to_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    assert all(isinstance(v, str) for v in header["__metadata__"].values())
    assert header["__metadata__"]["meta"] == '{"a":[1,2]}'


def test_bytes_are_canonical_and_readable_by_safetensors(tmp_path: Path) -> None:
    """Equal content gives equal bytes in any process (content addressing relies on it)."""
    import subprocess
    import sys

    from safetensors import safe_open
    from safetensors.numpy import load

    rf = make_residual(np.arange(8, dtype=np.float32).reshape(1, 8), "dog", [643], FP, {"b": 1, "a": 2})
    code = (
        "import numpy as np; from cones2.residual_file import make_residual;"
        f"print(make_residual(np.arange(8, dtype=np.float32).reshape(1, 8), 'dog', [643], '{FP}', {{'a': 2, 'b': 1}}).sha256())"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == rf.sha256()
    data = rf.to_bytes()
    np.testing.assert_array_equal(load(data)["residual"], rf.residual)
    path = rf.save(tmp_path / "r.safetensors")
    with safe_open(str(path), "numpy") as fh:
        assert fh.metadata()["word"] == "dog"
    # A file written by safetensors' own writer reads back to the same canonical bytes.
    foreign = save({"residual": rf.residual}, metadata={k: v for k, v in json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])["__metadata__"].items()})
    assert parse_residual(foreign).to_bytes() == data
