"""Base models: where they come from, and the fingerprint residuals are keyed to.

A residual is only meaningful on the text encoder (and tokenizer) it was learned on.
The fingerprint is a sha256 over exactly those: the encoder's weights in a canonical
form (sorted parameter names without the legacy ``text_model.`` prefix, dtype, shape and
raw bytes; independent of sharding and of safetensors vs ``.bin``) plus the tokenizer's
vocabulary and merges. Safetensors files are hashed straight from their bytes, so
fingerprinting needs neither torch nor transformers unless the encoder is a legacy
``.bin``. Results are cached per folder, keyed by file paths, sizes and mtimes.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import BaseModelError

FINGERPRINT_VERSION = "cones2-fingerprint-1"
LEGACY_PREFIX = "text_model."
# Buffers that are not learned and differ between checkpoint vintages.
IGNORED_SUFFIXES = ("position_ids",)
_TEXT_ENCODER_PATTERNS = ["text_encoder/*", "tokenizer/*", "model_index.json"]


@dataclass(frozen=True)
class BaseModelInfo:
    """What cones2 needs to know about a base model to check residuals against it."""

    source: str  # what the user named: a model id or a folder
    path: str  # the local folder it resolved to
    fingerprint: str
    hidden_size: int
    vocab_size: int
    max_length: int
    is_demo: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


# --------------------------------------------------------------------------- resolution


def default_base_model() -> str | None:
    """The base model the user configured (env var, then config file), if any."""
    from .config import load_config

    return load_config().base_model


def resolve_model_path(model: str | os.PathLike[str] | None, *, full: bool = False) -> tuple[str, Path]:
    """Turn what the user named into ``(source, local folder)``.

    ``None`` means: the configured base model, else the demo model (built on first use).
    A folder is used as is; anything else is taken as a Hub model id and fetched through
    the Hugging Face cache (only the text encoder and tokenizer unless ``full``).
    """
    if model is None:
        model = default_base_model()
    if model is None:
        from .config import demo_model_path

        path = demo_model_path()
        return "demo", path
    source = str(model)
    if source == "demo":
        from .config import demo_model_path

        return "demo", demo_model_path()
    local = Path(source).expanduser()
    if local.is_dir():
        return source, local.resolve()
    if local.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise BaseModelError(f"base model {source!r}: not a model folder")
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(source, allow_patterns=None if full else _TEXT_ENCODER_PATTERNS)
    except Exception as exc:  # huggingface_hub raises many types; one line is enough
        raise BaseModelError(f"base model {source!r}: cannot fetch it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return source, Path(folder)


# --------------------------------------------------------------------------- hashing

_SAFETENSORS_DTYPES = {"F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2"}


def canonical_name(name: str) -> str:
    return name[len(LEGACY_PREFIX) :] if name.startswith(LEGACY_PREFIX) else name


def _safetensors_entries(path: Path) -> Iterator[tuple[str, str, tuple[int, ...], bytes]]:
    with open(path, "rb") as fh:
        raw = fh.read(8)
        if len(raw) != 8:
            raise BaseModelError(f"{path}: truncated safetensors file")
        (header_len,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(fh.read(header_len))
        except ValueError:
            raise BaseModelError(f"{path}: corrupt safetensors header") from None
        data = fh.read()
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        if end > len(data):
            raise BaseModelError(f"{path}: truncated safetensors file (tensor {name})")
        yield name, entry["dtype"], tuple(entry["shape"]), data[start:end]


def _torch_bin_entries(path: Path) -> Iterator[tuple[str, str, tuple[int, ...], bytes]]:
    import torch

    names = {
        torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
        torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
        torch.uint8: "U8", torch.bool: "BOOL",
    }
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise BaseModelError(f"{path}: cannot read weights safely ({type(exc).__name__})") from None
    for name, tensor in state.items():
        t = tensor.detach().contiguous().cpu()
        raw = t.view(torch.int16).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        yield name, names[t.dtype], tuple(t.shape), raw


def _weight_files(encoder_dir: Path) -> list[Path]:
    files = sorted(encoder_dir.glob("*.safetensors"))
    if not files:
        files = sorted(encoder_dir.glob("*.bin"))
    if not files:
        raise BaseModelError(f"{encoder_dir}: no text encoder weights (*.safetensors or *.bin)")
    return files


def _read_json(path: Path) -> Any:
    """A model folder's JSON file, or one BaseModelError line when it is unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"{path}: missing or unreadable ({type(exc).__name__})") from None


