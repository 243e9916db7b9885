"""What one subject version looks like on the Hub: ``cones2.json`` and ``README.md``.

Every version is one commit of a model repo ``NAMESPACE/NAME`` holding three files:

* ``residual.safetensors``: the cones2 residual file, byte for byte as in the store;
* ``cones2.json``: the manifest below (what a pull checks before anything is stored);
* ``README.md``: a generated model card (``library_name: cones2``, tags, base model,
  a usage snippet), so the Hub lists, filters and renders the subject.

The commit is then tagged ``v{version}``; that tag is the version's permanent address.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

from ... import __version__, jsonlimits
from ...errors import RemoteError

MANIFEST_FILE = "cones2.json"
MAX_MANIFEST_BYTES = 1 << 20
RESIDUAL_FILE = "residual.safetensors"
CARD_FILE = "README.md"
MANIFEST_FORMAT = "cones2.subject"
MANIFEST_VERSION = 1
LIBRARY_NAME = "cones2"
SUBJECT_TAG = "cones2-subject"
BASE_TAG_PREFIX = "cones2-base:"  # + first 12 hex of the base fingerprint: filterable on the Hub
VERSION_TAG_RE = re.compile(r"v([1-9][0-9]{0,8})")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def version_tag(version: int) -> str:
    return f"v{version}"


def tag_version(tag: str) -> int | None:
    """The version number a Hub tag ``vN`` names, None for any other tag."""
    m = VERSION_TAG_RE.fullmatch(tag)
    return int(m.group(1)) if m else None


def public_base_model(base_model: str | None) -> str | None:
    """What may be published about the base model: a Hub id as is, a local folder by its name only."""
    if not base_model:
        return None
    if _HUB_ID.fullmatch(base_model) and not PurePath(base_model).is_absolute():
        return base_model
    return PurePath(base_model).name or None


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    sha256: str
    size: int
    dtype: str
    shape: tuple[int, ...]
    word: str
    token_ids: tuple[int, ...]
    base_fingerprint: str
    base_model: str | None = None
    description: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None
    cones2_version: str = __version__

    @classmethod
    def from_record(cls, record: Any, description: str | None = None) -> Manifest:
        """The manifest of a catalogue :class:`~cones2.registry.VersionRecord`."""
        return cls(
            name=record.name.rsplit("/", 1)[-1],
            version=int(record.version),
            sha256=record.sha256,
            size=int(record.size),
            dtype=record.dtype,
            shape=tuple(record.shape),
            word=record.word,
            token_ids=tuple(record.token_ids),
            base_fingerprint=record.base_fingerprint,
            base_model=public_base_model(record.base_model),
            description=description,
            metadata=dict(record.metadata),
            created_at=record.created_at or None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "name": self.name,
            "version": self.version,
            "file": RESIDUAL_FILE,
            "sha256": self.sha256,
            "size": self.size,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "word": self.word,
            "token_ids": list(self.token_ids),
            "base_fingerprint": self.base_fingerprint,
            "base_model": self.base_model,
            "description": self.description,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "cones2_version": self.cones2_version,
        }

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def parse_manifest(data: bytes, source: str) -> Manifest:
    """Decode and validate ``cones2.json``; every problem is one RemoteError naming ``source``."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise RemoteError(f"{source}: {MANIFEST_FILE} is {len(data)} bytes, more than a manifest can be; refused")
    try:
        raw = jsonlimits.loads(data)
    except jsonlimits.JSONLimitError as exc:
        raise RemoteError(f"{source}: {MANIFEST_FILE} refused ({exc})") from None
    except (UnicodeDecodeError, ValueError):
        raise RemoteError(f"{source}: {MANIFEST_FILE} is not valid JSON") from None
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise RemoteError(f"{source}: not a cones2 subject manifest")
    if raw.get("format_version") != MANIFEST_VERSION:
        raise RemoteError(
            f"{source}: manifest format version {raw.get('format_version')!r} is not {MANIFEST_VERSION}; "
            "a newer cones2 may be needed"
        )

    def need(key: str, kind: type | tuple[type, ...]) -> Any:
        value = raw.get(key)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise RemoteError(f"{source}: manifest field {key!r} is missing or malformed")
        return value

    version, size = need("version", int), need("size", int)
    sha, fingerprint = need("sha256", str), need("base_fingerprint", str)
    shape, token_ids = need("shape", list), need("token_ids", list)
    from ...residual_file import MAX_RESIDUAL_BYTES

    if size > MAX_RESIDUAL_BYTES:
        raise RemoteError(f"{source}: manifest declares a residual of {size} bytes, more than {MAX_RESIDUAL_BYTES}; refused")
    if version < 1 or size < 1 or not _HEX64.fullmatch(sha) or not _HEX64.fullmatch(fingerprint):
        raise RemoteError(f"{source}: manifest has an invalid version, size, sha256 or base fingerprint")
    if raw.get("file", RESIDUAL_FILE) != RESIDUAL_FILE:
        raise RemoteError(f"{source}: manifest names residual file {raw.get('file')!r}, expected {RESIDUAL_FILE}")
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in [*shape, *token_ids]):
        raise RemoteError(f"{source}: manifest shape and token_ids must be integers")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise RemoteError(f"{source}: manifest metadata must be an object")
    description = raw.get("description")
    base_model = raw.get("base_model")
    return Manifest(
        name=need("name", str),
        version=version,
        sha256=sha,
        size=size,
        dtype=need("dtype", str),
        shape=tuple(shape),
        word=need("word", str),
        token_ids=tuple(token_ids),
        base_fingerprint=fingerprint,
        base_model=base_model if isinstance(base_model, str) else None,
        description=description if isinstance(description, str) else None,
        metadata=metadata,
        created_at=raw.get("created_at") if isinstance(raw.get("created_at"), str) else None,
        cones2_version=str(raw.get("cones2_version") or "unknown"),
    )


