"""``cones2 generate`` (layout-guided multi-subject images) and ``cones2 layout preview``."""

from __future__ import annotations

import click

from ..errors import UsageError
from ..sampler.generate import build_layout
from ..sampler.presets import (
    COLOUR_MATCHES,
    GUIDANCE_SIGMAS,
    LAYOUT_RESIZES,
    OCCURRENCE_RULES,
    PRESET_NAMES,
    SCHEDULER_NAMES,
)
from ._output import emit, json_option


@click.command("generate")
@click.argument("prompt")
@click.option("--subject", "subjects", multiple=True, metavar="WORD=REF", help="Subject residual for WORD (or WORD#N): a residual file or a registry ref (name, name@3, name:tag). Repeatable.")
@click.option("--box", "boxes", multiple=True, metavar="WORD=x0,y0,x1,y1", help="Region of WORD, normalised to [0,1] (top-left origin). Repeatable.")
@click.option("--pixels", is_flag=True, help="--box values are pixels of the output image.")
@click.option("--mask", "masks", multiple=True, metavar="WORD=PATH", help="Binary mask image for WORD (white = inside). Repeatable.")
@click.option("--layout-image", type=click.Path(dir_okay=False), default=None, help="Colour-coded layout image.")
@click.option("--colour", "--color", "colours", multiple=True, metavar="R,G,B=WORD[:WEIGHT]", help="Colour of WORD in --layout-image. Repeatable.")
@click.option("--tolerance", type=float, default=None, help="Colour matching distance (RGB, default 60); implies --colour-match nearest.")
@click.option("--weight", "weights", multiple=True, metavar="WORD=IN[,OUT]", help="Inside (and outside) weight of WORD's region (default 2.5, -1e8).")
@click.option("--overlap", type=click.Choice(["share", "last", "error"]), default="share", show_default=True, help="What a pixel in several regions means.")
@click.option("--model", default=None, help="Base model folder or Hub id (default: configured, else the demo model).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the first image; image k uses seed + k.")
@click.option("--preset", type=click.Choice(PRESET_NAMES), default="reference", show_default=True,
              help="Sampler settings: reference (what the Cones-V2 code renders) or cones2 (its refinements). The options below override single settings.")
