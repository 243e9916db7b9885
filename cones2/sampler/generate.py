"""``cones2 generate``'s options as a :class:`~cones2.composition.Composition`, then resolve and render.

The CLI hands over subjects as ``WORD=REF`` strings and a layout as box/mask/colour
options; this module turns them into typed values (:func:`layout_spec`,
:func:`composition_from_options`) and :func:`generate` renders the composition with the
same code as ``cones2 render`` -- so ``generate --save NAME.cones2.toml`` writes a file
that renders the same images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UsageError


def _pairs(values: tuple[str, ...], option: str) -> list[tuple[str, str]]:
    out = []
    for v in values:
        left, sep, right = v.partition("=")
        if not sep or not left.strip() or not right.strip():
            raise UsageError(f"{option} {v!r}: expected LEFT=RIGHT")
        out.append((left.strip(), right.strip()))
    return out


def layout_spec(
    boxes: tuple[str, ...] = (),
    masks: tuple[str, ...] = (),
    layout_image: str | None = None,
    colours: tuple[str, ...] = (),
    weights: tuple[str, ...] = (),
    pixels: bool = False,
    overlap: str = "share",
) -> Any:
    """A :class:`~cones2.composition.LayoutSpec` from CLI-style options, or None when none is given."""
    from ..composition.model import LayoutSpec
    from .layout import parse_box

    weight_list = []
    for word, text in _pairs(weights, "--weight"):
        try:
            nums = [float(x) for x in text.split(",")]
        except ValueError:
            raise UsageError(f"--weight {word}={text}: use WORD=INSIDE[,OUTSIDE]") from None
        if len(nums) not in (1, 2):
            raise UsageError(f"--weight {word}={text}: use WORD=INSIDE[,OUTSIDE]")
        weight_list.append((word, nums[0], nums[1] if len(nums) == 2 else None))
    box_list: list[tuple[str, tuple[float, float, float, float]]] = []
    for word, text in _pairs(boxes, "--box"):
        if any(w == word for w, _ in box_list):
            raise UsageError(f"--box given twice for {word!r}")
        box_list.append((word, parse_box(text)))
    mask_list = [(word, str(Path(path).expanduser().absolute())) for word, path in _pairs(masks, "--mask")]
    colour_list = []
    if layout_image or colours:
        if not (layout_image and colours):
            raise UsageError("--layout-image and --colour go together (R,G,B=WORD[:WEIGHT] for each colour)")
        for colour, target in _pairs(colours, "--colour"):
            word, _, weight = target.partition(":")
            try:
                colour_list.append((colour, word, float(weight) if weight else None))
            except ValueError:
                raise UsageError(f"--colour {colour}={target}: use R,G,B=WORD[:WEIGHT] with a number as WEIGHT") from None
    if not (box_list or mask_list or layout_image):
        if weight_list:
            raise UsageError("--weight needs a layout (--box, --mask or --layout-image)")
        return None
    image = str(Path(layout_image).expanduser().absolute()) if layout_image else None
    return LayoutSpec(boxes=tuple(box_list), pixels=pixels, masks=tuple(mask_list), image=image,
                      colours=tuple(colour_list), weights=tuple(weight_list), overlap=overlap)


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
    from .layout import DEFAULT_COLOUR_TOLERANCE
    from .presets import PRESETS

    spec = layout_spec(boxes, masks, layout_image, colours, weights, pixels, overlap)
    if spec is None:
        return None
    height, width = size or (512, 512)
    return spec.build(height, width, PRESETS["cones2"], DEFAULT_COLOUR_TOLERANCE if tolerance is None else tolerance)


def composition_from_options(
    prompt: str,
    *,
    subjects: tuple[str, ...] = (),
    layout: Any = None,
    settings: Any = None,
    model: str | None = None,
    seed: int = 0,
    num_images: int = 1,
    negative_prompt: str | None = None,
    height: int | None = None,
    width: int | None = None,
    dtype: str | None = None,
    name: str = "generate",
) -> Any:
    """The composition of a ``generate`` command line: images ``seed .. seed + num_images - 1``."""
    from ..composition.model import Composition, SubjectSpec
    from .presets import PRESETS

    if num_images < 1:
        raise UsageError("--steps and --num-images must be at least 1")
    pairs = _pairs(subjects, "--subject")
    if len({w for w, _ in pairs}) != len(pairs):
        raise UsageError("--subject given twice for one word")
    specs = []
    for word, ref in pairs:
        path = Path(ref).expanduser()
        specs.append(SubjectSpec(word, file=str(path.resolve())) if path.is_file() else SubjectSpec(word, ref=ref))
    return Composition(
        prompt=prompt, subjects=tuple(specs), layout=layout, sampler=settings or PRESETS["reference"],
        negative_prompt=negative_prompt, base_model=model, seeds=tuple(range(seed, seed + num_images)),
        height=height, width=width, dtype=dtype, name=name,
    )


def numbered(path: Path, index: int, count: int) -> Path:
    return path if count == 1 else path.with_name(f"{path.stem}-{index}{path.suffix}")


def generate(composition: Any, *, output: str = "cones2.png", device: str | None = None,
             attention_dir: str | None = None, save: str | None = None,
             on_image: Any = None) -> dict[str, Any]:
    """Resolve and render ``composition`` to ``output`` (numbered per seed); returns the JSON-able record."""
    from ..composition import RenderJob, RenderOptions, render, resolve
    from ..fsutil import check_writable_folder

    if save is not None:
        check_writable_folder(Path(save).parent)
    output_path = Path(output)
    count = len(composition.seeds)
    resolution = resolve(composition)
    job = RenderJob(composition, resolution, tuple(numbered(output_path, i, count) for i in range(count)))
    options = RenderOptions(output_dir=output_path.parent, device=device, contact_sheet=False,
                            attention_dir=Path(attention_dir) if attention_dir is not None else None, on_image=on_image)
    result = render([job], options)
    record = dict(result.images[0].info)
    record.pop("seed", None)
    record.update(seed=composition.seeds[0], images=[str(i.path) for i in result.images],
                  composition=composition.to_dict(), resolved=resolution.to_dict())
    record["settings"]["num_images"] = count
    if attention_dir is not None:
        preview = [p for p in result.attention_maps if Path(p).name == "layout.png"]  # the layout, not an attention map
        record["layout_preview"] = str(preview[0]) if preview else None
        record["attention_maps"] = [str(p) for p in result.attention_maps if p not in preview]
    if save is not None:
        record["saved"] = str(composition.save(save))
    return record
