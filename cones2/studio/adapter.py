"""The one place where the studio meets the render API.

The page sends its state as JSON (a :class:`Design`: prompt, subjects per word, a box
and a weight per subject, sampler preset and a few settings, seed, size). This module
turns it into a render call, a saved composition file and back, and reads the state
out of a composition file or a PNG written by cones2. Nothing else in the studio
imports the sampler.

A design becomes a :class:`~cones2.composition.Composition`; renders go through
:func:`cones2.composition.render` with one model load kept between renders (so
``cones2 render NAME.cones2.toml`` draws the same pixels), Save writes the composition
file and its lock, Open reads a composition file or a cones2 PNG back into a design.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Cones2Error, UsageError

FORMAT = "cones2-composition"
FORMAT_VERSION = 1
SUFFIX = ".cones2.toml"
MAX_SIDE = 1024
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_'-]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

OnStep = Callable[[int, int], None]


def prompt_words(prompt: str) -> list[str]:
    """The distinct words of ``prompt``, in order, lower-cased (what the subject pickers offer)."""
    return list(dict.fromkeys(w.lower() for w in _WORD.findall(prompt or "")))


def _number(data: Mapping[str, Any], key: str, kind: type, default: Any, low: float, high: float) -> Any:
    value = data.get(key, default)
    if value is None or value == "":
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"{key}: {value!r} is not a number") from None
    if kind is int and float(value) != number:
        raise UsageError(f"{key}: {value!r} is not a whole number")
    if not low <= number <= high:
        raise UsageError(f"{key}: {number} is outside {low:g}..{high:g}")
    return number


@dataclass(frozen=True)
class Design:
    """The compose page's state; validated at construction, one line per refusal."""

    prompt: str
    subjects: dict[str, str] = field(default_factory=dict)  # word -> registry ref
    boxes: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)  # normalised x0,y0,x1,y1
    weights: dict[str, float] = field(default_factory=dict)  # inside weight per boxed word
    preset: str = "reference"
    steps: int = 50
    guidance_weight: float = 0.08
    seed: int = 0
    height: int | None = None
    width: int | None = None
    negative_prompt: str | None = None
    name: str = "composition"

    def __post_init__(self) -> None:
        from ..sampler.presets import PRESET_NAMES

        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise UsageError("prompt: type a prompt first")
        words = prompt_words(self.prompt)
        for word, ref in self.subjects.items():
            if word.lower() not in words:
                raise UsageError(f"subject {word!r}: the word does not occur in the prompt")
            if not isinstance(ref, str) or not ref.strip():
                raise UsageError(f"subject {word!r}: pick a subject from the library")
        for word, box in self.boxes.items():
            if word.lower() not in words:
                raise UsageError(f"box {word!r}: the word does not occur in the prompt")
            if len(box) != 4 or not (0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1):
                raise UsageError(f"box {word!r}: {list(box)} is not x0<x1, y0<y1 within 0..1")
        for word in self.weights:
            if word not in self.boxes:
                raise UsageError(f"weight {word!r}: the word has no box")
        if self.preset not in PRESET_NAMES:
            raise UsageError(f"preset {self.preset!r}: choose one of {', '.join(PRESET_NAMES)}")
        for side in (self.height, self.width):
            if side is not None and (side < 8 or side % 8 or side > MAX_SIDE):
                raise UsageError(f"size {side}: use a multiple of 8 from 8 to {MAX_SIDE}")
        if not _NAME.fullmatch(self.name):
            raise UsageError(f"name {self.name!r}: use letters, digits, '-', '_' or '.' (up to 64)")

    @classmethod
    def from_page(cls, data: Any) -> Design:
        """A design from the page's JSON; bad values are refused in one line naming the field."""
        if not isinstance(data, Mapping):
            raise UsageError("expected a JSON object")
        subjects = data.get("subjects") or {}
        boxes = data.get("boxes") or {}
        weights = data.get("weights") or {}
        if not all(isinstance(x, Mapping) for x in (subjects, boxes, weights)):
            raise UsageError("subjects, boxes and weights must be objects keyed by word")
        clean_boxes = {}
        for word, box in boxes.items():
            try:
                clean_boxes[str(word)] = tuple(round(float(v), 4) for v in box)
            except (TypeError, ValueError):
                raise UsageError(f"box {word!r}: expected four numbers") from None
        clean_weights = {}
        for word, w in weights.items():
            clean_weights[str(word)] = _number({"weight": w}, "weight", float, 2.5, -1e9, 1e9)
        size = _number(data, "size", int, None, 8, MAX_SIDE)
        return cls(
            prompt=str(data.get("prompt") or ""),
            subjects={str(k): str(v) for k, v in subjects.items() if v},
            boxes=clean_boxes,
            weights=clean_weights,
            preset=str(data.get("preset") or "reference"),
            steps=_number(data, "steps", int, 50, 1, 1000),
            guidance_weight=_number(data, "guidance_weight", float, 0.08, 0.0, 10.0),
            seed=_number(data, "seed", int, 0, 0, 2**63 - 1),
            height=size,
            width=size,
            negative_prompt=str(data["negative_prompt"]) if data.get("negative_prompt") else None,
            name=str(data.get("name") or "composition"),
        )

    def to_page(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt, "subjects": dict(self.subjects), "boxes": {w: list(b) for w, b in self.boxes.items()},
            "weights": dict(self.weights), "preset": self.preset, "steps": self.steps,
            "guidance_weight": self.guidance_weight, "seed": self.seed, "size": self.height,
            "negative_prompt": self.negative_prompt, "name": self.name,
        }

    def settings(self) -> Any:
        from ..sampler.presets import resolve_settings

        return resolve_settings(self.preset, steps=self.steps, guidance_weight=self.guidance_weight)

    # -- composition files -------------------------------------------------------

    def to_composition(self) -> dict[str, Any]:
        """The ``NAME.cones2.toml`` shape of this design."""
        settings = self.settings()
        data: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name, "prompt": self.prompt,
            "seeds": [self.seed], "subjects": dict(self.subjects),
            "sampler": {"preset": settings.preset, **settings.differences()},
        }
        for key, value in (("negative_prompt", self.negative_prompt), ("height", self.height), ("width", self.width)):
            if value is not None:
                data[key] = value
        if self.boxes:
            layout: dict[str, Any] = {"overlap": "share", "boxes": {w: list(b) for w, b in self.boxes.items()}}
            if self.weights:
                layout["weights"] = dict(self.weights)
            data["layout"] = layout
        return data

    @classmethod
    def from_composition(cls, data: Mapping[str, Any], name: str | None = None) -> Design:
        if data.get("format", FORMAT) != FORMAT:
            raise UsageError(f"format {data.get('format')!r} is not a cones2 composition")
        if data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
            raise UsageError(f"composition format_version {data.get('format_version')!r} is not supported")
        sampler = dict(data.get("sampler") or {})
        seeds = data.get("seeds") or [0]
        subjects = {}
        for key, value in (data.get("subjects") or {}).items():
            ref = value.get("ref") if isinstance(value, Mapping) else value
            if not isinstance(ref, str):
                raise UsageError(f"subjects.{key}: the studio opens registry subjects only")
            subjects[key.partition("#")[0]] = ref
        layout = data.get("layout") or {}
        unsupported = sorted(set(layout) - {"overlap", "boxes", "weights"})
        if unsupported:
            raise UsageError(f"layout.{unsupported[0]}: the studio draws boxes only")
        weights = {w: (v[0] if isinstance(v, list) else v) for w, v in (layout.get("weights") or {}).items()}
        page = {
            "prompt": data.get("prompt"), "subjects": subjects, "boxes": layout.get("boxes") or {}, "weights": weights,
            "preset": sampler.get("preset", "reference"), "steps": sampler.get("steps"),
            "guidance_weight": sampler.get("guidance_weight"), "seed": seeds[0], "size": data.get("height"),
            "negative_prompt": data.get("negative_prompt"), "name": data.get("name") or name,
        }
        return cls.from_page(page)

    def composition(self, model: str | None = None) -> Any:
        """This design as a validated :class:`~cones2.composition.Composition` on base ``model``."""
        from ..composition import Composition

        data = self.to_composition()
        if model is not None:
            data["base_model"] = model
        return Composition.from_dict(data, name=self.name)


