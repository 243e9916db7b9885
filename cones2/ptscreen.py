"""Screen a legacy ``.pt`` file without torch and without unpickling it.

``torch.save`` writes a zip archive whose ``*/data.pkl`` is a pickle naming a few rebuild
functions and storage classes. :func:`screen_legacy_pt` reads that pickle's opcodes with
:func:`pickletools.genops`, which parses and never executes, and refuses a file that cannot
hold a bare dense tensor: not a pickle at all, a pickle naming anything outside torch's
tensor-rebuild set (a payload, a sparse tensor) or a top-level container. The refusal comes
before torch is imported (seconds on a busy machine); what passes is still loaded with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import pickletools
import zipfile
from pathlib import Path

from .errors import InvalidResidualError

# Globals a saved dense tensor or Parameter names (torch >= 1.6, pickle protocol 2).
_TENSOR_GLOBALS = {
    "torch._utils _rebuild_tensor_v2",
    "torch._utils _rebuild_parameter",
    "torch._utils _rebuild_parameter_with_state",
    "collections OrderedDict",
}
_SPARSE_GLOBALS = {"torch._utils _rebuild_sparse_tensor", "torch._utils _rebuild_sparse_csr_tensor"}
# What a top-level container starts with, for the error message.
_CONTAINERS = {"EMPTY_DICT": "dict", "EMPTY_LIST": "list", "EMPTY_TUPLE": "tuple", "MARK": "tuple", "EMPTY_SET": "set"}
_MAX_PICKLE = 1 << 20  # a tensor's pickle is a few hundred bytes; its values live beside it


def _pickle_of(path: Path) -> bytes | None:
    """The ``data.pkl`` of a torch zip archive; None for a file that is no zip archive."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = [info for info in archive.infolist() if info.filename.endswith("/data.pkl") or info.filename == "data.pkl"]
            if len(names) != 1 or names[0].file_size > _MAX_PICKLE:
                raise InvalidResidualError(f"{path}: refused legacy .pt file (not a torch archive with one data.pkl)")
            return archive.read(names[0])
    except (zipfile.BadZipFile, OSError, RuntimeError) as exc:
        raise InvalidResidualError(f"{path}: refused legacy .pt file ({type(exc).__name__}: {str(exc)[:120]})") from None


def _names_and_first(path: Path, data: bytes) -> tuple[list[str], str | None]:
    """The globals the pickle names (``module name``) and its first real opcode, read without running it."""
    names: list[str] = []
    strings: list[str] = []
    first = None
    try:
        for opcode, arg, _ in pickletools.genops(io.BytesIO(data)):
            if opcode.name in ("PROTO", "FRAME", "MEMOIZE", "BINPUT", "LONG_BINPUT", "PUT"):
                continue
            first = first or opcode.name
            if opcode.name == "GLOBAL":
                names.append(str(arg))
            elif opcode.name == "STACK_GLOBAL":  # protocol 4+: module and name are the two strings just pushed
                names.append(" ".join(strings[-2:]) if len(strings) >= 2 else "<STACK_GLOBAL>")
            elif opcode.name in ("INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"):
                names.append(f"<{opcode.name}>")
            strings = [*strings[-1:], arg] if isinstance(arg, str) and "UNICODE" in opcode.name else []
    except Exception as exc:  # genops raises ValueError and friends on bytes that are no pickle
        raise InvalidResidualError(f"{path}: refused legacy .pt file (not a pickle: {str(exc)[:120]})") from None
    return names, first


def screen_legacy_pt(path: str | Path) -> None:
    """Refuse a ``.pt`` that cannot be a bare dense tensor; return quietly otherwise."""
    path = Path(path)
    data = _pickle_of(path)
    archive = data is not None
    if data is None:  # the pre-1.6 format is a run of pickles: screen the first (a magic number)
        with open(path, "rb") as fh:
            data = fh.read(_MAX_PICKLE)
    names, first = _names_and_first(path, data)
    if any(name in _SPARSE_GLOBALS for name in names):
        raise InvalidResidualError(f"{path}: legacy residual must be a dense tensor, not a sparse one")
    foreign = [n for n in names if n not in _TENSOR_GLOBALS and not (n.startswith("torch ") and n.endswith("Storage"))]
    if foreign:
        raise InvalidResidualError(f"{path}: refused legacy .pt file (it names {foreign[0]!r}, which no saved tensor needs)")
    if archive and (first in _CONTAINERS or not names):
        found = _CONTAINERS.get(first or "", "a plain value")
        raise InvalidResidualError(f"{path}: legacy .pt must hold a bare tensor, found {found}")
