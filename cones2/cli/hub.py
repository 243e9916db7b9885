"""Hub commands: ``remote add/list/rm``, ``pull``, ``push`` (and ``search --remote``).

Everything heavy (huggingface_hub, the catalogue) is imported inside the commands.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ..errors import RemoteError, UsageError
from ._output import console, emit, json_option


@click.group("remote")
def remote() -> None:
    """Named Hub namespaces (team libraries) to push to and pull from."""


@remote.command("add")
@click.argument("name")
@click.argument("namespace")
@click.option("--endpoint", default=None, help="Hub endpoint URL (default: $HF_ENDPOINT, else huggingface.co).")
@click.option("--default", "make_default", is_flag=True, help="Make this the default remote.")
@click.option("--replace", is_flag=True, help="Replace an existing remote of that name.")
@json_option
def remote_add(name: str, namespace: str, endpoint: str | None, make_default: bool, replace: bool, as_json: bool) -> None:
    """Add remote NAME for the Hub user or organisation NAMESPACE (tokens come from HF_TOKEN or `hf auth login`)."""
    from ..registry.hub import add_remote

    r = add_remote(name, namespace, endpoint, default=make_default, replace=replace)
    emit(r.to_dict(), as_json, lambda: click.echo(f"Added remote {r.name} -> {r.namespace} on {r.url}{' (default)' if r.default else ''}"))


@remote.command("list")
@json_option
def remote_list(as_json: bool) -> None:
    """List the configured remotes."""
    from ..registry.hub import list_remotes

    remotes = list_remotes()

    def human() -> None:
        if not remotes:
            click.echo("No remotes. Add one with: cones2 remote add NAME NAMESPACE")
        for r in remotes:
            click.echo(f"{'*' if r.default else ' '} {r.name}  {r.namespace}  {r.url}")

    emit([r.to_dict() for r in remotes], as_json, human)


@remote.command("rm")
@click.argument("name")
@json_option
def remote_rm(name: str, as_json: bool) -> None:
    """Remove remote NAME (nothing on the Hub or in the catalogue changes)."""
    from ..registry.hub import remove_remote

    r = remove_remote(name)
    emit({**r.to_dict(), "removed": True}, as_json, lambda: click.echo(f"Removed remote {r.name}"))


def _quiet_hub() -> None:
    """huggingface_hub's per-file bars and 'no files modified' warnings are not for CLI users."""
    import logging

    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)


@click.command("pull")
@click.argument("ref", required=False)
@click.option("--all", "all_ns", metavar="NAMESPACE", default=None, is_flag=False, flag_value="",
              help="Mirror every subject of a library (default namespace: the remote's).")
@click.option("--remote", "remote_name", default=None, help="Remote to pull from (default: the default remote).")
@click.option("--as", "local_name", default=None, help="Catalogue name to register it under (default: the repo's name).")
@click.option("--workers", type=click.IntRange(1, 64), default=8, show_default=True, help="Parallel downloads for --all.")
@json_option
def pull(ref: str | None, all_ns: str | None, remote_name: str | None, local_name: str | None, workers: int, as_json: bool) -> None:
    """Pull REF (dog-max, team/dog-max@3, dog-max:stable) from the Hub into the catalogue.

    The residual's sha256 is checked against the remote manifest, and the manifest's
    base-model fingerprint against the local base model, before anything is stored.
    """
    from ..registry import hub

    _quiet_hub()
    if all_ns is not None:
        if ref is not None or local_name:
            raise UsageError("pull --all NAMESPACE takes no REF and no --as")
        _pull_all(all_ns or None, remote_name, workers, as_json)
        return
    if not ref:
        raise UsageError("pull needs a REF (e.g. dog-max, team/dog-max@3, dog-max:stable) or --all NAMESPACE")
    res = hub.pull(ref, remote=remote_name, local_name=local_name)

    def human() -> None:
        verb = "Pulled" if res.status == "pulled" else "Already present:"
        tag = f"  [tag {res.tag}]" if res.tag else ""
        click.echo(f"{verb} {res.ref}  sha256:{res.sha256[:12]}  from {res.repo}@{(res.commit or '')[:12]}{tag}")

    emit(res.to_dict(), as_json, human)