def _tokenizer_canonical(tokenizer_dir: Path) -> tuple[dict[str, int], list[str]]:
    vocab_file, merges_file = tokenizer_dir / "vocab.json", tokenizer_dir / "merges.txt"
    if vocab_file.is_file() and merges_file.is_file():
        vocab = _read_json(vocab_file)
        merges = [
            " ".join(line.split())
            for line in merges_file.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.startswith("#version")
        ]
        if not isinstance(vocab, dict):
            raise BaseModelError(f"{vocab_file}: not a vocabulary (JSON object)")
        return vocab, merges
    fast = tokenizer_dir / "tokenizer.json"
    if fast.is_file():
        model = _read_json(fast)
        model = model.get("model") if isinstance(model, dict) else None
        if not isinstance(model, dict) or not isinstance(model.get("vocab"), dict):
            raise BaseModelError(f"{fast}: no BPE model with a vocabulary")
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        return model["vocab"], merges
    raise BaseModelError(f"{tokenizer_dir}: no tokenizer files (vocab.json + merges.txt or tokenizer.json)")


def _relevant_files(root: Path) -> list[Path]:
    encoder_dir, tokenizer_dir = root / "text_encoder", root / "tokenizer"
    if not encoder_dir.is_dir() or not tokenizer_dir.is_dir():
        raise BaseModelError(f"{root}: not a Stable Diffusion folder (needs text_encoder/ and tokenizer/)")
    files = _weight_files(encoder_dir) + [encoder_dir / "config.json"]
    files += sorted(p for p in tokenizer_dir.iterdir() if p.name in {"vocab.json", "merges.txt", "tokenizer.json"})
    return files


def compute_fingerprint(root: str | os.PathLike[str]) -> str:
    """sha256 of the text encoder weights and the tokenizer vocabulary of a model folder."""
    root = Path(root)
    _relevant_files(root)  # validates the layout with a clear error
    entries: dict[str, tuple[str, tuple[int, ...], bytes]] = {}
    for path in _weight_files(root / "text_encoder"):
        reader = _safetensors_entries if path.suffix == ".safetensors" else _torch_bin_entries
        for name, dtype, shape, raw in reader(path):
            if name.endswith(IGNORED_SUFFIXES):
                continue
            entries[canonical_name(name)] = (dtype, shape, raw)
    digest = hashlib.sha256(FINGERPRINT_VERSION.encode())
    for name in sorted(entries):
        dtype, shape, raw = entries[name]
        digest.update(f"\n{name}|{dtype}|{','.join(map(str, shape))}|{len(raw)}\n".encode())
        digest.update(raw)
    vocab, merges = _tokenizer_canonical(root / "tokenizer")
    digest.update(b"\nvocab\n" + json.dumps(sorted(vocab.items(), key=lambda kv: kv[1]), ensure_ascii=False).encode())
    digest.update(b"\nmerges\n" + "\n".join(merges).encode())
    return digest.hexdigest()


# --------------------------------------------------------------------------- cache


