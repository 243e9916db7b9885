"""The cones2 residual file, format version 1, and import of the reference's ``.pt`` files.

A residual file is a safetensors file with exactly one tensor, ``residual``, of shape
``(tokens of the subject word, hidden size)`` in float32 or float16, and string metadata:

======================  =====================================================
``format``              ``"cones2.residual"``
``format_version``      ``"1"``
``word``                the subject's class word, e.g. ``"dog"``
``token_ids``           JSON list of the word's token ids in the base tokenizer
``hidden_size``         the text encoder's hidden size, e.g. ``"1024"``
``base``                the base-model fingerprint (sha256 hex, see base_model)
``dtype``               ``"float32"`` or ``"float16"``
``meta``                JSON object of free user metadata (may be ``{}``)
``templates``           optional: the name of the prompt-template set the residual
                        was averaged over (``"reference"``, ``"extended"``); files
                        without it (written before the key existed) load as before
======================  =====================================================

Reading validates everything and needs neither torch nor transformers (numpy only), so
catalogue commands stay fast. Every refusal is an :class:`InvalidResidualError` whose
one-line message names the file and the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import jsonlimits
from .errors import InvalidResidualError, ResidualNotFoundError

FORMAT_NAME = "cones2.residual"
FORMAT_VERSION = 1
TENSOR_NAME = "residual"
_DTYPES = {"float32": ("F32", np.float32), "float16": ("F16", np.float16)}
_REQUIRED_KEYS = ("format", "format_version", "word", "token_ids", "hidden_size", "base", "dtype", "meta")
_MAX_HEADER = 1 << 20  # residual headers are a few hundred bytes; refuse absurd ones early
#: A residual is (tokens, hidden size): 77 x 4096 float32 is 1.2 MB. Anything far larger
#: is refused before it is read.
MAX_RESIDUAL_BYTES = 16 << 20


@dataclass(frozen=True)
class ResidualFile:
    """A validated subject residual with the facts needed to apply and check it."""

    residual: np.ndarray  # (len(token_ids), hidden_size), float32 or float16
    word: str
    token_ids: tuple[int, ...]
    base_fingerprint: str
    metadata: dict[str, Any] = field(default_factory=dict)
    templates: str | None = None  # name of the template set, when known

    def __post_init__(self) -> None:
        validate_residual_array(self.residual, self.token_ids, source="residual")
        if not isinstance(self.word, str) or not self.word or self.word != self.word.strip():
            raise InvalidResidualError(f"residual: invalid subject word {self.word!r}")

    @property
    def hidden_size(self) -> int:
        return int(self.residual.shape[1])

    @property
    def dtype(self) -> str:
        return str(self.residual.dtype)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.residual.shape[0]), int(self.residual.shape[1]))

    def to_bytes(self) -> bytes:
        """Serialise to the version-1 safetensors bytes (deterministic for equal content)."""
        meta = {
            "format": FORMAT_NAME,
            "format_version": str(FORMAT_VERSION),
            "word": self.word,
            "token_ids": json.dumps(list(self.token_ids), separators=(",", ":")),
            "hidden_size": str(self.hidden_size),
            "base": self.base_fingerprint,
            "dtype": self.dtype,
            "meta": json.dumps(self.metadata, sort_keys=True, separators=(",", ":")),
        }
        if self.templates is not None:
            meta["templates"] = self.templates
        return _serialise(np.ascontiguousarray(self.residual), meta)

    def sha256(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    def save(self, path: str | os.PathLike[str]) -> Path:
        from .fsutil import atomic_write_bytes

        return atomic_write_bytes(path, self.to_bytes())

    def as_torch(self, dtype: Any = None, device: Any = None):  # noqa: ANN201 - torch optional
        import torch

        return torch.from_numpy(self.residual.copy()).to(device=device, dtype=dtype or torch.float32)

    def with_dtype(self, dtype: str) -> ResidualFile:
        if dtype not in _DTYPES:
            raise InvalidResidualError(f"residual: unsupported dtype {dtype!r} (float32 or float16)")
        return ResidualFile(self.residual.astype(_DTYPES[dtype][1]), self.word, self.token_ids, self.base_fingerprint,
                            dict(self.metadata), self.templates)


def _serialise(array: np.ndarray, meta: dict[str, str]) -> bytes:
    """Canonical safetensors bytes: sorted header keys, space padding to 8 bytes.

    safetensors' own writer orders metadata by a hash map, so the same residual could give
    different bytes (and content hashes) in two processes. This writer follows the same
    file format (little-endian u64 header length, JSON header, raw little-endian data)
    with one fixed layout, so equal content always has the same sha256.
    """
    code = _DTYPES[str(array.dtype)][0]
    data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    header = {
        "__metadata__": meta,
        TENSOR_NAME: {"dtype": code, "shape": list(array.shape), "data_offsets": [0, len(data)]},
    }
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def validate_residual_array(array: np.ndarray, token_ids: tuple[int, ...] | list[int], source: str, hidden_size: int | None = None) -> None:
    """Shape, dtype and finiteness checks shared by the reader and the constructors."""
    if not isinstance(array, np.ndarray):
        raise InvalidResidualError(f"{source}: residual must be an array, got {type(array).__name__}")
    if array.ndim != 2:
        raise InvalidResidualError(f"{source}: residual must have rank 2 (tokens, hidden size), got shape {tuple(array.shape)}")
    if str(array.dtype) not in _DTYPES:
        raise InvalidResidualError(f"{source}: residual dtype {array.dtype} is not float32 or float16")
    if hidden_size is not None and array.shape[1] != hidden_size:
        raise InvalidResidualError(f"{source}: hidden size {array.shape[1]} does not match the declared {hidden_size}")
    if len(token_ids) == 0 or any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in token_ids):
        raise InvalidResidualError(f"{source}: token ids must be a non-empty list of non-negative integers")
    if array.shape[0] != len(token_ids):
        raise InvalidResidualError(
            f"{source}: {len(token_ids)} token id(s) {list(token_ids)} but the residual has {array.shape[0]} row(s)"
        )
    if array.shape[1] == 0:
        raise InvalidResidualError(f"{source}: residual has hidden size 0")
    if not np.isfinite(array.astype(np.float32)).all():
        raise InvalidResidualError(f"{source}: residual contains NaN or Inf values")


def _parse_header(data: bytes, source: str) -> tuple[dict[str, Any], int]:
    if len(data) < 8:
        raise InvalidResidualError(f"{source}: not a safetensors file (too short: {len(data)} bytes)")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len == 0 or header_len > _MAX_HEADER:
        raise InvalidResidualError(f"{source}: not a safetensors file (bad header length)")
    if 8 + header_len > len(data):
        raise InvalidResidualError(f"{source}: truncated safetensors file (header cut off)")
    try:
        header = jsonlimits.loads(bytes(data[8 : 8 + header_len]))
    except jsonlimits.JSONLimitError as exc:
        raise InvalidResidualError(f"{source}: refused safetensors header ({exc})") from None
    except (UnicodeDecodeError, ValueError):
        raise InvalidResidualError(f"{source}: not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise InvalidResidualError(f"{source}: not a safetensors file (header is not an object)")
    return header, 8 + header_len


def parse_residual(data: bytes, source: str = "<bytes>") -> ResidualFile:
    """Validate and decode version-1 residual bytes; ``source`` names them in errors."""
    header, body_start = _parse_header(data, source)
    meta = header.get("__metadata__")
    if not isinstance(meta, dict):
        raise InvalidResidualError(f"{source}: no cones2 metadata (not a cones2 residual file)")
    if meta.get("format") != FORMAT_NAME:
        raise InvalidResidualError(f"{source}: not a cones2 residual file (format {meta.get('format')!r})")
    missing = [k for k in _REQUIRED_KEYS if k not in meta]
    if missing:
        raise InvalidResidualError(f"{source}: missing metadata {', '.join(missing)}")
    if meta["format_version"] != str(FORMAT_VERSION):
        raise InvalidResidualError(
            f"{source}: unknown format version {meta['format_version']!r} (this cones2 reads version {FORMAT_VERSION})"
        )
    tensors = [k for k in header if k != "__metadata__"]
    if tensors != [TENSOR_NAME]:
        found = ", ".join(tensors) or "none"
        raise InvalidResidualError(f"{source}: expected exactly one tensor {TENSOR_NAME!r}, found {found}")
    entry = header[TENSOR_NAME]
    try:
        dtype_code, shape, (start, end) = entry["dtype"], list(entry["shape"]), entry["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise InvalidResidualError(f"{source}: malformed tensor entry") from None
    if not isinstance(shape, list) or any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in shape):
        raise InvalidResidualError(f"{source}: malformed tensor entry (shape must be a list of non-negative integers)")
    codes = {code: (name, np_dtype) for name, (code, np_dtype) in _DTYPES.items()}
    if not isinstance(dtype_code, str) or dtype_code not in codes:
        raise InvalidResidualError(f"{source}: tensor dtype {dtype_code} is not F32 or F16")
    dtype_name, np_dtype = codes[dtype_code]
    if meta["dtype"] != dtype_name:
        raise InvalidResidualError(f"{source}: metadata says dtype {meta['dtype']} but the tensor is {dtype_name}")
    if len(shape) != 2:
        raise InvalidResidualError(f"{source}: residual must have rank 2 (tokens, hidden size), got shape {tuple(shape)}")
    expected = math.prod(shape) * np.dtype(np_dtype).itemsize
    if expected > MAX_RESIDUAL_BYTES:
        raise InvalidResidualError(
            f"{source}: declared tensor of {expected} bytes is larger than a residual can be ({MAX_RESIDUAL_BYTES} bytes)"
        )
    if not (isinstance(start, int) and isinstance(end, int)) or end - start != expected or start != 0:
        raise InvalidResidualError(f"{source}: tensor data offsets do not match its shape")
    if body_start + end > len(data):
        raise InvalidResidualError(f"{source}: truncated safetensors file ({len(data)} bytes, needs {body_start + end})")
    if body_start + end < len(data):
        raise InvalidResidualError(f"{source}: trailing bytes after the tensor data")
    try:
        token_ids = jsonlimits.loads(meta["token_ids"], parse_constant=_refuse_constant)
        hidden_size = int(meta["hidden_size"])
        user_meta = jsonlimits.loads(meta["meta"], parse_constant=_refuse_constant)
    except (ValueError, TypeError):
        raise InvalidResidualError(f"{source}: malformed metadata (token_ids, hidden_size or meta)") from None
    if not isinstance(token_ids, list) or not isinstance(user_meta, dict):
        raise InvalidResidualError(f"{source}: malformed metadata (token_ids must be a list, meta an object)")
    base = meta["base"]
    if not (isinstance(base, str) and len(base) == 64 and all(c in "0123456789abcdef" for c in base)):
        raise InvalidResidualError(f"{source}: base-model fingerprint must be 64 lower-case hex characters")
    array = np.frombuffer(data, dtype=np.dtype(np_dtype).newbyteorder("<"), count=math.prod(shape), offset=body_start)
    array = array.reshape(shape).astype(np_dtype)
    validate_residual_array(array, token_ids, source, hidden_size=hidden_size)
    word = meta["word"]
    if not isinstance(word, str) or not word or word != word.strip():
        raise InvalidResidualError(f"{source}: invalid subject word {word!r}")
    templates = meta.get("templates")
    if templates is not None and (not isinstance(templates, str) or not templates):
        raise InvalidResidualError(f"{source}: malformed metadata (templates must be a set name)")
    return ResidualFile(array, word, tuple(token_ids), base, user_meta, templates)


def _refuse_constant(name: str) -> Any:
    """``json.loads`` hook: NaN and Infinity are not JSON and not valid metadata."""
    raise ValueError(f"{name} is not valid JSON")


def read_residual_bytes(path: str | os.PathLike[str]) -> bytes:
    """The raw bytes of a residual file, with one-line errors for unreadable paths."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size > MAX_RESIDUAL_BYTES + _MAX_HEADER + 8:
                raise InvalidResidualError(
                    f"{path}: {size} bytes is far larger than a residual file can be (at most {MAX_RESIDUAL_BYTES} bytes of data); not read"
                )
            return fh.read()
    except FileNotFoundError:
        raise ResidualNotFoundError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InvalidResidualError(f"{path}: is a folder, not a residual file") from None
    except OSError as exc:
        raise InvalidResidualError(f"{path}: cannot read ({exc.strerror})") from None