def _pull_all(namespace: str | None, remote_name: str | None, workers: int, as_json: bool) -> None:
    from ..registry import hub

    if as_json or not sys.stderr.isatty():
        results = hub.pull_all(namespace, remote=remote_name, workers=workers)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      console=console().__class__(stderr=True), transient=True) as bar:
            task = bar.add_task("pulling", total=None)

            def progress(done: int, total: int, label: str) -> None:
                bar.update(task, completed=done, total=total, description=label or "pulling")

            results = hub.pull_all(namespace, remote=remote_name, workers=workers, progress=progress)
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1

    def human() -> None:
        for r in results:  # part of the report (stdout); the one error line comes last, on stderr
            if r.status in ("failed", "skipped"):
                click.echo(f"{r.status}: {r.repo}@{r.version}: {r.reason}")
        parts = [f"{counts.get(k, 0)} {k}" for k in ("pulled", "present", "skipped", "failed")]
        click.echo(f"{len(results)} version(s): " + ", ".join(parts))

    emit({"results": [r.to_dict() for r in results], "counts": counts}, as_json, human)
    if counts.get("failed"):
        first = next(r for r in results if r.status == "failed")
        click.echo(f"Error: {counts['failed']} of {len(results)} version(s) failed to pull "
                   f"(first: {first.repo}@{first.version}: {first.reason})", err=True)
        sys.exit(RemoteError.exit_code)


@click.command("push")
@click.argument("ref")
@click.option("--remote", "remote_name", default=None, help="Remote to push to (default: the default remote).")
@click.option("--tag", "tags", multiple=True, metavar="TAG",
              help="Also point Hub tag TAG (e.g. stable) at the version REF names; such tags move (repeatable).")
@click.option("--private", is_flag=True, default=None, help="Create the Hub repo as private (new repos only).")
@json_option
def push(ref: str, remote_name: str | None, tags: tuple[str, ...], private: bool | None, as_json: bool) -> None:
    """Upload the versions of REF the remote lacks (a bare name: every version).

    Each version is one commit tagged vN; an existing vN with other content is refused.
    """
    from ..registry import hub

    _quiet_hub()
    results = hub.push(ref, remote=remote_name, tags=tags, private=private or None)

    def human() -> None:
        for r in results:
            verb = "Pushed" if r.status == "pushed" else "Already on remote:"
            click.echo(f"{verb} {r.name}@{r.version} -> {r.repo} (tag v{r.version}, commit {r.commit[:12]})")
        for t in tags:
            click.echo(f"Tagged {results[-1].repo}:{t}")

    emit([r.to_dict() for r in results], as_json, human)


def search_remote_command(remote_opt: str, text: str | None, limit: int, as_json: bool) -> None:
    """``cones2 search --remote [NAME] TEXT``: delegated to from the registry's search command.

    ``--remote`` takes an optional value: with TEXT it is the remote name; without TEXT,
    a configured remote's name lists that library, anything else is the search text
    on the default remote.
    """
    from ..registry.hub import list_remotes, search_remote

    remote_name: str | None = remote_opt or None
    if text is None and remote_name is not None and remote_name not in {r.name for r in list_remotes()}:
        remote_name, text = None, remote_name
    found = search_remote(text, remote=remote_name, limit=limit)

    def human() -> None:
        if not found:
            click.echo("No subjects on the remote.")
        for s in found:
            ok = {True: "", False: "  (other base model)", None: ""}[s.compatible]
            extra = [t for t in s.tags if not t.startswith("cones2-base:")]
            click.echo(f"{s.repo}  [{', '.join(extra)}]{ok}")

    emit([s.to_dict() for s in found], as_json, human)


def register(group: Any) -> None:
    for command in (remote, pull, push):
        group.add_command(command)
