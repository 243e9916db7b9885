"""Turn what the user typed (``dog-max``, ``team/dog-max@3``, ``dog-max:stable``) into a Hub target.

* a bare ``NAME`` lives in the default remote's namespace (or ``--remote``'s);
* ``PREFIX/NAME``: PREFIX is a Hub namespace; a remote configured for that namespace
  gives the endpoint, else a remote *named* PREFIX is used (its namespace), else the
  namespace is read on the default remote's endpoint (else ``HF_ENDPOINT``);
* ``@N`` pins version N (Hub tag ``vN``), ``:TAG`` a Hub tag; nothing: the Hub tag
  ``latest`` when the repo has one, else the highest ``vN``.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import NotFoundError, UsageError
from ..refs import parse_ref
from .manifest import version_tag
from .remotes import (
    Remote,
    find_by_namespace,
    get_remote,
    list_remotes,
    resolve_endpoint,
    validate_namespace,
)


@dataclass(frozen=True)
class Target:
    namespace: str
    name: str  # the subject's name inside the namespace (= the Hub repo name)
    version: int | None
    tag: str | None
    remote: Remote | None
    endpoint: str

    @property
    def repo_id(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def label(self) -> str | None:
        """The Hub revision a pinned ref names (``v3`` or the tag), None for a bare ref."""
        if self.version is not None:
            return version_tag(self.version)
        return self.tag


def split_namespace(text: str) -> tuple[str | None, str]:
    """``ns/rest`` -> ("ns", "rest"); ``rest`` -> (None, "rest"). Hub namespaces keep their case."""
    head = text.split("@", 1)[0].split(":", 1)[0]
    if "/" not in head:
        return None, text
    namespace, _, rest = text.partition("/")
    return validate_namespace(namespace, text), rest


def remote_for(namespace: str | None, remote: str | None) -> tuple[Remote | None, str, str]:
    """``(remote, namespace, endpoint)`` for an optional namespace and an optional remote name."""
    if namespace is not None:
        validate_namespace(namespace)
    if remote is not None:
        r = get_remote(remote)
        return r, namespace or r.namespace, r.url
    if namespace is None:
        r = get_remote(None)
        return r, r.namespace, r.url
    r = find_by_namespace(namespace)
    if r is not None:
        return r, namespace, r.url
    named = {x.name: x for x in list_remotes()}
    if namespace in named:
        return named[namespace], named[namespace].namespace, named[namespace].url
    try:
        default = get_remote(None)
        return None, namespace, default.url
    except NotFoundError:
        return None, namespace, resolve_endpoint(None)


def parse_target(text: str, remote: str | None = None) -> Target:
    namespace, rest = split_namespace(text.strip())
    ref = parse_ref(rest)
    if "/" in ref.name:
        raise UsageError(f"invalid remote reference {text!r}: use NAME, NAMESPACE/NAME, then @N or :TAG")
    if ref.digest is not None:
        raise UsageError(f"{text}: pull by version (@3) or tag (:stable); digests are checked, not looked up, on the Hub")
    r, namespace, endpoint = remote_for(namespace, remote)
    return Target(namespace, ref.name, ref.version, ref.tag, r, endpoint)