def read_residual(path: str | os.PathLike[str]) -> ResidualFile:
    """Read and validate a residual file from disk."""
    return parse_residual(read_residual_bytes(path), str(path))


def make_residual(
    residual: Any,
    word: str,
    token_ids: list[int] | tuple[int, ...],
    base_fingerprint: str,
    metadata: Mapping[str, Any] | None = None,
    dtype: str | None = None,
    templates: str | None = None,
) -> ResidualFile:
    """Build a :class:`ResidualFile` from a numpy array or torch tensor (``templates``: the
    name of the template set it was averaged over, recorded in the file)."""
    if hasattr(residual, "detach"):
        residual = residual.detach().cpu().float().numpy() if dtype != "float16" else residual.detach().cpu().half().numpy()
    array = np.asarray(residual)
    if dtype is not None:
        if dtype not in _DTYPES:
            raise InvalidResidualError(f"residual: unsupported dtype {dtype!r} (float32 or float16)")
        array = array.astype(_DTYPES[dtype][1])
    elif array.dtype not in (np.float32, np.float16):
        array = array.astype(np.float32)
    if array.ndim == 1:
        array = array[None, :]
    try:
        json.dumps(dict(metadata or {}))
    except TypeError as exc:
        raise InvalidResidualError(f"residual: metadata must be JSON-serialisable ({exc})") from None
    return ResidualFile(np.ascontiguousarray(array), word, tuple(int(t) for t in token_ids), base_fingerprint,
                        dict(metadata or {}), templates)


