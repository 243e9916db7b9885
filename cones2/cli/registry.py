"""Catalogue commands: add, list, show, search, tag, untag, rm, gc, doctor, verify, export.

Everything here touches only the catalogue, so nothing imports torch, diffusers or
transformers (except ``add`` of a legacy ``.pt``, which needs the base tokenizer).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import IntegrityError, RegistryError, ResidualNotFoundError, UsageError
from ._output import emit, json_option


def _catalogue() -> Any:
    from ..registry import open_catalogue

    return open_catalogue()


def _parse_meta(items: tuple[str, ...]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--meta expects KEY=VALUE, got {item!r}")
        try:
            parsed = json.loads(value)
            # NaN and Infinity (and 1e999) are not JSON: such a value stays the text it was
            finite = not isinstance(parsed, float) or math.isfinite(parsed)
            meta[key.strip()] = parsed if (isinstance(parsed, (int, float, bool)) or parsed is None) and finite else value
        except ValueError:
            meta[key.strip()] = value
    return meta


def _version_line(rec: Any) -> str:
    tags = f"  [{', '.join(rec.tags)}]" if rec.tags else ""
    return f"{rec.ref}  sha256:{rec.sha256[:12]}  {rec.dtype} {'x'.join(map(str, rec.shape))}  word {rec.word!r}{tags}"


def _checked_before_opening(file: str, name: str, version: int | None) -> str | bytes:
    """The name and the file's own form are checked before the catalogue opens (a fresh home
    would be created and migrated first); a residual file comes back as its bytes, read once."""
    from ..registry.names import validate_name, validate_pushable_name
    from ..registry.refs import check_version

    validate_name(name)
    validate_pushable_name(name)
    check_version(version)
    if Path(file).suffix.lower() in (".pt", ".pth", ".bin"):
        from ..ptscreen import screen_legacy_pt
        if not Path(file).is_file():
            raise ResidualNotFoundError(f"{file}: no such file")
        screen_legacy_pt(file)
        return file
    from ..residual_file import parse_residual, read_residual_bytes

    data = read_residual_bytes(file)
    parse_residual(data, file)
    return data


@click.command("add")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--name", "name", required=True, help="Subject name: lowercase, optionally namespace/name.")
@click.option("--word", default=None, help="The subject's class word (required for a legacy .pt).")
@click.option("--base", default=None, help="Base model folder or Hub id it belongs to (default: configured, else demo).")
@click.option("--description", default=None, help="What the subject is.")
@click.option("--meta", multiple=True, metavar="KEY=VALUE", help="Extra metadata (repeatable).")
@click.option("--version", "version", type=int, default=None, help="Version number to create (default: next).")
@json_option
def add(file: str, name: str, word: str | None, base: str | None, description: str | None, meta: tuple[str, ...], version: int | None, as_json: bool) -> None:
    """Add a residual FILE (cones2 residual or legacy .pt) as the next version of NAME."""
    metadata = _parse_meta(meta)
    residual = _checked_before_opening(file, name, version)
    with _catalogue() as cat:
        rec = cat.add(residual, name, word=word, base=base, description=description, metadata=metadata, version=version,
                      source=file)
        created, ignored = cat.last_created, list(cat.last_ignored)
    data = {**rec.to_dict(), "created": created, "ignored": ignored}
    note = "  (--meta ignored: this content is already stored and versions are immutable)" if "meta" in ignored else ""
    emit(data, as_json, lambda: click.echo(("Added " if created else "Already stored: ") + _version_line(rec) + note))


def _summary_lines(subjects: list[Any]) -> None:
    if not subjects:
        click.echo("No subjects.")
        return
    width = max(len(s.name) for s in subjects)
    lines = []
    for s in subjects:
        latest = f"@{s.latest}" if s.latest is not None else "(no versions)"
        tags = " ".join(f"{t}->{v}" for t, v in s.tags.items())
        desc = f"  {s.description}" if s.description else ""
        lines.append(f"{s.name:<{width}}  {latest:<6} {s.versions:>3} version(s)  word {s.word!r}  {tags}{desc}".rstrip())
    click.echo("\n".join(lines))  # one write: 10,000 subjects print in milliseconds


@click.command("list")
@click.argument("prefix", required=False)
@json_option
def list_(prefix: str | None, as_json: bool) -> None:
    """List subjects (optionally those whose name starts with PREFIX)."""
    with _catalogue() as cat:
        subjects = cat.list_subjects(prefix)
    if as_json:
        emit([s.to_dict() for s in subjects], True)
    else:
        _summary_lines(subjects)


@click.command("show")
@click.argument("ref")
@json_option
def show(ref: str, as_json: bool) -> None:
    """Show a version (REF: name, name@3, name:tag, name@sha256:<prefix>) and its subject."""
    with _catalogue() as cat:
        data = cat.show(ref)

    def human() -> None:
        v = data["version"]
        click.echo(f"{data['ref']}  ({data['subject']['description'] or 'no description'})")
        click.echo(f"  sha256       {v['sha256']}")
        click.echo(f"  size         {v['size']} bytes, {v['dtype']} {'x'.join(map(str, v['shape']))}")
        click.echo(f"  word         {v['word']!r} tokens {v['token_ids']}")
        models = ", ".join(data["base_models"]) or v["base_model"] or "unknown"
        click.echo(f"  base model   {v['base_fingerprint'][:12]} ({models})")
        prov = v["provenance"]
        click.echo("  provenance   " + ("local" if prov["kind"] == "local" else f"{prov.get('remote')}:{prov.get('repo')}@{prov.get('commit')}"))
        click.echo(f"  created      {v['created_at']}")
        click.echo(f"  metadata     {json.dumps(v['metadata'], sort_keys=True)}")
        click.echo("  versions     " + ", ".join(str(x["version"]) for x in data["versions"]))
        click.echo("  tags         " + (", ".join(f"{t}->{n}" for t, n in data["tags"].items()) or "none"))
        for ev in data["tag_history"]:
            click.echo(f"    {ev['at']}  {ev['tag']} {ev['action']} {'@' + str(ev['version']) if ev['version'] else ''}")

    emit(data, as_json, human)


@click.command("search")
@click.argument("text", required=False)
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True, help="Show at most this many subjects.")
@click.option("--remote", "remote", default=None, is_flag=False, flag_value="", metavar="[NAME]",
              help="Search a Hub library instead (NAME, default: the default remote).")
@json_option
def search(text: str | None, limit: int, remote: str | None, as_json: bool) -> None:
    """Find subjects whose name, word, description or metadata contain TEXT."""
    if remote is not None:  # Hub library listing: cones2/cli/hub.py
        from .hub import search_remote_command

        return search_remote_command(remote, text, limit, as_json)
    if text is None:
        raise UsageError("search needs TEXT")
    with _catalogue() as cat:
        found = cat.search(text, limit=limit)
    emit([dict(s.to_dict(), source="local") for s in found], as_json, lambda: _summary_lines(found))


@click.command("tag")
@click.argument("ref")
@click.argument("tag")
@json_option
def tag(ref: str, tag: str, as_json: bool) -> None:
    """Point TAG at the version REF names (moves it if it exists; history is kept)."""
    with _catalogue() as cat:
        data = cat.tag(ref, tag)

    def human() -> None:
        if not data["changed"]:
            click.echo(f"{data['name']}:{tag} already points to @{data['version']}")
        elif data["previous"] is None:
            click.echo(f"Tagged {data['name']}@{data['version']} as {tag}")
        else:
            click.echo(f"Moved {data['name']}:{tag} from @{data['previous']} to @{data['version']}")

    emit(data, as_json, human)


@click.command("untag")
@click.argument("name")
@click.argument("tag")
@json_option
def untag(name: str, tag: str, as_json: bool) -> None:
    """Remove TAG from subject NAME (history is kept)."""
    with _catalogue() as cat:
        data = cat.untag(name, tag)
    emit(data, as_json, lambda: click.echo(f"Removed tag {name}:{tag} (was @{data['version']})"))


@click.command("rm")
@click.argument("ref")
@json_option
def rm(ref: str, as_json: bool) -> None:
    """Remove a version (name@3, name:tag) or a whole subject (bare name). Blobs stay until gc."""
    with _catalogue() as cat:
        data = cat.remove(ref)

    def human() -> None:
        if data["removed"] == "subject":
            click.echo(f"Removed subject {data['name']} ({len(data['versions'])} version(s)); run `cones2 gc` to free space")
        else:
            click.echo(f"Removed {data['name']}@{data['version']}; run `cones2 gc` to free space")

    emit(data, as_json, human)


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="Only report what would be deleted.")
@click.option("--force", is_flag=True, help="Delete even when the catalogue has no versions at all (it looks emptied).")
@json_option
def gc(dry_run: bool, force: bool, as_json: bool) -> None:
    """Delete blobs that no version points to."""
    with _catalogue() as cat:
        data = cat.gc(dry_run=dry_run, force=force)
    verb = "Would delete" if data["dry_run"] else "Deleted"
    emit(data, as_json, lambda: click.echo(f"{verb} {len(data['removed'])} blob(s), {data['bytes']} bytes"))
    if data.get("refused"):
        raise RegistryError(f"gc refused: {data['refused']}")


@click.command("doctor")
@json_option
def doctor(as_json: bool) -> None:
    """Check the catalogue; rebuild a damaged one from its backups and the blobs' own metadata."""
    from ..registry.repair import doctor as run_doctor

    report = run_doctor()
    data = report.to_dict()

    def human() -> None:
        if report.healthy:
            click.echo("The catalogue is healthy: nothing to repair.")
            return
        for path in report.moved_aside:
            click.echo(f"Moved the damaged file aside: {path}")
        click.echo(f"Restored {report.restored_from}" if report.restored_from else "No usable backup: started a new catalogue")
        for item in report.recovered:
            click.echo(f"Recovered {item['ref']}  sha256:{item['sha256'][:12]}")
        for item in report.skipped:
            click.echo(f"Skipped sha256:{item['sha256'][:12]}: {item['reason']}")
        click.echo(f"{len(report.recovered)} blob(s) recovered, {len(report.skipped)} skipped; rename with `cones2 export` + `cones2 add`")

    emit(data, as_json, human)


