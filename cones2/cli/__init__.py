"""The ``cones2`` command: a thin shell over the Python API.

Each command group lives in its own module and registers itself on :data:`main`.
Modules import heavy libraries (torch, diffusers, transformers) inside the commands
that need them, so catalogue commands start fast. Every :class:`~cones2.errors.Cones2Error`
becomes one line on stderr and the error's exit code.
"""

from __future__ import annotations

import inspect
import os
import sys

import click

from .. import __version__
from ..errors import Cones2Error
from ._output import JSON_META_KEY


class Cones2Group(click.Group):
    """Turns cones2's own errors into one line and an exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except Cones2Error as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


@click.group(cls=Cones2Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cones2", help="Show the version and exit.")
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    default=None,
    help="cones2 home folder (catalogue, blobs, caches). Default: $CONES2_HOME or the user data folder.",
)
@click.option("--json", "as_json", is_flag=True, help="Every command prints machine-readable JSON.")
def main(home: str | None, as_json: bool) -> None:
    """cones2: compose personalised subjects (Cones 2 residuals) into Stable Diffusion images."""
    if home:
        os.environ["CONES2_HOME"] = os.path.abspath(home)
    click.get_current_context().meta[JSON_META_KEY] = as_json
    # Library chatter (missing optional backends, deprecations) is not for CLI users;
    # these are read when transformers/diffusers are first imported, later, lazily.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")


def summary(help_text: str | None) -> str:
    """A command's one-line summary: the first paragraph of its help, whole (click cuts at 45 characters)."""
    first = inspect.cleandoc(help_text or "").split("\n\n", 1)[0]
    return " ".join(first.split())


def whole_summaries(command: click.Command) -> None:
    """Give ``command`` and everything under it a whole ``short_help`` (the list of commands shows it uncut)."""
    if not command.short_help and command.help:
        command.short_help = summary(command.help)
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            whole_summaries(sub)


def _register() -> None:
    from . import base_model, compose, generate, hub, quickstart, registry, studio, train

    for module in (base_model, quickstart, registry, generate, compose, hub, train, studio):
        module.register(main)
    whole_summaries(main)


_register()