# ---------------------------------------------------------------------- save / open


def save_design(design: Design, folder: str | Path, model: str | None = None) -> dict[str, Any]:
    """Write ``FOLDER/NAME.cones2.toml`` and its lock; returns ``{"path", "lock", "command"}``."""
    from ..fsutil import check_writable_folder

    folder = Path(folder)
    check_writable_folder(folder)
    composition = design.composition(model)
    path = composition.save(folder / f"{design.name}{SUFFIX}")
    lock = composition.lock(path)
    return {"path": str(path), "lock": str(lock.path), "command": ["cones2", "render", str(path), "--locked"]}


def open_file(name: str, data: bytes) -> Design:
    """The design in a composition file (TOML) or in a PNG written by cones2."""
    from ..composition import Composition

    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return _design_from_png(name, data)
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        parsed = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"{name}: neither a PNG nor a composition file ({str(exc).splitlines()[0]})") from None
    stem = Path(name).name.removesuffix(SUFFIX).removesuffix(".toml")
    try:
        composition = Composition.from_dict(parsed, name=stem if _NAME.fullmatch(stem) else None)
        return Design.from_composition(composition.to_dict())
    except Cones2Error as exc:
        raise type(exc)(f"{name}: {exc}") from None


def _design_from_png(name: str, data: bytes) -> Design:
    """Through :func:`~cones2.composition.read_png_record` (which reads files), by way of a temporary copy."""
    import tempfile

    from ..composition import read_png_record

    with tempfile.TemporaryDirectory(prefix="cones2-studio-open-") as tmp:
        path = Path(tmp) / "upload.png"
        path.write_bytes(data)
        try:
            composition, _, seed = read_png_record(path)
            return Design.from_composition({**composition.to_dict(), "seeds": [seed]})
        except Cones2Error as exc:
            raise type(exc)(str(exc).replace(str(path), name)) from None


