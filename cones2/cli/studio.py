"""``cones2 studio``: the local web app (see :mod:`cones2.studio`)."""

from __future__ import annotations

import click


@click.command("studio")
@click.option("--port", type=int, default=7860, show_default=True, help="Port (0: a free one).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0 opens it to the network).")
@click.option("--dir", "folder", type=click.Path(file_okay=False), default=".", show_default=True, help="Where Save writes composition files.")
@click.option("--model", default=None, help="Base model folder or Hub id (default: configured, else the demo model).")
@click.option("--device", default=None, help="cpu, cuda, mps (default: cuda when available).")
@click.option("--verbose", is_flag=True, help="Log every request.")
def studio(port: int, host: str, folder: str, model: str | None, device: str | None, verbose: bool) -> None:
    """Browse the library, draw a layout and render, in a web page."""
    from ..errors import UsageError
    from ..fsutil import check_writable_folder
    from ..studio import make_server

    if not 0 <= port <= 65535:
        raise UsageError(f"--port {port}: use 0 (a free port) to 65535")
    check_writable_folder(folder)
    server, app = make_server(host, port, folder=folder, model=model, device=device, verbose=verbose)
    click.echo(f"cones2 studio on {server.url} (Ctrl+C stops it)", err=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        app.close()


def register(group: click.Group) -> None:
    group.add_command(studio)