def read_legacy_pt(path: str | os.PathLike[str], hidden_size: int) -> np.ndarray:
    """The residual array of a reference implementation's ``.pt`` (``torch.save`` of a tensor).

    Only a bare dense floating-point tensor of shape ``(tokens, hidden)`` or ``(hidden,)`` is
    accepted; returned as a 2-D float32/float16 array. The file is opened with
    ``torch.load(weights_only=True)``, which refuses any pickle that is not made of tensors and
    plain containers, so a malicious file is rejected without running.
    """
    path = Path(path)
    if not path.is_file():
        raise ResidualNotFoundError(f"{path}: no such file")
    from .ptscreen import screen_legacy_pt

    screen_legacy_pt(path)  # refuses payloads, containers and sparse tensors before torch is imported
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols: not one line, not for users
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (not a zip/pickle), EOFError...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidResidualError(f"{path}: refused legacy .pt file ({type(exc).__name__}: {first[:160]})") from None
    if not isinstance(obj, torch.Tensor):
        raise InvalidResidualError(f"{path}: legacy .pt must hold a bare tensor, found {type(obj).__name__}")
    if obj.layout != torch.strided or getattr(obj, "is_quantized", False) or getattr(obj, "is_nested", False):
        kind = str(obj.layout).removeprefix("torch.") if obj.layout != torch.strided else "quantized or nested"
        raise InvalidResidualError(f"{path}: legacy residual must be a dense tensor, not a {kind} one")
    obj = obj.detach()  # a saved nn.Parameter loads as one; its values are what counts
    if not obj.is_floating_point():
        raise InvalidResidualError(f"{path}: legacy residual must be a floating-point tensor, got {str(obj.dtype).removeprefix('torch.')}")
    if obj.ndim == 1:
        obj = obj[None, :]
    if obj.ndim != 2:
        raise InvalidResidualError(f"{path}: legacy residual must have shape (tokens, {hidden_size}) or ({hidden_size},), got {tuple(obj.shape)}")
    if obj.shape[1] != hidden_size:
        raise InvalidResidualError(f"{path}: hidden size {obj.shape[1]} does not match the base model's {hidden_size}")
    return obj.float().numpy().astype(np.float16 if obj.dtype == torch.float16 else np.float32)


