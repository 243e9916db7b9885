"""The one place where the studio meets the render API.

The page sends its state as JSON (a :class:`Design`: prompt, subjects per word, a box
and a weight per subject, sampler preset and a few settings, seed, size). This module
turns it into a render call, a saved composition file and back, and reads the state
out of a composition file or a PNG written by cones2. Nothing else in the studio
imports the sampler.

Today it renders through :class:`~cones2.sampler.pipeline.Cones2Pipeline` directly and
writes the same PNG record as ``cones2 generate``; the composition file has the shape
of ``NAME.cones2.toml`` (format ``cones2-composition`` 1).
"""

from __future__ import annotations

import json
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

    # -- the equivalent command line -----------------------------------------------

    def generate_args(self, output: str) -> list[str]:
        """``cones2 generate`` arguments that render the same image from the command line."""
        s = self.settings()
        args = [self.prompt]
        for word, ref in self.subjects.items():
            args += ["--subject", f"{word}={ref}"]
        for word, box in self.boxes.items():
            args += ["--box", f"{word}=" + ",".join(f"{v:g}" for v in box)]
        for word, w in self.weights.items():
            args += ["--weight", f"{word}={w:g}"]
        args += ["--preset", s.preset, "--seed", str(self.seed), "--steps", str(s.steps), "--cfg", f"{s.guidance_scale:g}",
                 "--guidance-weight", f"{s.guidance_weight:g}"]
        if s.guidance_steps is not None:
            args += ["--guidance-steps", str(s.guidance_steps)]
        if not s.self_recurrence:
            args.append("--no-self-recurrence")
        if self.height:
            args += ["--height", str(self.height), "--width", str(self.width)]
        if self.negative_prompt:
            args += ["--negative-prompt", self.negative_prompt]
        return [*args, "-o", output]


# ---------------------------------------------------------------------- save / open


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as TOML")


def _toml_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k, ensure_ascii=False)


def _dump_toml(data: Mapping[str, Any], header: str) -> str:
    """Scalars first, then one ``[table]`` per mapping (nested tables as ``[a.b]``)."""
    lines = [f"# {header}"]

    def emit(prefix: str, table: Mapping[str, Any]) -> None:
        if prefix:
            lines.extend(["", f"[{prefix}]"])
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, Mapping))
        for k, v in table.items():
            if isinstance(v, Mapping):
                emit(f"{prefix}.{_toml_key(k)}" if prefix else _toml_key(k), v)

    emit("", data)
    return "\n".join(lines) + "\n"


def save_design(design: Design, folder: str | Path) -> dict[str, Any]:
    """Write ``FOLDER/NAME.cones2.toml``; returns ``{"path", "lock", "command"}``."""
    from ..fsutil import atomic_write_bytes, check_writable_folder

    folder = Path(folder)
    check_writable_folder(folder)
    path = folder / f"{design.name}{SUFFIX}"
    text = _dump_toml(design.to_composition(), "cones2 composition, saved by cones2 studio")
    try:
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    command = ["cones2", "generate", *design.generate_args(f"{design.name}.png")]
    return {"path": str(path), "lock": None, "command": command}


def open_file(name: str, data: bytes) -> Design:
    """The design in a composition file (TOML) or in a PNG written by cones2."""
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
    return Design.from_composition(parsed, name=stem if _NAME.fullmatch(stem) else None)


def _design_from_png(name: str, data: bytes) -> Design:
    import io

    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            text = getattr(image, "text", {}).get("cones2")
    except OSError as exc:
        raise UsageError(f"{name}: not a readable PNG ({exc})") from None
    if not text:
        raise UsageError(f"{name}: this PNG was not made by cones2 (no cones2 metadata)")
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        raise UsageError(f"{name}: its cones2 metadata is not JSON") from None
    if isinstance(record.get("studio"), Mapping):
        return Design.from_page(record["studio"])
    if isinstance(record.get("composition"), Mapping):
        return Design.from_composition(record["composition"])
    settings = record.get("settings") or {}
    subjects = {}
    for key, sub in (record.get("subjects") or {}).items():
        ref = f"{sub['name']}@{sub['version']}" if sub.get("name") and sub.get("version") else sub.get("ref")
        if ref:
            subjects[key.partition("#")[0]] = ref
    boxes = {r["subject"]: r["box"] for r in record.get("layout") or [] if r.get("box")}
    weights = {r["subject"]: r["weight_in"] for r in record.get("layout") or [] if r.get("box") and r.get("weight_in") != 2.5}
    return Design.from_page({
        "prompt": record.get("prompt"), "subjects": subjects, "boxes": boxes, "weights": weights,
        "preset": settings.get("preset"), "steps": settings.get("steps"),
        "guidance_weight": settings.get("guidance_weight"), "seed": record.get("seed"), "size": settings.get("height"), "negative_prompt": record.get("negative_prompt"),
    })


# ---------------------------------------------------------------------- checks and render


