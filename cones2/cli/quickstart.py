"""``cones2 quickstart``: the main job on embedded defaults (demo model, offline)."""

from __future__ import annotations

from dataclasses import asdict

import click

from ._output import emit, json_option


@click.command("quickstart")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="cones2-quickstart", show_default=True, help="Where residuals and images go.")
@click.option("--model", default=None, help="Base model folder or Hub id (default: configured, else the demo model).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the stand-in residuals and of the image.")
@click.option("--steps", type=int, default=20, show_default=True, help="Sampling steps of the rendered image.")
@click.option("--no-render", is_flag=True, help="Stop after composing the embeddings.")
@json_option
def quickstart(out_dir: str, model: str | None, seed: int, steps: int, no_render: bool, as_json: bool) -> None:
    """Make two demo subjects, register them, compose them and render them with a layout."""
    from ..demo_model import DEMO_NOTICE
    from ..quickstart import DEMO_BOXES, run_quickstart

    result = run_quickstart(out_dir, model=model, seed=seed, steps=steps, render=not no_render, progress=not as_json)

    def human() -> None:
        if result.extra.get("is_demo"):
            click.echo(f"Base model: {DEMO_NOTICE}")
        else:
            click.echo(f"Base model: {result.model}")
        click.echo(f"fingerprint {result.fingerprint}")
        for word, path in result.residual_files.items():
            click.echo(f"residual {word!r}: {path} ({result.residual_sizes[word]} bytes)")
        click.echo(f"prompt: {result.prompt!r}")
        for word, pos in result.changed_positions.items():
            click.echo(f"  {word!r} at token {pos}: embedding moved by {result.change_norms[word]:.4f}")
        click.echo(f"  every other token unchanged (max |difference| {result.unchanged_max_abs:.1e})")
        for word, ref in result.registered.items():
            click.echo(f"registered {word!r} as {ref}")
        if result.render:
            for path in result.render["images"]:
                click.echo(f"rendered {path}: subjects placed by boxes {', '.join(DEMO_BOXES)}")
            if result.render.get("layout_preview"):
                click.echo(f"  layout preview {result.render['layout_preview']}")
            for path in result.render.get("attention_maps", []):
                click.echo(f"  attention map {path}")

    emit(asdict(result), as_json, human)


def register(group: click.Group) -> None:
    group.add_command(quickstart)