def legacy_residual(
    array: np.ndarray,
    path: str | os.PathLike[str],
    word: str,
    token_ids: list[int] | tuple[int, ...],
    base_fingerprint: str,
    metadata: Mapping[str, Any] | None = None,
) -> ResidualFile:
    """A :class:`ResidualFile` from the array :func:`read_legacy_pt` returned for ``path``."""
    if array.shape[0] != len(token_ids):
        raise InvalidResidualError(
            f"{path}: {array.shape[0]} row(s) but {word!r} is {len(token_ids)} token(s) in the base tokenizer"
        )
    meta = {"imported_from": "cones-v2 .pt", **dict(metadata or {})}
    try:
        return make_residual(array, word, token_ids, base_fingerprint, meta)
    except InvalidResidualError as exc:
        raise InvalidResidualError(f"{path}: {str(exc).split(': ', 1)[-1]}") from None


def import_legacy_pt(
    path: str | os.PathLike[str],
    word: str,
    token_ids: list[int] | tuple[int, ...],
    base_fingerprint: str,
    hidden_size: int,
    metadata: Mapping[str, Any] | None = None,
) -> ResidualFile:
    """Import a residual saved by the reference implementation; see :func:`read_legacy_pt`."""
    return legacy_residual(read_legacy_pt(path, hidden_size), path, word, token_ids, base_fingerprint, metadata)


def ensure_compatible(residual: ResidualFile, fingerprint: str, hidden_size: int | None = None, source: str = "residual", model: str | None = None) -> None:
    """Refuse a residual learned on another base text encoder than ``fingerprint``."""
    if hidden_size is not None and residual.hidden_size != hidden_size:
        raise InvalidResidualError(
            f"{source}: hidden size {residual.hidden_size} does not fit the base model's text encoder ({hidden_size})"
        )
    if residual.base_fingerprint != fingerprint:
        from .errors import BaseModelMismatchError

        where = f" ({model})" if model else ""
        raise BaseModelMismatchError(
            f"{source}: learned on base model {residual.base_fingerprint[:12]}, not on {fingerprint[:12]}{where}"
        )
