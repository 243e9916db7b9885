"""``cones2 train``: learn a subject from a few images and register its residual."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

import click

from ._output import console, emit, json_option


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Any]:
    """An ``on_step`` callback that drives a progress bar with the loss (or nothing)."""
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("training"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                  TimeRemainingColumn(), console=console().__class__(stderr=True), transient=True) as bar:
        task = bar.add_task("train", total=total, loss="-")

        def on_step(step: Any) -> None:
            bar.update(task, completed=step.step, loss=f"{step.loss:.4f}")

        yield on_step


@click.command("train")
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--word", required=True, help="The subject's class word, e.g. dog (the training prompt is this word alone).")
@click.option("--name", "name", required=True, help="Subject name to register the residual under (a new version).")
@click.option("--base", default=None, help="Base model folder or Hub id (default: configured, else the demo model).")
@click.option("--steps", type=int, default=4000, show_default=True, help="Optimisation steps (the reference: 4,000).")
@click.option("--lr", type=float, default=5e-6, show_default=True, help="Learning rate (constant).")
@click.option("--resolution", type=int, default=768, show_default=True,
              help="Training size in pixels: the shorter side is resized to it, then the centre square is cropped.")
@click.option("--batch-size", type=int, default=1, show_default=True, help="Images per step; the preservation loss is per sample, so any size is correct.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of data order, noise and timesteps (a run is reproducible from it).")
@click.option("--flip", is_flag=True, help="Mirror training latents at random (flip augmentation).")
@click.option("--gradient-checkpointing", is_flag=True, help="Trade compute for memory.")
@click.option("--mixed-precision", type=click.Choice(["no", "fp16", "bf16"]), default="no", show_default=True, help="Autocast precision for the frozen UNet/VAE passes (GPU).")
@click.option("--checkpoint-every", type=int, default=0, show_default=True, help="Write checkpoint-N every N steps (0: only on Ctrl-C).")
@click.option("--checkpoints-limit", type=int, default=2, show_default=True, help="checkpoint-N folders kept.")
@click.option("--resume", default=None, help="'latest' or a checkpoint (checkpoint-N or its folder).")
@click.option("--validate-every", type=int, default=0, show_default=True, help="Render a validation image every N steps (0: never).")
@click.option("--validation-prompt", default=None, help="Default 'a photo of a WORD'.")
@click.option("--validation-steps", type=int, default=25, show_default=True, help="Sampling steps of a validation image.")
@click.option("--templates", type=click.Choice(["reference", "extended"]), default="reference", show_default=True,
              help="Prompt-template set the residual is averaged over (reference: the paper's 27).")
@click.option("--output-dir", type=click.Path(file_okay=False), default=None,
              help="Checkpoints and validation images (default: $CONES2_HOME/training/NAME).")
@click.option("--keep-encoder", type=click.Path(file_okay=False), default=None, help="Also save the tuned text encoder here.")
@click.option("--description", default=None, help="Description of the subject in the catalogue.")
@click.option("--device", type=click.Choice(["cpu", "auto"]), default="auto", show_default=True,
              help="auto: accelerate's choice (GPU when present).")
@json_option
def train(images: tuple[str, ...], word: str, name: str, base: str | None, steps: int, lr: float, resolution: int,
          batch_size: int, seed: int, flip: bool, gradient_checkpointing: bool, mixed_precision: str,
          checkpoint_every: int, checkpoints_limit: int, resume: str | None, validate_every: int,
          validation_prompt: str | None, validation_steps: int, templates: str, output_dir: str | None, keep_encoder: str | None,
          description: str | None, device: str, as_json: bool) -> None:
    """Learn a subject from IMAGES (files or folders) and register its residual as a new version of NAME."""
    from ..train import TrainConfig, train_subject

    config = TrainConfig(steps=steps, lr=lr, resolution=resolution, batch_size=batch_size, seed=seed, flip=flip,
                         gradient_checkpointing=gradient_checkpointing, mixed_precision=mixed_precision,
                         checkpoint_every=checkpoint_every, checkpoints_total_limit=checkpoints_limit,
                         validate_every=validate_every, validation_prompt=validation_prompt,
                         validation_steps=validation_steps, templates=templates)
    with _progress(not as_json and sys.stderr.isatty(), steps) as on_step:
        result = train_subject(images, word, name, base=base, config=config, output_dir=output_dir, resume=resume,
                               keep_encoder=keep_encoder, description=description,
                               device="cpu" if device == "cpu" else None, on_step=on_step)

    def human() -> None:
        loss = result.metadata.get("loss", {})
        click.echo(f"Registered {result.ref}  sha256:{result.sha256[:12]}  word {result.word!r}  "
                   f"{result.steps} steps, loss {loss.get('first', float('nan')):.4f} -> {loss.get('last', float('nan')):.4f}")
        for path in result.validation_images:
            click.echo(f"validation image {path}")
        if result.encoder_dir:
            click.echo(f"tuned text encoder saved to {result.encoder_dir}")

    emit(result.to_dict(), as_json, human)


def register(group: click.Group) -> None:
    group.add_command(train)
