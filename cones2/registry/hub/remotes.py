"""Remotes: named Hub namespaces (a user or an organisation) a catalogue syncs with.

Stored in ``$CONES2_HOME/remotes.json``::

    {"default": "team",
     "remotes": {"team": {"namespace": "acme-vision", "endpoint": null}}}

``endpoint`` null means ``HF_ENDPOINT`` (else https://huggingface.co) at use time.
Tokens are never stored: huggingface_hub reads ``HF_TOKEN`` or its own login.
The default remote is the one marked in this file, else ``default_remote`` from
``config.toml``, else the only remote when exactly one is configured.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ... import config
from ...errors import NotFoundError, RegistryError, UsageError
from ...fsutil import atomic_write_bytes

REMOTES_FILE = "remotes.json"
REMOTE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
# Hub user and organisation names: letters, digits, '-', '_', '.', not starting with those.
NAMESPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
DEFAULT_ENDPOINT = "https://huggingface.co"


@dataclass(frozen=True)
class Remote:
    name: str
    namespace: str
    endpoint: str | None = None  # None: HF_ENDPOINT, else the public Hub
    default: bool = False

    @property
    def url(self) -> str:
        """The endpoint this remote talks to now."""
        return resolve_endpoint(self.endpoint)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "url": self.url}


def validate_namespace(namespace: str | None, where: str | None = None) -> str:
    """Return ``namespace`` if it can be a Hub user or organisation name, else raise UsageError."""
    if not NAMESPACE_RE.fullmatch(namespace or "") or ".." in namespace:
        context = f" in {where!r}" if where is not None else ": a Hub user or organisation name"
        raise UsageError(f"invalid Hub namespace {namespace!r}{context}")
    return namespace


def resolve_endpoint(endpoint: str | None) -> str:
    return (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def _path(home: Path | None = None) -> Path:
    return (home or config.home()) / REMOTES_FILE


def _read(home: Path | None = None) -> dict[str, Any]:
    path = _path(home)
    if not path.is_file():
        return {"default": None, "remotes": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("remotes", {}), dict):
            raise ValueError("not an object with 'remotes'")
        for name, entry in data.get("remotes", {}).items():
            if not (isinstance(entry, dict) and isinstance(entry.get("namespace"), str)
                    and isinstance(entry.get("endpoint"), (str, type(None)))):
                raise ValueError(f"remote {name!r} needs a 'namespace' string and an optional 'endpoint' string")
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: unreadable remotes file ({exc})") from None
    data.setdefault("remotes", {})
    data.setdefault("default", None)
    return data


def _write(data: dict[str, Any], home: Path | None = None) -> None:
    path = _path(home)
    try:
        atomic_write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())
    except OSError as exc:
        raise RegistryError(f"cannot write {path}: {exc.strerror or exc}") from None


def _default_name(data: dict[str, Any]) -> str | None:
    names = data["remotes"]
    if data.get("default") in names:
        return str(data["default"])
    configured = config.load_config().default_remote
    if configured in names:
        return configured
    return next(iter(names)) if len(names) == 1 else None


def list_remotes(home: Path | None = None) -> list[Remote]:
    data = _read(home)
    default = _default_name(data)
    return [
        Remote(name, str(v["namespace"]), v.get("endpoint") or None, name == default)
        for name, v in sorted(data["remotes"].items())
    ]


def add_remote(
    name: str,
    namespace: str,
    endpoint: str | None = None,
    *,
    default: bool = False,
    replace: bool = False,
    home: Path | None = None,
) -> Remote:
    """Add (or with ``replace`` update) a remote; the first one added becomes the default."""
    if not REMOTE_NAME_RE.fullmatch(name or ""):
        raise UsageError(f"invalid remote name {name!r}: use lowercase [a-z0-9][a-z0-9._-]{{0,63}}")
    validate_namespace(namespace)
    if endpoint is not None:
        endpoint = endpoint.strip().rstrip("/")
        if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", endpoint):
            raise UsageError(f"invalid endpoint {endpoint!r}: expected an http(s) URL")
    data = _read(home)
    if name in data["remotes"] and not replace:
        raise UsageError(f"remote {name} already exists (remove it first, or use --replace)")
    previous = _default_name(data)  # before this one is added: the only remote counts as default
    data["remotes"][name] = {"namespace": namespace, "endpoint": endpoint}
    if default or previous is None:
        data["default"] = name
    elif data.get("default") not in data["remotes"] and previous != config.load_config().default_remote:
        data["default"] = previous  # keep the implicit default explicit now that there are two
    _write(data, home)
    return get_remote(name, home=home)


def remove_remote(name: str, home: Path | None = None) -> Remote:
    data = _read(home)
    remote = get_remote(name, home=home)
    del data["remotes"][name]
    if data.get("default") == name:
        data["default"] = None
    _write(data, home)
    return remote


def get_remote(name: str | None = None, home: Path | None = None) -> Remote:
    """The remote called ``name``, or the default remote when ``name`` is None."""
    remotes = {r.name: r for r in list_remotes(home)}
    if name is None:
        default = next((r for r in remotes.values() if r.default), None)
        if default is None:
            if not remotes:
                raise NotFoundError("no remote configured: add one with `cones2 remote add NAME NAMESPACE`")
            raise NotFoundError(
                f"no default remote among {', '.join(sorted(remotes))}: name one with --remote "
                "or mark one with `cones2 remote add ... --default`"
            )
        return default
    if name not in remotes:
        known = f" (configured: {', '.join(sorted(remotes))})" if remotes else " (none configured)"
        raise NotFoundError(f"unknown remote {name!r}{known}")
    return remotes[name]


def find_by_namespace(namespace: str, home: Path | None = None) -> Remote | None:
    """A configured remote for ``namespace``: the default one first, then by name order."""
    matches = [r for r in list_remotes(home) if r.namespace == namespace]
    matches.sort(key=lambda r: (not r.default, r.name))
    return matches[0] if matches else None
