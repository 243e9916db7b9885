"""The :class:`Composition`: everything that decides an image, as one validated value.

A composition holds the base model, prompt and negative prompt, subjects (a word or
``word#N`` bound to a registry reference with an optional version range, or to a
residual file), a layout (boxes, masks, a colour image), the sampler settings
(:class:`~cones2.sampler.presets.SamplerSettings`), the image size and dtype, and the
seeds. It is built from ``cones2 generate``'s options, read from a
``NAME.cones2.toml`` file or from a PNG's metadata, and handed to
:func:`~cones2.composition.resolve.resolve` and :func:`~cones2.composition.render.render`.

Paths (residual files, masks, layout images) are held absolute in memory; a TOML file
stores them relative to its own folder, so a folder of compositions can be moved.
Errors name the field they concern (``subjects.dog: ...``, ``layout.boxes.cat: ...``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import CompositionError, Cones2Error
from ..sampler.presets import PRESETS, SETTING_NAMES, SamplerSettings, resolve_settings
from . import toml_io

FORMAT = "cones2-composition"
FORMAT_VERSION = 1
IMAGE_FORMAT = "cones2-image"
IMAGE_FORMAT_VERSION = 1
PNG_KEY = "cones2"
SUFFIX = ".cones2.toml"
DTYPES = ("float32", "float16", "bfloat16")
OVERLAPS = ("share", "last", "error")
MAX_SEED = 2**63 - 1


def _fail(where: str, message: str) -> CompositionError:
    return CompositionError(f"{where}: {message}")


def _absolute(path: str, base: Path | None) -> str:
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = (base or Path.cwd()) / p
    return os.path.normpath(str(p))


def _relative(path: str, base: Path | None) -> str:
    if base is None:
        return path
    try:
        return os.path.relpath(path, base)
    except ValueError:  # another drive on Windows
        return path


# ---------------------------------------------------------------------- version ranges

_OPS = (">=", "<=", "==", "!=", ">", "<")


def parse_range(text: str, where: str = "version") -> tuple[tuple[str, int], ...]:
    """``">=2,<4"``, ``"==3"`` or ``"3"`` as ``((op, n), ...)``; refused in one line otherwise."""
    clauses = []
    for part in str(text).split(","):
        part = part.strip()
        op = next((o for o in _OPS if part.startswith(o)), "==")
        number = part[len(op):].strip() if part.startswith(op) else part
        if not (number.isascii() and number.isdigit()) or int(number) < 1:
            raise _fail(where, f"bad version range {text!r} (use e.g. >=2, ==3, >=2,<4)")
        clauses.append((op, int(number)))
    return tuple(clauses)


def in_range(version: int, clauses: tuple[tuple[str, int], ...]) -> bool:
    checks = {">=": version.__ge__, "<=": version.__le__, "==": version.__eq__, "!=": version.__ne__,
              ">": version.__gt__, "<": version.__lt__}
    return all(checks[op](n) for op, n in clauses)


# ---------------------------------------------------------------------- subjects


@dataclass(frozen=True)
class SubjectSpec:
    """One subject: ``key`` (``dog`` or ``dog#2``) bound to a registry ``ref`` (with an optional
    ``version`` range) or to a residual ``file``."""

    key: str
    ref: str | None = None
    version: str | None = None
    file: str | None = None

    def __post_init__(self) -> None:
        from ..residual import SubjectKey

        where = f"subjects.{self.key}"
        try:
            SubjectKey.parse(self.key)
        except Cones2Error as exc:
            raise _fail(where, str(exc)) from None
        if (self.ref is None) == (self.file is None):
            raise _fail(where, "give exactly one of ref (a registry subject) or file (a residual file)")
        if self.ref is not None:
            from ..registry.refs import parse_ref

            try:
                parsed = parse_ref(self.ref)
            except Cones2Error as exc:
                raise _fail(where, str(exc)) from None
            if self.version is not None:
                if not parsed.is_bare:
                    raise _fail(where, f"{self.ref!r} already names a version; drop the version range or the selector")
                parse_range(self.version, where)
        elif self.version is not None:
            raise _fail(where, "a version range needs a registry ref, not a file")

    @property
    def word(self) -> str:
        return self.key.partition("#")[0].strip()

    @property
    def name(self) -> str | None:
        """The registry subject name (None for files)."""
        if self.ref is None:
            return None
        from ..registry.refs import parse_ref

        return parse_ref(self.ref).name

    def to_value(self, base: Path | None = None) -> Any:
        if self.file is not None:
            return {"file": _relative(self.file, base)}
        if self.version is None:
            return self.ref
        return {"ref": self.ref, "version": self.version}

    @classmethod
    def from_value(cls, key: str, value: Any, base: Path | None = None) -> SubjectSpec:
        where = f"subjects.{key}"
        if isinstance(value, str):
            path = Path(value).expanduser()
            looks_like_file = value.endswith(".safetensors") or os.sep in value or (base or Path.cwd()).joinpath(path).is_file()
            if looks_like_file:
                return cls(key, file=_absolute(value, base))
            return cls(key, ref=value)
        if not isinstance(value, dict):
            raise _fail(where, f"expected a ref string or a table, not {type(value).__name__}")
        unknown = sorted(set(value) - {"ref", "version", "file"})
        if unknown:
            raise _fail(where, f"unknown field {unknown[0]!r} (known: ref, version, file)")
        for name in ("ref", "version", "file"):
            if name in value and not isinstance(value[name], str):
                raise _fail(f"{where}.{name}", f"expected a string, not {value[name]!r}")
        file = value.get("file")
        return cls(key, ref=value.get("ref"), version=value.get("version"), file=_absolute(file, base) if file else None)


# ---------------------------------------------------------------------- layout


def _number(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(float(v)):
        raise _fail(where, f"expected a number, not {v!r}")
    return float(v)


@dataclass(frozen=True)
class LayoutSpec:
    """Where the subjects go: boxes, masks and/or a colour-coded image, plus weights.

    ``boxes``: ``((word, (x0, y0, x1, y1)), ...)``, normalised unless ``pixels``.
    ``colours``: ``((colour "R,G,B", word, inside weight or None), ...)`` for ``image``.
    ``weights``: ``((word, inside, outside or None), ...)``.
    """

    boxes: tuple[tuple[str, tuple[float, float, float, float]], ...] = ()
    pixels: bool = False
    masks: tuple[tuple[str, str], ...] = ()
    image: str | None = None
    colours: tuple[tuple[str, str, float | None], ...] = ()
    weights: tuple[tuple[str, float, float | None], ...] = ()
    overlap: str = "share"

    def __post_init__(self) -> None:
        if self.overlap not in OVERLAPS:
            raise _fail("layout.overlap", f"{self.overlap!r}: choose one of {', '.join(OVERLAPS)}")
        if bool(self.image) != bool(self.colours):
            raise _fail("layout.image", "a layout image and its colours go together (R,G,B=WORD[:WEIGHT] for each colour)")
        for what, items in (("boxes", self.boxes), ("masks", self.masks)):
            words = [w for w, _ in items]
            if len(set(words)) != len(words):
                raise _fail(f"layout.{what}", "a word has more than one entry")
        if self.weights and not self.regions_words:
            raise _fail("layout.weights", "weights need a layout (boxes, masks or an image)")
        self._refuse_shared_colours()

    def _refuse_shared_colours(self) -> None:
        """One colour given for two words would silently leave one of them without a region."""
        from ..errors import LayoutError
        from ..sampler.layout import parse_colour

        seen: dict[tuple[int, int, int], str] = {}
        for colour, word, _ in self.colours:
            rgb = parse_colour(colour)
            if rgb in seen and seen[rgb] != word:
                raise LayoutError(f"layout.colours: colour {colour} is already given for {seen[rgb]!r}; use one colour per word")
            seen[rgb] = word

    @property
    def regions_words(self) -> list[str]:
        words = [w for w, _ in self.boxes] + [w for w, _ in self.masks] + [w for _, w, _ in self.colours]
        return list(dict.fromkeys(words))

    @property
    def is_empty(self) -> bool:
        return not (self.boxes or self.masks or self.image)

    def files(self) -> list[tuple[str, str]]:
        """``(field, path)`` of every file the layout reads."""
        out = [(f"layout.masks.{w}", p) for w, p in self.masks]
        if self.image:
            out.append(("layout.image", self.image))
        return out

    def check_files(self) -> None:
        """Refuse a mask or layout image that is missing, unreadable or too large (headers only:
        cheap, so that callers run it before loading a model)."""
        from ..sampler.layout import check_image_file

        for word, path in self.masks:
            check_image_file(path, f"layout mask {word!r}")
        if self.image:
            check_image_file(self.image, "layout image")

    def build(self, height: int, width: int, settings: SamplerSettings, tolerance: float | None = None) -> Any:
        """The :class:`~cones2.sampler.layout.Layout` for an image of this size, or None.

        ``tolerance`` (colour distance) overrides what ``settings`` imply."""
        from ..sampler.layout import Layout

        parts = []
        if self.boxes:
            parts.append(Layout.from_boxes(dict(self.boxes), pixels=self.pixels, size=(height, width), overlap=self.overlap))
        if self.masks:
            parts.append(Layout.from_masks(dict(self.masks), overlap=self.overlap))
        if self.image:
            colour_map: dict[str, Any] = {c: (w if weight is None else (w, weight)) for c, w, weight in self.colours}
            colour = Layout.from_colour_image(self.image, colour_map, tolerance=tolerance)
            # matched by the sampler's rule now (the pipeline would do the same), so that
            # combining with boxes or masks keeps the regions the settings ask for
            parts.append(colour.matched(settings.colour_match, settings.colour_tolerance))
        if not parts:
            return None
        layout = parts[0] if len(parts) == 1 else Layout.combine(parts, overlap=self.overlap)
        if self.weights:
            layout = layout.with_weights({w: (i if o is None else (i, o)) for w, i, o in self.weights})
        return layout

    def to_dict(self, base: Path | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"overlap": self.overlap}
        if self.pixels:
            out["pixels"] = True
        if self.image:
            out["image"] = _relative(self.image, base)
            out["colours"] = {c: (w if weight is None else [w, weight]) for c, w, weight in self.colours}
        if self.boxes:
            out["boxes"] = {w: list(b) for w, b in self.boxes}
        if self.masks:
            out["masks"] = {w: _relative(p, base) for w, p in self.masks}
        if self.weights:
            out["weights"] = {w: (i if o is None else [i, o]) for w, i, o in self.weights}
        return out

    @classmethod
    def from_dict(cls, data: Any, base: Path | None = None) -> LayoutSpec:
        if not isinstance(data, dict):
            raise _fail("layout", "expected a table")
        known = {"overlap", "pixels", "image", "colours", "boxes", "masks", "weights"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _fail(f"layout.{unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})")
        boxes = []
        for word, box in _table(data.get("boxes", {}), "layout.boxes").items():
            where = f"layout.boxes.{word}"
            if not isinstance(box, list) or len(box) != 4:
                raise _fail(where, "expected [x0, y0, x1, y1]")
            boxes.append((word, tuple(_number(v, where) for v in box)))
        masks = []
        for word, path in _table(data.get("masks", {}), "layout.masks").items():
            if not isinstance(path, str):
                raise _fail(f"layout.masks.{word}", "expected a file path")
            masks.append((word, _absolute(path, base)))
        colours = []
        for colour, target in _table(data.get("colours", {}), "layout.colours").items():
            where = f"layout.colours.{colour}"
            if isinstance(target, str):
                colours.append((colour, target, None))
            elif isinstance(target, list) and len(target) == 2 and isinstance(target[0], str):
                colours.append((colour, target[0], _number(target[1], where)))
            else:
                raise _fail(where, 'expected "WORD" or ["WORD", WEIGHT]')
        weights = []
        for word, w in _table(data.get("weights", {}), "layout.weights").items():
            where = f"layout.weights.{word}"
            if isinstance(w, list) and len(w) == 2:
                weights.append((word, _number(w[0], where), _number(w[1], where)))
            else:
                weights.append((word, _number(w, where), None))
        image = data.get("image")
        if image is not None and not isinstance(image, str):
            raise _fail("layout.image", "expected a file path")
        pixels = data.get("pixels", False)
        if not isinstance(pixels, bool):
            raise _fail("layout.pixels", "expected true or false")
        return cls(boxes=tuple(boxes), pixels=pixels, masks=tuple(masks), image=_absolute(image, base) if image else None,
                   colours=tuple(colours), weights=tuple(weights), overlap=data.get("overlap", "share"))


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, "expected a table")
    return value


# ---------------------------------------------------------------------- composition


@dataclass(frozen=True)
class Composition:
    """Everything that decides an image except where and on what it is computed.

    ``base_model``: a folder or Hub id (None: the configured model, else the demo model).
    ``height``/``width``: None takes the model's native size. ``dtype``: None is float32
    on a CPU and float16 on a GPU. One image is drawn per seed.
    """

    prompt: str
    subjects: tuple[SubjectSpec, ...] = ()
    layout: LayoutSpec | None = None
    sampler: SamplerSettings = field(default_factory=lambda: PRESETS["reference"])
    negative_prompt: str | None = None
    base_model: str | None = None
    seeds: tuple[int, ...] = (0,)
    height: int | None = None
    width: int | None = None
    dtype: str | None = None
    name: str = "composition"

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise _fail("prompt", "must be a non-empty string")
        if self.negative_prompt is not None and not isinstance(self.negative_prompt, str):
            raise _fail("negative_prompt", "must be a string")
        if not isinstance(self.sampler, SamplerSettings):
            raise _fail("sampler", f"must be SamplerSettings, not {type(self.sampler).__name__}")
        keys = [s.key for s in self.subjects]
        if len(set(keys)) != len(keys):
            raise _fail("subjects", "a word is given twice")
        if not self.seeds:
            raise _fail("seeds", "give at least one seed")
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED:
                raise _fail("seeds", f"{s!r} is not a whole number in 0..2**63-1")
        if len(set(self.seeds)) != len(self.seeds):
            raise _fail("seeds", "a seed is given twice")
        for label in ("height", "width"):
            size = getattr(self, label)
            if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 8):
                raise _fail(label, f"must be a positive multiple of 8 (pixels), not {size}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise _fail("dtype", f"{self.dtype!r}: choose one of {', '.join(DTYPES)}")
        if not isinstance(self.name, str) or not self.name or "/" in self.name or self.name.startswith("."):
            raise _fail("name", f"{self.name!r} is not usable in a file name")
        if self.layout is not None and self.layout.is_empty:
            object.__setattr__(self, "layout", None)

    # -- derived values

    def with_seeds(self, seeds: tuple[int, ...] | list[int]) -> Composition:
        return replace(self, seeds=tuple(seeds))

    def identity(self) -> dict[str, Any]:
        """What a lock depends on: everything but the seeds and the name."""
        data = self.to_dict()
        data.pop("seeds", None)
        data.pop("name", None)
        return data

    # -- dict / TOML

    def to_dict(self, base: Path | None = None) -> dict[str, Any]:
        """Plain values (TOML/JSON-able); paths relative to ``base`` when given."""
        sampler = {"preset": self.sampler.preset, **self.sampler.differences()}
        data: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "base_model": self.base_model,
            "seeds": list(self.seeds),
            "height": self.height,
            "width": self.width,
            "dtype": self.dtype,
            "subjects": {s.key: s.to_value(base) for s in self.subjects},
            "sampler": sampler,
        }
        if self.layout is not None:
            data["layout"] = self.layout.to_dict(base)
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_dict(cls, data: Any, base: Path | None = None, *, name: str | None = None) -> Composition:
        """Inverse of :meth:`to_dict`; unknown fields and unknown format versions are refused."""
        if not isinstance(data, dict):
            raise _fail("composition", "expected a table")
        fmt = data.get("format", FORMAT)
        if fmt != FORMAT:
            raise _fail("format", f"{fmt!r} is not a cones2 composition ({FORMAT})")
        version = data.get("format_version", FORMAT_VERSION)
        if version != FORMAT_VERSION:
            raise _fail("format_version", f"{version!r} is not supported by this cones2 (it reads {FORMAT_VERSION})")
        known = {"format", "format_version", "name", "prompt", "negative_prompt", "base_model", "seeds", "height",
                 "width", "dtype", "subjects", "sampler", "layout"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _fail(unknown[0], f"unknown field (known: {', '.join(sorted(known))})")
        if "prompt" not in data:
            raise _fail("prompt", "missing")
        subjects = tuple(SubjectSpec.from_value(k, v, base) for k, v in _table(data.get("subjects", {}), "subjects").items())
        sampler = _sampler_from(data.get("sampler", {}))
        seeds = data.get("seeds", [0])
        if isinstance(seeds, int) and not isinstance(seeds, bool):
            seeds = [seeds]
        if not isinstance(seeds, list):
            raise _fail("seeds", "expected a list of whole numbers")
        layout = LayoutSpec.from_dict(data["layout"], base) if "layout" in data else None
        for label in ("name", "negative_prompt", "base_model", "dtype"):
            if label in data and not isinstance(data[label], str):
                raise _fail(label, f"expected a string, not {data[label]!r}")
        base_model = data.get("base_model")
        if base_model and base is not None and (base / base_model).is_dir():
            base_model = _absolute(base_model, base)
        return cls(
            prompt=data["prompt"], subjects=subjects, layout=layout, sampler=sampler,
            negative_prompt=data.get("negative_prompt"), base_model=base_model, seeds=tuple(seeds),
            height=data.get("height"), width=data.get("width"), dtype=data.get("dtype"),
            name=data.get("name") or name or "composition",
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Composition:
        """Read ``NAME.cones2.toml`` (paths in it are relative to its folder)."""
        path = Path(path)
        data = toml_io.read_toml(path)
        try:
            return cls.from_dict(data, path.resolve().parent, name=stem_of(path))
        except CompositionError as exc:
            raise CompositionError(f"{path}: {exc}") from None

    def to_toml(self, path: str | os.PathLike[str] | None = None) -> str:
        base = Path(path).resolve().parent if path is not None else None
        data = self.to_dict(base)
        return toml_io.dumps(data, header="cones2 composition: render with `cones2 render FILE`", comments=COMMENTS)

    def save(self, path: str | os.PathLike[str]) -> Path:
        from ..fsutil import atomic_write_bytes

        path = Path(path)
        try:
            atomic_write_bytes(path, self.to_toml(path).encode("utf-8"))
        except OSError as exc:
            raise CompositionError(f"cannot write {path}: {exc.strerror or exc}") from None
        return path

    # -- PNG

    @classmethod
    def from_png(cls, path: str | os.PathLike[str]) -> Composition:
        """The composition stored in a PNG written by cones2."""
        return read_png_record(path)[0]

    # -- convenience API (resolve, lock, render)

    def lock(self, path: str | os.PathLike[str] | None = None, *, upgrade: bool | str = False) -> Any:
        """Resolve and write the lock beside ``path`` (the composition's file); returns the lock."""
        from .lock import lock_composition

        return lock_composition(self, path, upgrade=upgrade)

    def render(self, output_dir: str | os.PathLike[str] = ".", *, lock: Any = None, locked: bool = False,
               **options: Any) -> Any:
        """Render every seed into ``output_dir``; returns a RenderResult. ``lock``: the composition's
        file (its ``.lock`` used as by ``cones2 render``; ``locked`` refuses a missing or stale one)
        or a LockResult; without it the subjects are resolved afresh."""
        from .lock import LockResult, locked_resolution
        from .render import RenderJob, RenderOptions, render
        from .resolve import resolve

        if isinstance(lock, LockResult):
            resolution = lock.resolution
        elif lock is not None:
            resolution, _ = locked_resolution(self, lock, locked=locked)
        else:
            resolution = resolve(self)
        return render([RenderJob(self, resolution)], RenderOptions(output_dir=Path(output_dir), **options))


def _sampler_from(data: Any) -> SamplerSettings:
    if not isinstance(data, dict):
        raise _fail("sampler", "expected a table")
    data = dict(data)
    unknown = sorted(set(data) - {"preset", *SETTING_NAMES})
    if unknown:
        raise _fail(f"sampler.{unknown[0]}", f"unknown field (known: preset, {', '.join(SETTING_NAMES)})")
    if data.get("guidance_steps") == "all":
        data["guidance_steps"] = None
    try:
        preset = data.pop("preset", "reference")
        explicit_all = "guidance_steps" in data and data["guidance_steps"] is None
        settings = resolve_settings(preset, **data)
        if explicit_all and settings.guidance_steps is not None:
            settings = replace(settings, guidance_steps=None)
        return settings
    except CompositionError:
        raise
    except Cones2Error as exc:
        raise _fail("sampler", str(exc)) from None


def stem_of(path: str | os.PathLike[str]) -> str:
    """``beach.cones2.toml`` -> ``beach``; ``x.toml`` -> ``x``."""
    name = Path(path).name
    for suffix in (SUFFIX, ".toml"):
        if name.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return Path(path).stem or "composition"


COMMENTS = {
    "prompt": "the text prompt; every subject word and layout word must occur in it",
    "seeds": "one image per seed",
    "subjects": 'word (or word#N) = registry ref ("dog-max", "dog-max@2", "dog-max:stable"), '
                '{ ref = "dog-max", version = ">=2" } or { file = "dog.safetensors" }',
    "layout": "boxes are [x0, y0, x1, y1] in 0..1 (top-left origin); masks and image are paths",
    "sampler": 'preset "reference" (the paper\'s sampler) or "cones2", plus any single setting',
}


# ---------------------------------------------------------------------- PNG records


def png_record(composition: Composition, resolved: dict[str, Any], seed: int, extra: dict[str, Any] | None = None) -> str:
    """The JSON text a PNG stores under :data:`PNG_KEY`."""
    record = {
        **(extra or {}),
        "format": IMAGE_FORMAT,
        "format_version": IMAGE_FORMAT_VERSION,
        "composition": composition.to_dict(),
        "resolved": resolved,
        "seed": seed,
    }
    return json.dumps(record, sort_keys=True, default=str)


def read_png_record(path: str | os.PathLike[str]) -> tuple[Composition, dict[str, Any], int]:
    """``(composition, resolved, seed)`` from a PNG cones2 wrote; one-line errors otherwise."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", {}) or {}).get(PNG_KEY)
    except FileNotFoundError:
        raise CompositionError(f"{path}: no such image") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise CompositionError(f"{path}: not a readable image ({type(exc).__name__})") from None
    if text is None:
        raise CompositionError(f"{path}: no cones2 metadata in this image (was it written by cones2?)")
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        raise CompositionError(f"{path}: its cones2 metadata is not valid JSON") from None
    if not isinstance(record, dict) or record.get("format") != IMAGE_FORMAT or "composition" not in record:
        raise CompositionError(f"{path}: its cones2 metadata holds no composition (written by an older cones2?)")
    if record.get("format_version") != IMAGE_FORMAT_VERSION:
        raise CompositionError(f"{path}: image record version {record.get('format_version')!r} is not supported")
    try:
        composition = Composition.from_dict(record["composition"])
    except CompositionError as exc:
        raise CompositionError(f"{path}: {exc}") from None
    seed = record.get("seed", composition.seeds[0])
    return composition, record.get("resolved") or {}, int(seed)