@click.command("verify")
@json_option
def verify(as_json: bool) -> None:
    """Rehash every blob; exit non-zero if any is missing or corrupt."""
    with _catalogue() as cat:
        data = cat.verify()

    def human() -> None:
        for kind in ("missing", "corrupt"):
            for entry in data[kind]:
                click.echo(f"{kind.upper()} sha256:{entry['sha256'][:12]}  {', '.join(entry['refs']) or '(unreferenced)'}")
        click.echo(f"Checked {data['checked']} blob(s): {len(data['missing'])} missing, {len(data['corrupt'])} corrupt, {len(data['unreferenced'])} unreferenced")

    emit(data, as_json, human)
    if not data["ok"]:
        n = len(data["missing"]) + len(data["corrupt"])
        click.echo(f"Error: {n} blob(s) missing or corrupt", err=True)
        sys.exit(IntegrityError.exit_code)


@click.command("export")
@click.argument("ref")
@click.argument("file", type=click.Path())
@json_option
def export(ref: str, file: str, as_json: bool) -> None:
    """Write the residual file of REF to FILE (or into the folder FILE)."""
    with _catalogue() as cat:
        rec = cat.resolve(ref)
        path = cat.export(rec.ref, file)  # the version resolved above, even if a tag moves meanwhile
    emit({"ref": rec.ref, "sha256": rec.sha256, "path": str(path)}, as_json, lambda: click.echo(f"Wrote {rec.ref} to {path}"))


def register(group: click.Group) -> None:
    for command in (add, list_, show, search, tag, untag, rm, gc, doctor, verify, export):
        group.add_command(command)