@click.option("--steps", type=int, default=None, help="Sampling steps (preset: 50).")
@click.option("--cfg", "guidance_scale", type=float, default=None, help="Classifier-free guidance scale (preset: 7.5).")
@click.option("--guidance-weight", type=float, default=None, help="Layout guidance weight eta (preset: 0.08).")
@click.option("--guidance-steps", type=int, default=None, help="Guided steps (default: all).")
@click.option("--self-recurrence/--no-self-recurrence", default=None, help="Self-recurrence on guided steps (preset: on).")
@click.option("--guidance-sigma", type=click.Choice(GUIDANCE_SIGMAS), default=None, help="Bias sigma: from a guidance-steps-long schedule (reference) or the current step (cones2).")
@click.option("--layout-resize", type=click.Choice(LAYOUT_RESIZES), default=None, help="Weight map resizing: bilinear (reference) or area (cones2).")
@click.option("--colour-match", "--color-match", "colour_match", type=click.Choice(COLOUR_MATCHES), default=None, help="Layout colours: exact (reference) or nearest within --tolerance (cones2).")
@click.option("--occurrences", type=click.Choice(OCCURRENCE_RULES), default=None, help="A word's layout weight on every occurrence (reference) or the named one (cones2).")
@click.option("--negative-prompt", default=None, help="What the image should not show.")
@click.option("--height", type=int, default=None, help="Image height in pixels (default: the model's size).")
@click.option("--width", type=int, default=None, help="Image width in pixels (default: the model's size).")
@click.option("--num-images", type=int, default=1, show_default=True, help="How many images to make (image k uses --seed + k).")
@click.option("--scheduler", type=click.Choice(SCHEDULER_NAMES), default=None, help="reference (LMS order 1 on linspace timesteps), default (the model's), or a family (preset decides).")
@click.option("--device", default=None, help="cpu, cuda, mps (default: cuda when available).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None, help="Default: float16 on GPU, float32 on CPU.")
@click.option("-o", "--output", default="cones2.png", show_default=True, type=click.Path(dir_okay=False), help="Output PNG (numbered when --num-images > 1).")
@click.option("--attention-maps", "attention_dir", type=click.Path(file_okay=False), default=None, help="Save per-subject attention heat maps and the layout preview here.")
@click.option("--save", default=None, type=click.Path(dir_okay=False), metavar="NAME.cones2.toml", help="Also write this command line's composition as a TOML file (render it again with `cones2 render`).")
@json_option
def generate(prompt: str, subjects: tuple[str, ...], boxes: tuple[str, ...], pixels: bool, masks: tuple[str, ...],
             layout_image: str | None, colours: tuple[str, ...], tolerance: float | None, weights: tuple[str, ...],
             overlap: str, model: str | None, seed: int, preset: str, steps: int | None, guidance_scale: float | None,
             guidance_weight: float | None, guidance_steps: int | None, self_recurrence: bool | None,
             guidance_sigma: str | None, layout_resize: str | None, colour_match: str | None, occurrences: str | None,
             negative_prompt: str | None, height: int | None, width: int | None, num_images: int, scheduler: str | None,
             device: str | None, dtype: str | None, output: str, attention_dir: str | None, save: str | None,
             as_json: bool) -> None:
    """Generate an image of PROMPT with subject residuals placed by a layout."""
    from ..composition.model import stem_of
    from ..sampler.generate import composition_from_options, layout_spec
    from ..sampler.generate import generate as run
    from ..sampler.presets import resolve_settings

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
    layout = layout_spec(boxes, masks, layout_image, colours, weights, pixels, overlap)
    comp = composition_from_options(
        prompt, subjects=subjects, layout=layout, settings=settings, model=model, seed=seed, num_images=num_images,
        negative_prompt=negative_prompt, height=height, width=width, dtype=dtype,
        name=stem_of(save) if save else "generate",
    )
    result = run(comp, output=output, device=device, attention_dir=attention_dir, save=save)

    def human() -> None:
        if result["base_model"]["is_demo"]:
            click.echo(f"Base model: {result['base_model']['notice']}")
        for key, sub in result["subjects"].items():
            what = f"{sub.get('name')}@{sub.get('version')}" if sub.get("source") == "registry" else sub.get("path", sub.get("source"))
            click.echo(f"subject {key!r}: {what} (sha256 {str(sub.get('sha256'))[:12]})")
        for path in result["images"]:
            click.echo(f"wrote {path}")
        if result.get("layout_preview"):
            click.echo(f"layout preview {result['layout_preview']}")
        for path in result.get("attention_maps", []):
            click.echo(f"attention map {path}")
        if result.get("saved"):
            click.echo(f"composition {result['saved']}")

    emit(result, as_json, human)


@click.group("layout")
def layout_group() -> None:
    """Layouts for layout-guided generation."""


@layout_group.command("preview")
@click.option("--box", "boxes", multiple=True, metavar="WORD=x0,y0,x1,y1", help="Region of WORD, normalised to [0,1] (top-left origin). Repeatable.")
@click.option("--pixels", is_flag=True, help="--box values are pixels of a --width x --height image.")
@click.option("--mask", "masks", multiple=True, metavar="WORD=PATH", help="Binary mask image for WORD (white = inside). Repeatable.")
@click.option("--layout-image", type=click.Path(dir_okay=False), default=None, help="Colour-coded layout image.")
@click.option("--colour", "--color", "colours", multiple=True, metavar="R,G,B=WORD[:WEIGHT]", help="Colour of WORD in --layout-image. Repeatable.")
@click.option("--tolerance", type=float, default=None, help="Colour matching distance (RGB, default 60).")
@click.option("--weight", "weights", multiple=True, metavar="WORD=IN[,OUT]", help="Inside (and outside) weight of WORD's region (default 2.5, -1e8).")
@click.option("--overlap", type=click.Choice(["share", "last", "error"]), default="share", show_default=True, help="What a pixel in several regions means.")
@click.option("--prompt", default=None, help="Check that every region's word occurs in this prompt.")
@click.option("--model", default=None, help="Tokenizer for --prompt (default: configured, else the demo model).")
@click.option("--width", type=int, default=512, show_default=True, help="Preview width in pixels.")
@click.option("--height", type=int, default=512, show_default=True, help="Preview height in pixels.")
@click.option("-o", "--output", default="layout.png", show_default=True, type=click.Path(dir_okay=False), help="Output PNG.")
@json_option
def preview(boxes: tuple[str, ...], pixels: bool, masks: tuple[str, ...], layout_image: str | None,
            colours: tuple[str, ...], tolerance: float | None, weights: tuple[str, ...], overlap: str,
            prompt: str | None, model: str | None, width: int, height: int, output: str, as_json: bool) -> None:
    """Draw a layout as a PNG: every region coloured and labelled."""
    from ..sampler.preview import save_layout_preview

    layout = build_layout(boxes, masks, layout_image, colours, weights, pixels, (height, width), overlap, tolerance)
    if layout is None:
        raise UsageError("no layout given (use --box, --mask or --layout-image with --colour)")
    positions = None
    if prompt is not None:
        from transformers import CLIPTokenizer

        from ..base_model import resolve_model_path

        _, folder = resolve_model_path(model)
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
        positions = layout.positions(tokenizer, prompt)
    path = save_layout_preview(layout, output, width=width, height=height)
    data = {"output": str(path), "width": width, "height": height, "regions": layout.describe(), "positions": positions}
    emit(data, as_json, lambda: click.echo(f"wrote {path} ({', '.join(layout.subjects)})"))


def register(group: click.Group) -> None:
    group.add_command(generate)
    group.add_command(layout_group)