def check_design(design: Design, model: str | None = None) -> None:
    """Refuse unknown subjects and subjects of another base model before queueing a render."""
    from ..base_model import model_info
    from ..registry import open_catalogue

    if not design.subjects:
        return
    fingerprint = model_info(model).fingerprint
    with open_catalogue() as cat:
        for word, ref in design.subjects.items():
            try:
                record = cat.resolve(ref, base_fingerprint=fingerprint)
            except Cones2Error as exc:
                raise type(exc)(f"subject {word!r}: {exc}") from None
            if record.word.lower() != word.lower():
                raise UsageError(f"subject {word!r}: {record.ref} was learned for the word {record.word!r}")


class Renderer:
    """Renders designs with one pipeline kept loaded between renders (one thread at a time)."""

    def __init__(self, model: str | None = None, device: str | None = None) -> None:
        self.model = model
        self.device = device
        self._pipe: Any = None
        self._lock = threading.Lock()

    def _pipeline(self) -> Any:
        if self._pipe is None:
            import torch

            from ..base_model import model_info, resolve_model_path
            from ..sampler.generate import _quiet_loading
            from ..sampler.pipeline import Cones2Pipeline

            info = model_info(self.model)
            _, folder = resolve_model_path(self.model, full=True)
            device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
            dtype = torch.float16 if device.startswith("cuda") else torch.float32
            _quiet_loading()
            pipe = Cones2Pipeline.from_pretrained(str(folder), dtype=dtype, safety_checker=None,
                                                  requires_safety_checker=False)
            pipe.base_fingerprint = info.fingerprint
            pipe = pipe.to(device)
            pipe.set_progress_bar_config(disable=True)
            self._pipe, self._info, self._device, self._dtype = pipe, info, device, str(dtype).removeprefix("torch.")
        return self._pipe

    def render(self, design: Design, folder: str | Path, on_step: OnStep | None = None) -> dict[str, Any]:
        """Render ``design`` into ``folder``: ``image.png`` (with the cones2 record), ``layout.png``
        and one attention overlay per subject. Returns their paths and the record."""
        with self._lock:
            return self._render(design, Path(folder), on_step)

    def _render(self, design: Design, folder: Path, on_step: OnStep | None) -> dict[str, Any]:
        from PIL.PngImagePlugin import PngInfo

        from .. import __version__
        from ..demo_model import DEMO_NOTICE
        from ..sampler.attention_maps import save_attention_maps
        from ..sampler.layout import Layout

        check_design(design, self.model)
        pipe = self._pipeline()
        s = design.settings()
        size = pipe.unet.config.sample_size
        size = (size if isinstance(size, int) else size[0]) * pipe.vae_scale_factor
        height, width = design.height or size, design.width or size
        layout = None
        if design.boxes:
            layout = Layout.from_boxes(design.boxes, weights=design.weights or None, size=(height, width))
        n_guided = 0 if layout is None else min(s.steps, s.steps if s.guidance_steps is None else s.guidance_steps)
        total = s.steps + (n_guided if s.self_recurrence else 0)
        done = [0]

        def count(*_: Any) -> None:
            done[0] += 1
            if on_step is not None:
                on_step(min(done[0], total), total)

        if on_step is not None:
            on_step(0, total)
        hook = pipe.unet.register_forward_pre_hook(count)
        try:
            out = pipe(
                design.prompt, design.subjects, layout, settings=s, negative_prompt=design.negative_prompt,
                seed=design.seed, height=height, width=width,
                return_attention_maps=bool(design.subjects) and layout is not None,
            )
        finally:
            hook.remove()
        info = self._info
        record: dict[str, Any] = {
            "prompt": design.prompt, "negative_prompt": design.negative_prompt, "subjects": out.info["subjects"],
            "layout": out.info["layout"],
            "settings": {
                **s.to_dict(), "guided_steps": out.info["guided_steps"], "scheduler_class": type(pipe.scheduler).__name__,
                "height": height, "width": width, "num_images": 1, "dtype": self._dtype, "device": self._device,
                "overlap": "share",
            },
            "seed": design.seed,
            "base_model": {"source": info.source, "fingerprint": info.fingerprint, "is_demo": info.is_demo,
                           "notice": DEMO_NOTICE if info.is_demo else None},
            "cones2_version": __version__,
            "studio": design.to_page(),
        }
        folder.mkdir(parents=True, exist_ok=True)
        meta = PngInfo()
        meta.add_text("prompt", design.prompt)
        meta.add_text("cones2", json.dumps({**record, "image_index": 0}, sort_keys=True, default=str))
        image_path = folder / "image.png"
        out.images[0].save(image_path, format="PNG", pnginfo=meta)
        result: dict[str, Any] = {"image": str(image_path), "layout": None, "attention": {}, "record": record,
                                  "width": width, "height": height}
        files = save_attention_maps(folder, out.images, out.attention_maps or {}, layout=layout, stem="image")
        for path in files:
            if path.name == "layout.png":
                result["layout"] = str(path)
        for key in out.attention_maps or {}:
            match = [p for p in files if p.name.startswith("image-0-attention-") and p.stem.endswith(_safe(key))]
            if match:
                result["attention"][key] = str(match[0])
        return result


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key)

