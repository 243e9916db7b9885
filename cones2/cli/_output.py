"""Output helpers shared by the command modules: JSON for scripts, rich text for people."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

JSON_META_KEY = "cones2.json"  # set by the global ``cones2 --json``; read by every command's --json


def _json_flag(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    return bool(value or ctx.meta.get(JSON_META_KEY))


json_option = click.option(
    "--json", "as_json", is_flag=True, callback=_json_flag,
    help="Print machine-readable JSON (also: cones2 --json COMMAND).",
)


def emit(data: Any, as_json: bool, human: Callable[[], None] | None = None) -> None:
    """Print ``data`` as JSON, or call ``human`` to print it for people."""
    if as_json or human is None:
        click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        human()


def console():  # noqa: ANN201 - rich is imported lazily
    from rich.console import Console

    return Console(highlight=False)