def card_tags(manifest: Manifest) -> list[str]:
    tags = [LIBRARY_NAME, SUBJECT_TAG, BASE_TAG_PREFIX + manifest.base_fingerprint[:12]]
    word = re.sub(r"[^a-z0-9._-]+", "-", manifest.word.lower()).strip("-")
    if word and word not in tags:
        tags.append(word)
    return tags


def _yaml_str(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def model_card(manifest: Manifest, repo_id: str) -> bytes:
    """The generated ``README.md`` of a subject version."""
    lines = ["---", f"library_name: {LIBRARY_NAME}", "tags:"]
    lines += [f"- {_yaml_str(t)}" for t in card_tags(manifest)]
    if manifest.base_model and _HUB_ID.fullmatch(manifest.base_model):
        lines.append(f"base_model: {_yaml_str(manifest.base_model)}")
    lines.append("---")
    title = f"# {repo_id} (version {manifest.version})"
    about = manifest.description or f"A Cones 2 subject residual for the word “{manifest.word}”."
    shape = "x".join(map(str, manifest.shape))
    facts = [
        f"- version: {manifest.version} (Hub tag `{version_tag(manifest.version)}`)",
        f"- word: `{manifest.word}` (token ids {list(manifest.token_ids)})",
        f"- residual: `{RESIDUAL_FILE}`, {manifest.dtype} {shape}, sha256 `{manifest.sha256}`",
        f"- base text encoder fingerprint: `{manifest.base_fingerprint}`"
        + (f" ({manifest.base_model})" if manifest.base_model else ""),
    ]
    usage = [
        "## Usage",
        "",
        "```bash",
        f"cones2 pull {repo_id}@{manifest.version}",
        f"cones2 show {manifest.name}@{manifest.version}",
        "```",
        "",
        "```python",
        "from cones2.registry import open_catalogue",
        "from cones2.registry.hub import pull",
        "",
        f'pull("{repo_id}@{manifest.version}")',
        "with open_catalogue() as cat:",
        f'    record, residual = cat.load("{manifest.name}@{manifest.version}")',
        "```",
        "",
        "cones2 checks the sha256 above and the base-model fingerprint before it stores anything.",
    ]
    body = [title, "", about, "", *facts, "", *usage]
    return ("\n".join(lines + [""] + body) + "\n").encode("utf-8")
