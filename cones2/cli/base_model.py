"""``cones2 demo-model`` and ``cones2 base-model``: build and inspect base models."""

from __future__ import annotations

import click

from ._output import emit, json_option


@click.command("demo-model")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--seed", type=int, default=0, show_default=True, help="Weights are a function of the seed.")
@click.option("--force", is_flag=True, help="Replace a non-empty DIRECTORY.")
@click.option("--world", is_flag=True,
              help="Write the trained world model (32 px shape scenes) instead of the random SD-2-style one.")
@json_option
def demo_model(directory: str, seed: int, force: bool, world: bool, as_json: bool) -> None:
    """Write a demo base model to DIRECTORY (no download): tiny and random, or --world."""
    from ..base_model import model_info

    if world:
        from ..world.pretrained import WORLD_NOTICE, read_metadata, write_world_model

        path = write_world_model(directory, overwrite=force)
        notice, extra = WORLD_NOTICE, {"step": read_metadata()["info"].get("step")}
    else:
        from ..demo_model import DEMO_NOTICE, build_demo_model

        path = build_demo_model(directory, seed=seed, overwrite=force)
        notice, extra = DEMO_NOTICE, {"seed": seed}
    info = model_info(str(path))
    emit(
        {"path": str(path), **extra, "fingerprint": info.fingerprint, "notice": notice},
        as_json,
        lambda: click.echo(f"Wrote the {notice} to {path}\nfingerprint {info.fingerprint}"),
    )


@click.group("base-model")
def base_model() -> None:
    """Inspect base models (fingerprint, hidden size, vocabulary)."""


@base_model.command("info")
@click.argument("model", required=False)
@json_option
def info(model: str | None, as_json: bool) -> None:
    """Show a base model's fingerprint. MODEL: folder or Hub id (default: configured, else demo)."""
    from ..base_model import model_info
    from ..demo_model import DEMO_NOTICE

    data = model_info(model)

    def human() -> None:
        click.echo(f"model        {data.source}" + (f"  ({DEMO_NOTICE})" if data.is_demo else ""))
        click.echo(f"path         {data.path}")
        click.echo(f"fingerprint  {data.fingerprint}")
        click.echo(f"hidden size  {data.hidden_size}")
        click.echo(f"vocabulary   {data.vocab_size}")
        click.echo(f"max length   {data.max_length}")

    emit(data.to_dict(), as_json, human)


def register(group: click.Group) -> None:
    group.add_command(demo_model)
    group.add_command(base_model)