def _cache_key(root: Path) -> str:
    parts = []
    for p in _relevant_files(root):
        st = p.stat()
        parts.append(f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def fingerprint(root: str | os.PathLike[str], *, use_cache: bool = True) -> str:
    """The fingerprint of a model folder, from the cache when its files did not change.

    The cache (``$CONES2_HOME/cache/fingerprints.json``) keeps one entry per folder and
    forgets folders that no longer exist, so temporary model folders do not pile up.
    """
    from .config import cache_dir

    root = Path(root)
    key = _cache_key(root)
    folder = str(root.resolve())
    cache_file = cache_dir() / "fingerprints.json"
    cache: dict[str, dict[str, str]] = {}
    if use_cache and cache_file.is_file():
        try:
            loaded = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            loaded = {}
        if isinstance(loaded, dict):  # entries of an older layout (key -> value) are dropped
            cache = {f: e for f, e in loaded.items() if isinstance(e, dict) and {"key", "fingerprint"} <= set(e)}
        entry = cache.get(folder)
        if entry is not None and entry["key"] == key:
            return entry["fingerprint"]
    value = compute_fingerprint(root)
    if use_cache:
        cache = {f: e for f, e in cache.items() if Path(f).is_dir()}
        cache[folder] = {"key": key, "fingerprint": value}
        try:
            from .fsutil import atomic_write_bytes

            atomic_write_bytes(cache_file, json.dumps(cache, indent=0, sort_keys=True).encode())
        except OSError:
            pass  # a read-only cache only costs speed
    return value


def model_info(model: str | os.PathLike[str] | None = None) -> BaseModelInfo:
    """Fingerprint, hidden size and vocabulary size of a base model (see resolve_model_path)."""
    from .demo_model import is_demo_model

    source, path = resolve_model_path(model)
    _relevant_files(path)  # a clear error for folders that are not SD models
    config = _read_json(path / "text_encoder" / "config.json")
    hidden_size = config.get("hidden_size") if isinstance(config, dict) else None
    if not isinstance(hidden_size, int) or isinstance(hidden_size, bool) or hidden_size < 1:
        raise BaseModelError(f"{path}: text_encoder/config.json has no valid hidden_size")
    vocab, _ = _tokenizer_canonical(path / "tokenizer")
    max_length = 77
    tok_config = path / "tokenizer" / "tokenizer_config.json"
    if tok_config.is_file():
        tok_settings = _read_json(tok_config)
        value = tok_settings.get("model_max_length", 77) if isinstance(tok_settings, dict) else 77
        max_length = int(value) if isinstance(value, int) and value < 100_000 else 77
    added = 0
    if (path / "tokenizer" / "tokenizer.json").is_file():
        fast = _read_json(path / "tokenizer" / "tokenizer.json")
        added_tokens = fast.get("added_tokens", []) if isinstance(fast, dict) else []
        added = sum(1 for t in added_tokens if t["content"] not in vocab)
    return BaseModelInfo(
        source=source,
        path=str(path),
        fingerprint=fingerprint(path),
        hidden_size=hidden_size,
        vocab_size=len(vocab) + added,
        max_length=max_length,
        is_demo=is_demo_model(path),
    )


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The tokenizer of a base model folder: CLIP's, or the world model's word-level one (cones2.world)."""
    path = Path(path)
    index = _read_json(path / "model_index.json") if (path / "model_index.json").is_file() else {}
    world = isinstance(index, dict) and str(index.get("text_encoder", [""])[0]).startswith("cones2.world")
    tok_class = index.get("tokenizer", [None, ""])[1] if isinstance(index, dict) else ""
    if world or tok_class == "PreTrainedTokenizerFast":
        from transformers import PreTrainedTokenizerFast

        return PreTrainedTokenizerFast.from_pretrained(str(path / "tokenizer"))
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path / "tokenizer"))


def load_text_encoder(model: str | os.PathLike[str] | None = None):  # noqa: ANN201 - heavy types
    """Load ``(tokenizer, text_encoder)`` of a base model.

    A CLIP tokenizer and text model unless ``model_index.json`` names other classes (the
    world model's word-level tokenizer and phrase-local encoder, cones2.world).
    """
    from transformers import CLIPTextModel, CLIPTokenizer

    from ._quiet import no_progress_bars

    _, path = resolve_model_path(model)
    index = _read_json(path / "model_index.json") if (path / "model_index.json").is_file() else {}
    if isinstance(index, dict) and str(index.get("text_encoder", [""])[0]).startswith("cones2.world"):
        from transformers import PreTrainedTokenizerFast

        from .world.components import PhraseLocalTextEncoder

        tokenizer = PreTrainedTokenizerFast.from_pretrained(path / "tokenizer")
        with no_progress_bars():
            encoder = PhraseLocalTextEncoder.from_pretrained(path / "text_encoder")
        encoder.eval()
        return tokenizer, encoder
    tok_class = index.get("tokenizer", [None, ""])[1] if isinstance(index, dict) else ""
    if tok_class == "PreTrainedTokenizerFast":
        from transformers import PreTrainedTokenizerFast as tok_type
    else:
        tok_type = CLIPTokenizer
    tokenizer = tok_type.from_pretrained(path / "tokenizer")
    with no_progress_bars():
        encoder = CLIPTextModel.from_pretrained(path / "text_encoder")
    encoder.eval()
    return tokenizer, encoder
