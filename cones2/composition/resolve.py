"""Resolve a composition: every subject to an exact version and sha256, before sampling.

:func:`resolve` opens the catalogue, the base model's fingerprint and its tokenizer, and
returns a :class:`Resolution` -- the entries a lockfile holds and a PNG records. The
pipeline then only takes resolved residuals (:func:`load_residuals`), so a stale lock or
a tampered blob is refused in well under a second, long before any UNet call.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import (
    BaseModelMismatchError,
    Cones2Error,
    IntegrityError,
    LayoutError,
    NotFoundError,
    TokenLocationError,
)
from ..sampler.presets import SamplerSettings
from .model import Composition, SubjectSpec, in_range, parse_range


@dataclass(frozen=True)
class ResolvedSubject:
    """One subject pinned: registry ``name``/``version`` (or a ``file``), content hash, positions."""

    key: str
    word: str
    sha256: str
    base_fingerprint: str
    positions: tuple[int, ...]
    name: str | None = None
    version: int | None = None
    file: str | None = None
    source: str = "local"  # local | remote | file
    remote: str | None = None
    repo: str | None = None
    commit: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}" if self.name else str(self.file)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["positions"] = list(self.positions)
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResolvedSubject:
        data = dict(data)
        data["positions"] = tuple(data.get("positions", ()))
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Resolution:
    """A composition's resolved state: base model, subjects, settings, software versions."""

    content_hash: str
    base_model: dict[str, Any]
    subjects: tuple[ResolvedSubject, ...]
    sampler: SamplerSettings
    versions: dict[str, str] = field(default_factory=dict)

    def subject(self, key: str) -> ResolvedSubject | None:
        return next((s for s in self.subjects if s.key == key), None)

    def to_dict(self) -> dict[str, Any]:
        sampler = {k: v for k, v in self.sampler.to_dict().items() if v is not None}
        return {
            "content_hash": self.content_hash,
            "base_model": {k: v for k, v in self.base_model.items() if v is not None},
            "subjects": {s.key: {k: v for k, v in s.to_dict().items() if k != "key"}
                         for s in sorted(self.subjects, key=lambda s: s.key)},
            "sampler": sampler,
            "versions": dict(sorted(self.versions.items())),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Resolution:
        subjects = data.get("subjects", {}) or {}
        sampler = dict(data.get("sampler", {}))
        sampler.setdefault("guidance_steps", None)
        return cls(
            content_hash=str(data.get("content_hash", "")),
            base_model=dict(data.get("base_model", {})),
            subjects=tuple(ResolvedSubject.from_dict({**v, "key": k}) for k, v in subjects.items()),
            sampler=SamplerSettings(**sampler),
            versions=dict(data.get("versions", {})),
        )


def content_hash(composition: Composition) -> str:
    """sha256 over the composition's identity fields (all but seeds and name)."""
    text = json.dumps(composition.identity(), sort_keys=True, separators=(",", ":"), default=str)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def software_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    from .. import __version__

    out = {"cones2": __version__}
    for package in ("torch", "diffusers", "transformers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "absent"
    return out


def base_model_entry(composition: Composition) -> tuple[dict[str, Any], Any]:
    """``({id, revision, fingerprint}, BaseModelInfo)`` of the composition's base model."""
    from ..base_model import model_info

    info = model_info(composition.base_model)
    revision = None
    parts = Path(info.path).parts
    if "snapshots" in parts and parts.index("snapshots") + 1 < len(parts):  # a Hub cache folder
        revision = parts[parts.index("snapshots") + 1]
    return {"id": info.source, "revision": revision, "fingerprint": info.fingerprint}, info


def load_tokenizer(path: str | Path) -> Any:
    from ..base_model import load_tokenizer as base_tokenizer

    return base_tokenizer(path)


def check_words(composition: Composition, tokenizer: Any) -> dict[str, tuple[int, ...]]:
    """Token positions of every subject word; refuses subject and layout words not in the prompt."""
    from ..residual import SubjectKey, locate_word

    positions: dict[str, tuple[int, ...]] = {}
    for spec in composition.subjects:
        key = SubjectKey.parse(spec.key)
        try:
            positions[spec.key] = tuple(locate_word(tokenizer, composition.prompt, key.word, key.occurrence))
        except Cones2Error as exc:
            raise type(exc)(f"subjects.{spec.key}: {exc}") from None
    if composition.layout is not None:
        for word in composition.layout.regions_words:
            key = SubjectKey.parse(word)
            try:
                locate_word(tokenizer, composition.prompt, key.word, key.occurrence)
            except Cones2Error as exc:
                raise LayoutError(f"layout word {word!r}: {exc}") from None
    for label, path in (composition.layout.files() if composition.layout else []):
        if not Path(path).is_file():
            raise LayoutError(f"{label}: no such file {path}")
    return positions


def _pick(cat: Any, spec: SubjectSpec, fingerprint: str) -> Any:
    """The catalogue version a subject spec names (highest in its range)."""
    where = f"subjects.{spec.key}"
    try:
        if spec.version is None:
            return cat.resolve(spec.ref, base_fingerprint=fingerprint)
        clauses = parse_range(spec.version, where)
        candidates = [r for r in cat.list_versions(spec.name) if in_range(r.version, clauses)]
    except Cones2Error as exc:
        raise type(exc)(f"{where}: {exc}") from None
    if not candidates:
        raise NotFoundError(f"{where}: no version of {spec.name} matches {spec.version}")
    fitting = [r for r in candidates if r.base_fingerprint == fingerprint]
    if not fitting:
        raise BaseModelMismatchError(
            f"{where}: versions {', '.join(str(r.version) for r in candidates)} of {spec.name} match {spec.version} "
            f"but were learned on another base model than {fingerprint[:12]}"
        )
    return max(fitting, key=lambda r: r.version)


def _entry(spec: SubjectSpec, record: Any, positions: tuple[int, ...]) -> ResolvedSubject:
    prov = record.provenance or {}
    remote = prov.get("kind") == "remote"
    return ResolvedSubject(
        key=spec.key, word=record.word, sha256=record.sha256, base_fingerprint=record.base_fingerprint,
        positions=positions, name=record.name, version=record.version, source="remote" if remote else "local",
        remote=prov.get("remote") if remote else None, repo=prov.get("repo") if remote else None,
        commit=prov.get("commit") if remote else None,
    )


def _file_entry(spec: SubjectSpec, positions: tuple[int, ...], fingerprint: str, tokenizer: Any) -> ResolvedSubject:
    from ..residual_file import ensure_compatible, read_residual

    where = f"subjects.{spec.key}"
    try:
        residual = read_residual(spec.file)
        ensure_compatible(residual, fingerprint, source=where)
        _check_word(spec, residual.word, residual.token_ids, tokenizer)
    except Cones2Error as exc:
        raise type(exc)(f"{where}: {exc}" if not str(exc).startswith(where) else str(exc)) from None
    return ResolvedSubject(key=spec.key, word=residual.word, sha256=residual.sha256(),
                           base_fingerprint=residual.base_fingerprint, positions=positions, file=spec.file, source="file")


def _check_word(spec: SubjectSpec, word: str, token_ids: tuple[int, ...], tokenizer: Any) -> None:
    """Refuse a residual learned for another word (or other tokens) than the subject's."""
    from ..residual import word_token_ids

    expected = word_token_ids(tokenizer, spec.word)
    if list(token_ids) == expected:
        return
    if word.lower() != spec.word.lower():
        why = f"the residual was learned for the word {word!r}, not {spec.word!r}"
    else:
        why = f"the residual's token ids {list(token_ids)} are not {spec.word!r} in this tokenizer ({expected})"
    raise TokenLocationError(f"subjects.{spec.key}: {why}")


def resolve(composition: Composition, *, pins: Mapping[str, ResolvedSubject] | None = None) -> Resolution:
    """Resolve every subject; ``pins`` (from an existing lock) are kept where their spec still admits them."""
    from ..registry import open_catalogue

    if composition.layout is not None:
        composition.layout.check_files()  # cheap, before the base model is built or read
    base, info = base_model_entry(composition)
    tokenizer = load_tokenizer(info.path)
    entries: dict[str, ResolvedSubject] = {}
    registry_specs = [s for s in composition.subjects if s.ref is not None]
    for spec in composition.subjects:
        if spec.file is not None:
            entries[spec.key] = _file_entry(spec, (), info.fingerprint, tokenizer)
    if registry_specs:
        with open_catalogue() as cat:
            for spec in registry_specs:
                pin = (pins or {}).get(spec.key)
                record = None
                if pin is not None and pin.name == spec.name and pin.base_fingerprint == info.fingerprint and _admits(spec, pin):
                    try:
                        record = cat.resolve(f"{pin.name}@{pin.version}")
                    except NotFoundError:
                        record = None
                if record is None:
                    record = _pick(cat, spec, info.fingerprint)
                entries[spec.key] = _entry(spec, record, ())
                _check_word(spec, record.word, record.token_ids, tokenizer)
    positions = check_words(composition, tokenizer)
    subjects = tuple(replace(entries[s.key], positions=positions[s.key]) for s in composition.subjects)
    return Resolution(content_hash(composition), base, subjects, composition.sampler, software_versions())


def _admits(spec: SubjectSpec, pin: ResolvedSubject) -> bool:
    """Whether a pinned version still satisfies the spec (exact selectors are re-checked by resolve)."""
    from ..registry.refs import parse_ref

    if spec.version is not None:
        return pin.version is not None and in_range(pin.version, parse_range(spec.version))
    ref = parse_ref(spec.ref)
    if ref.version is not None:
        return ref.version == pin.version
    return ref.is_bare  # tags and digests are looked up again (a tag may move)


def load_residuals(resolution: Resolution, *, fetch_missing: bool = True) -> dict[str, Any]:
    """``{key: ResidualFile}`` for a resolution, every blob re-verified against its pinned sha256.

    A pinned version missing from the catalogue is pulled from the remote it came from
    (when the lock recorded one). Nothing is loaded by name alone.
    """
    from ..residual_file import parse_residual, read_residual_bytes

    out: dict[str, Any] = {}
    registry = [s for s in resolution.subjects if s.name]
    for s in resolution.subjects:
        if s.file is None:
            continue
        where = f"subjects.{s.key}"
        try:
            data = read_residual_bytes(s.file)
        except Cones2Error as exc:
            raise type(exc)(f"{where}: {exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != s.sha256:
            raise IntegrityError(f"{where}: {s.file} has sha256 {digest[:12]}, the lock pins {s.sha256[:12]}")
        out[s.key] = parse_residual(data, s.file)
    if registry:
        from ..registry import open_catalogue

        with open_catalogue() as cat:
            for s in registry:
                out[s.key] = _load_pinned(cat, s, fetch_missing)
    return out


def _load_pinned(cat: Any, s: ResolvedSubject, fetch_missing: bool) -> Any:
    from ..residual_file import parse_residual

    where = f"subjects.{s.key}"
    ref = f"{s.name}@{s.version}"
    try:
        record = cat.resolve(ref)
    except NotFoundError:
        if not (fetch_missing and s.repo):
            raise NotFoundError(f"{where}: {ref} is not in the catalogue and the lock records no remote to pull it from") from None
        _pull(s)
        record = cat.resolve(ref)
    if record.sha256 != s.sha256:
        raise IntegrityError(f"{where}: {ref} in the catalogue is sha256 {record.sha256[:12]}, the lock pins {s.sha256[:12]}")
    try:
        data = cat.read_blob(record.sha256)  # re-hashes the bytes
    except Cones2Error as exc:
        raise type(exc)(f"{where}: {exc}") from None
    return parse_residual(data, ref)


def _pull(s: ResolvedSubject) -> None:
    from ..registry.hub.pull import pull

    where = f"subjects.{s.key}"
    try:
        result = pull(f"{s.repo}@{s.version}", remote=s.remote, local_name=s.name)
    except Cones2Error as exc:
        raise type(exc)(f"{where}: pulling {s.repo}@{s.version}: {exc}") from None
    if getattr(result, "sha256", s.sha256) != s.sha256:
        raise IntegrityError(f"{where}: {s.repo}@{s.version} on the remote is not the pinned content")


def check_base(resolution: Resolution, fingerprint: str) -> None:
    """Refuse a resolution made for another base model than the one loaded."""
    locked = resolution.base_model.get("fingerprint")
    if locked and locked != fingerprint:
        raise BaseModelMismatchError(
            f"base_model: the lock was made for fingerprint {locked[:12]}, the model here is {fingerprint[:12]}"
        )