# ---------------------------------------------------------------------- checks and render


def check_design(design: Design, model: str | None = None) -> Any:
    """Resolve the design's subjects now (unknown subject, another base model, a word the
    subject was not learned for: refused in one line before anything is queued); returns the
    :class:`~cones2.composition.Resolution`."""
    from ..composition import resolve

    return resolve(design.composition(model))


def unet_passes(settings: Any, guided: bool) -> int:
    """UNet passes for one image: every step, plus one per guided step with self-recurrence."""
    if not guided:
        return settings.steps
    n_guided = settings.steps if settings.guidance_steps is None else min(settings.steps, settings.guidance_steps)
    return settings.steps + (n_guided if settings.self_recurrence else 0)


class Renderer:
    """Renders designs through :func:`cones2.composition.render`, one at a time, with the
    base model loaded once and kept for the next render."""

    def __init__(self, model: str | None = None, device: str | None = None) -> None:
        self.model = model
        self.device = device
        self._pipelines: Any = None
        self._lock = threading.Lock()

    def render(self, design: Design, folder: str | Path, on_step: OnStep | None = None) -> dict[str, Any]:
        """Render ``design`` into ``folder``: ``image.png`` (its metadata holds the composition),
        ``layout.png`` and one attention overlay per subject when there is a layout."""
        with self._lock:
            return self._render(design, Path(folder), on_step)

    def _render(self, design: Design, folder: Path, on_step: OnStep | None) -> dict[str, Any]:
        from ..composition import RenderJob, RenderOptions, render
        from ..composition.render import PipelineCache, pick_device

        composition = design.composition(self.model)
        resolution = check_design(design, self.model)
        if self._pipelines is None:
            self._pipelines = PipelineCache(pick_device(self.device))
        device = self._pipelines.device
        dtype = composition.dtype or ("float16" if device.type == "cuda" else "float32")
        pipe, _ = self._pipelines.get(composition.base_model, dtype)  # loaded here once, then kept
        total = unet_passes(composition.sampler, composition.layout is not None)
        done = [0]

        def count(*_: Any) -> None:
            done[0] += 1
            if on_step is not None:
                on_step(min(done[0], total), total)

        if on_step is not None:
            on_step(0, total)
        folder.mkdir(parents=True, exist_ok=True)
        guided = composition.layout is not None
        hook = pipe.unet.register_forward_pre_hook(count)
        try:
            result = render(
                [RenderJob(composition, resolution, outputs=(folder / "image.png",))],
                RenderOptions(output_dir=folder, device=str(device), contact_sheet=False,
                              attention_dir=folder if guided else None),
                pipelines=self._pipelines,
            )
        finally:
            hook.remove()
        image = result.images[0]
        layout = next((p for p in result.attention_maps if p.name == "layout.png"), None)
        attention = {}
        for key in (s.key for s in composition.subjects):
            match = [p for p in result.attention_maps if p.name.startswith("image-0-attention-") and p.stem.endswith(_safe(key))]
            if match:
                attention[key] = str(match[0])
        settings = image.info.get("settings", {})
        return {"image": str(image.path), "layout": str(layout) if layout else None, "attention": attention,
                "width": settings.get("width"), "height": settings.get("height"),
                "subjects": image.info.get("subjects", {}), "resolved": resolution.to_dict()}


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key)

