"""Generate images from CLI-style inputs: the API behind ``cones2 generate``.

Takes subjects as ``WORD=REF`` strings and a layout as box/mask/colour options (the
shapes a command line or a config file gives), runs :class:`Cones2Pipeline`, and writes
PNGs whose text metadata records everything needed to reproduce them: the sampler
settings (the preset and every setting it implied, see :mod:`cones2.sampler.presets`)
are built once here and passed to the pipeline as one ``settings=`` object.
Image ``k`` of ``--num-images N`` is the image of seed ``seed + k`` (recorded per PNG).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..fsutil import check_writable_folder


def _pairs(values: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        left, sep, right = v.partition("=")
        if not sep or not left.strip() or not right.strip():
            raise UsageError(f"{option} {v!r}: expected LEFT=RIGHT")
        out.append((left.strip(), right.strip()))
    return out


def build_layout(
    boxes: tuple[str, ...] = (),
    masks: tuple[str, ...] = (),
    layout_image: str | None = None,
    colours: tuple[str, ...] = (),
    weights: tuple[str, ...] = (),
    pixels: bool = False,
    size: tuple[int, int] | None = None,
    overlap: str = "share",
    tolerance: float | None = None,
) -> Any:
    """A :class:`~cones2.sampler.Layout` from CLI-style options, or None when none is given."""
    from ..sampler.layout import Layout, parse_box

    weight_map: dict[str, tuple[float, float] | float] = {}
    for word, text in _pairs(weights, "--weight"):
        try:
            nums = [float(x) for x in text.split(",")]
        except ValueError:
            raise UsageError(f"--weight {word}={text}: use WORD=INSIDE[,OUTSIDE]") from None
        if len(nums) not in (1, 2):
            raise UsageError(f"--weight {word}={text}: use WORD=INSIDE[,OUTSIDE]")
        weight_map[word] = nums[0] if len(nums) == 1 else (nums[0], nums[1])
    parts = []
    if boxes:
        box_map = {}
        for word, text in _pairs(boxes, "--box"):
            if word in box_map:
                raise UsageError(f"--box given twice for {word!r}")
            box_map[word] = parse_box(text)
        parts.append(Layout.from_boxes(box_map, pixels=pixels, size=size, overlap=overlap))
    if masks:
        parts.append(Layout.from_masks(dict(_pairs(masks, "--mask")), overlap=overlap))
    if layout_image or colours:
        if not (layout_image and colours):
            raise UsageError("--layout-image and --colour go together (R,G,B=WORD[:WEIGHT] for each colour)")
        colour_map: dict[str, Any] = {}
        for colour, target in _pairs(colours, "--colour"):
            word, _, weight = target.partition(":")
            try:
                colour_map[colour] = (word, float(weight)) if weight else word
            except ValueError:
                raise UsageError(f"--colour {colour}={target}: use R,G,B=WORD[:WEIGHT] with a number as WEIGHT") from None
        # no tolerance: the layout follows the sampler's colour_match setting
        parts.append(Layout.from_colour_image(layout_image, colour_map, tolerance=tolerance))
    if not parts:
        if weight_map:
            raise UsageError("--weight needs a layout (--box, --mask or --layout-image)")
        return None
    layout = parts[0] if len(parts) == 1 else Layout.combine(parts, overlap=overlap)
    if weight_map:
        layout = layout.with_weights(weight_map)
    return layout


def _numbered(path: Path, index: int, count: int) -> Path:
    return path if count == 1 else path.with_name(f"{path.stem}-{index}{path.suffix}")


def generate_images(prompt: str, *, subjects: tuple[str, ...] = (), boxes: tuple[str, ...] = (), pixels: bool = False,
                 masks: tuple[str, ...] = (), layout_image: str | None = None, colours: tuple[str, ...] = (),
                 tolerance: float | None = None, weights: tuple[str, ...] = (), overlap: str = "share",
                 model: str | None = None, seed: int = 0, steps: int | None = None, guidance_scale: float | None = None,
                 guidance_weight: float | None = None, guidance_steps: int | None = None,
                 self_recurrence: bool | None = None, negative_prompt: str | None = None, height: int | None = None,
                 width: int | None = None, num_images: int = 1, scheduler: str | None = None, preset: str = "reference",
                 guidance_sigma: str | None = None, layout_resize: str | None = None, colour_match: str | None = None,
                 occurrences: str | None = None, device: str | None = None, dtype: str | None = None,
                 output: str = "cones2.png", attention_dir: str | None = None, progress: bool = True) -> dict[str, Any]:
    """The work behind ``cones2 generate``; returns the JSON-able record.

    ``preset`` (default ``reference``) gives every sampler setting; the settings given
    here (not None) override it. ``tolerance`` without ``colour_match`` means nearest-colour
    matching within it.
    """
    from .presets import resolve_settings

    if (steps is not None and steps < 1) or num_images < 1:
        raise UsageError("--steps and --num-images must be at least 1")
    if tolerance is not None and colour_match is None:
        colour_match = "nearest"
    settings = resolve_settings(
        preset, steps=steps, guidance_scale=guidance_scale, guidance_weight=guidance_weight,
        guidance_steps=guidance_steps, self_recurrence=self_recurrence, scheduler=scheduler,
        guidance_sigma=guidance_sigma, layout_resize=layout_resize, colour_match=colour_match,
        colour_tolerance=tolerance, occurrences=occurrences,
    )
    subject_map = dict(_pairs(subjects, "--subject"))
    if len(subject_map) != len(subjects):
        raise UsageError("--subject given twice for one word")

    import torch
    from PIL.PngImagePlugin import PngInfo

    from .. import __version__
    from ..base_model import model_info, resolve_model_path
    from ..demo_model import DEMO_NOTICE
    from ..sampler.attention_maps import save_attention_maps
    from ..sampler.pipeline import Cones2Pipeline, check_settings

    check_settings(height=height, width=width)
    output_path = Path(output)
    for folder_needed in (output_path.parent, Path(attention_dir) if attention_dir is not None else None):
        if folder_needed is not None:
            check_writable_folder(folder_needed)  # before minutes of sampling, not after
    info = model_info(model)
    _, folder = resolve_model_path(model, full=True)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        torch_device = torch.device(device)
    except RuntimeError:
        raise UsageError(f"--device {device!r}: not a torch device (cpu, cuda, cuda:1, mps)") from None
    if torch_device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device!r}: CUDA is not available here")
    dtype = dtype or ("float16" if device.startswith("cuda") else "float32")
    torch_dtype = getattr(torch, dtype)
    _quiet_loading()
    pipe = Cones2Pipeline.from_pretrained(str(folder), dtype=torch_dtype, safety_checker=None, requires_safety_checker=False)
    pipe.base_fingerprint = info.fingerprint
    try:
        pipe = pipe.to(device)
    except (RuntimeError, AssertionError) as exc:  # e.g. mps or a CUDA index that is not here
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(f"--device {device!r}: {first}") from None
    pipe.set_progress_bar_config(disable=not progress)
    size = pipe.unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    height = height or size * pipe.vae_scale_factor
    width = width or size * pipe.vae_scale_factor
    layout = build_layout(boxes, masks, layout_image, colours, weights, pixels, (height, width), overlap, tolerance)

    out = pipe(
        prompt, subject_map, layout, settings=settings, negative_prompt=negative_prompt, seed=seed,
        num_images_per_prompt=num_images, height=height, width=width, return_attention_maps=attention_dir is not None,
    )
    record: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": negative_prompt,
        "subjects": out.info["subjects"],
        "layout": out.info["layout"],
        "settings": {
            **settings.to_dict(),  # the preset and every setting it implied
            "overridden": sorted(settings.differences()),
            "guided_steps": out.info["guided_steps"], "scheduler_class": out.info["scheduler"],
            "height": height, "width": width, "num_images": num_images, "dtype": dtype, "device": device,
            "overlap": overlap,
        },
        "seed": seed,
        "base_model": {
            "source": info.source, "fingerprint": info.fingerprint, "is_demo": info.is_demo,
            "notice": DEMO_NOTICE if info.is_demo else None,
        },
        "cones2_version": __version__,
    }
    written = []
    try:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(out.images):
            meta = PngInfo()
            meta.add_text("prompt", prompt)
            meta.add_text("cones2", json.dumps({**record, "image_index": i, "image_seed": seed + i}, sort_keys=True, default=str))
            if info.is_demo:
                meta.add_text("cones2-demo-model", DEMO_NOTICE)
            path = _numbered(output_path, i, len(out.images))
            image.save(path, format="PNG", pnginfo=meta)  # always a PNG: the metadata is PNG text
            written.append(str(path))
        record["images"] = written
        if attention_dir is not None:
            maps = out.attention_maps or {}
            files = save_attention_maps(attention_dir, out.images, maps, layout=layout, stem=output_path.stem)
            preview = [p for p in files if p.name == "layout.png"]  # the layout, not an attention map
            record["layout_preview"] = str(preview[0]) if preview else None
            record["attention_maps"] = [str(p) for p in files if p not in preview]
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename or output_path}: {exc.strerror or exc}") from None
    return record


def _quiet_loading() -> None:
    """Loading bars of diffusers and transformers are not for CLI users (and not one line)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
