"""``cones2 init``, ``lock``, ``render``, ``show-png`` and ``import-reference``: compositions on the command line."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ..errors import CompositionError, LockError, UsageError
from ._output import emit, json_option

INIT_TEMPLATE = '''# cones2 composition: render it with `cones2 render {file}`
format = "cones2-composition"
format_version = 1
name = "{name}"
# every subject word and layout word must occur in the prompt
prompt = "a dog and a mug on the beach"
# negative_prompt = "blurry"
# base_model = "stabilityai/stable-diffusion-2-1"   # default: the configured model, else the demo model
# one image per seed
seeds = [0, 1]
# height = 768
# width = 768

# word (or word#N for its N-th occurrence) = a registry subject:
#   dog = "dog-max"                                  the latest version
#   dog = "dog-max@2"                                exactly version 2
#   dog = {{ ref = "dog-max", version = ">=2,<4" }}    the highest version in a range
#   dog = {{ file = "residuals/dog.safetensors" }}     a residual file (relative to this file)
[subjects]

# boxes are [x0, y0, x1, y1] in 0..1, top-left origin; also masks (word = "mask.png")
# and a colour-coded image (image = "layout.png" with colours."255,0,0" = "dog" or ["dog", 2.5])
[layout]
overlap = "share"

[layout.boxes]
dog = [0.05, 0.3, 0.5, 0.95]
mug = [0.55, 0.5, 0.95, 0.95]

# preset "reference" (the paper's sampler) or "cones2" (cones2's refinements), plus any
# single setting: steps, guidance_scale, guidance_weight, guidance_steps, self_recurrence,
# scheduler, guidance_sigma, layout_resize, colour_match, colour_tolerance, occurrences
[sampler]
preset = "cones2"
steps = 30
'''


@click.command("init")
@click.argument("name", default="composition")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@json_option
def init(name: str, force: bool, as_json: bool) -> None:
    """Write a commented example composition NAME.cones2.toml."""
    from ..composition.model import SUFFIX, Composition, stem_of
    from ..fsutil import atomic_write_bytes

    path = Path(name if name.endswith(".toml") else name + SUFFIX)
    if path.exists() and not force:
        raise UsageError(f"{path} already exists (use --force to overwrite it)")
    text = INIT_TEMPLATE.format(name=stem_of(path), file=path.name)
    try:
        atomic_write_bytes(path, text.encode("utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    Composition.load(path)  # the template is a valid composition
    emit({"path": str(path)}, as_json, lambda: click.echo(f"wrote {path}"))


@click.command("lock")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--check", is_flag=True, help="Write nothing; exit non-zero when a lock is missing or stale, saying what moved.")
@click.option("--upgrade", is_flag=True, help="Re-resolve every subject instead of keeping the pinned versions.")
@click.option("-P", "--upgrade-subject", default=None, metavar="SUBJECT",
              help="Re-resolve only SUBJECT (a word of the composition), keeping the other pins (as uv's --upgrade-package).")
@json_option
def lock(files: tuple[str, ...], check: bool, upgrade: bool, upgrade_subject: str | None, as_json: bool) -> None:
    """Resolve compositions and write FILE.lock beside each (exact versions, hashes, base model)."""
    from ..composition import Composition, check_lock, lock_composition

    comps = [(f, Composition.load(f)) for f in files]
    results: list[dict[str, Any]] = []
    if check:
        stale = []
        for f, comp in comps:
            _, moved = check_lock(comp, f)
            results.append({"file": f, "stale": bool(moved), "moved": moved})
            if moved:
                stale.append(f"{f}.lock: {'; '.join(moved)}")
        if stale:
            raise LockError(f"stale lock: {' | '.join(stale)}")
        emit({"locks": results}, as_json, lambda: [click.echo(f"{r['file']}.lock is up to date") for r in results])
        return
    for f, comp in comps:
        result = lock_composition(comp, f, upgrade=True if upgrade else (upgrade_subject or False))
        results.append({"file": f, **result.to_dict()})

    def human() -> None:
        for r in results:
            state = "wrote" if r["written"] else "up to date:"
            click.echo(f"{state} {r['lock']}" + (f" ({'; '.join(r['changes'])})" if r["changes"] else ""))
            for key, sub in r["subjects"].items():
                what = f"{sub['name']}@{sub['version']}" if sub.get("name") else sub.get("file")
                click.echo(f"  {key}: {what} sha256 {sub['sha256'][:12]} positions {sub['positions']}")

    emit({"locks": results}, as_json, human)


class _Progress:
    """A bar over every image of the batch, opened once every input is checked (a refusal stays one line)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, unit="image", desc="render", leave=False)
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@click.command("render")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@click.option("-o", "--output-dir", default=".", show_default=True, type=click.Path(file_okay=False), help="Folder for the PNGs (NAME-SEED.png) and the contact sheet.")
@click.option("--from-png", "from_png", default=None, type=click.Path(dir_okay=False), help="Render again the composition stored in a PNG cones2 wrote.")
@click.option("--locked", is_flag=True, help="Refuse to render when a lock is missing or would change.")
@click.option("--seed", "seeds", multiple=True, type=int, help="Render these seeds instead of the composition's. Repeatable.")
@click.option("--batch-size", type=int, default=None, help="Seeds per UNet batch (default: 1 on a CPU, 4 on a GPU).")
@click.option("--num-processes", type=int, default=1, show_default=True, help="Split the images over this many processes.")
@click.option("--device", default=None, help="cpu, cuda, mps (default: cuda when available).")
@click.option("--contact-sheet/--no-contact-sheet", default=True, show_default=True, help="Also write contact-sheet.png.")
@json_option
def render_cmd(files: tuple[str, ...], output_dir: str, from_png: str | None, locked: bool, seeds: tuple[int, ...],
               batch_size: int | None, num_processes: int, device: str | None, contact_sheet: bool, as_json: bool) -> None:
    """Render composition files (using and writing their locks), or a PNG's composition again."""
    from ..composition import (
        Composition,
        RenderJob,
        RenderOptions,
        Resolution,
        locked_resolution,
        read_png_record,
        render,
    )

    if bool(files) == bool(from_png):
        raise UsageError("give composition FILEs or --from-png IMAGE (one of them)")
    options = RenderOptions(output_dir=Path(output_dir), device=device, batch_size=batch_size,
                            num_processes=num_processes, contact_sheet=contact_sheet)
    jobs = []
    how: dict[str, str] = {}
    if from_png:
        comp, resolved, seed = read_png_record(from_png)
        if not resolved.get("subjects") and comp.subjects:
            raise CompositionError(f"{from_png}: its metadata holds no resolved subjects")
        try:
            resolution = Resolution.from_dict(resolved)
        except (TypeError, ValueError, KeyError) as exc:
            raise CompositionError(f"{from_png}: malformed resolved record ({exc})") from None
        jobs.append(RenderJob(comp, resolution, only=tuple(seeds) if seeds else (seed,)))
        how[from_png] = "png"
    else:
        names = set()
        for f in files:
            comp = Composition.load(f)
            if comp.name in names:
                raise CompositionError(f"{f}: another composition in this batch is also named {comp.name!r}")
            names.add(comp.name)
            if seeds:
                comp = comp.with_seeds(seeds)
            resolution, how[f] = locked_resolution(comp, f, locked=locked)
            jobs.append(RenderJob(comp, resolution))
    progress = _Progress(not as_json)
    try:
        result = render(jobs, replace(options, on_image=progress))
    finally:
        progress.close()
    data = {**result.to_dict(), "locks": how}

    def human() -> None:
        for f, state in how.items():
            if state in ("new lock", "relocked"):
                click.echo(f"{state}: {f}.lock")
        for image in result.images:
            click.echo(f"wrote {image.path}")
        if result.contact_sheet:
            click.echo(f"contact sheet {result.contact_sheet}")

    emit(data, as_json, human)


@click.command("show-png")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--save", default=None, type=click.Path(dir_okay=False), help="Write the composition as TOML here.")
@json_option
def show_png(image: str, save: str | None, as_json: bool) -> None:
    """Print the composition (and its resolved subjects) stored in a PNG cones2 wrote."""
    from ..composition import read_png_record

    comp, resolved, seed = read_png_record(image)
    if save:
        if Path(save).exists():
            raise UsageError(f"{save} already exists")
        comp.save(save)
    data = {"composition": comp.to_dict(), "resolved": resolved, "seed": seed, "saved": save}

    def human() -> None:
        click.echo(f"# {image}: seed {seed}")
        click.echo(comp.to_toml(save).rstrip())
        subs = resolved.get("subjects", {})
        if subs:
            click.echo("# resolved:")
            for key, sub in subs.items():
                what = f"{sub.get('name')}@{sub.get('version')}" if sub.get("name") else sub.get("file")
                click.echo(f"#   {key}: {what} sha256 {str(sub.get('sha256'))[:12]}")
        if save:
            click.echo(f"wrote {save}")

    emit(data, as_json, human)


@click.command("import-reference")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("-o", "--output-dir", default=".", show_default=True, type=click.Path(file_okay=False), help="Where to write the compositions.")
@click.option("--model", default=None, help="Base model the residuals were learned on (default: configured, else demo).")
@json_option
def import_reference(config: str, output_dir: str, model: str | None, as_json: bool) -> None:
    """Convert the reference implementation's inference config (JSON) into compositions."""
    from ..composition.reference_import import import_reference_config

    result = import_reference_config(config, output_dir, model=model)

    def human() -> None:
        for sub in result["subjects"]:
            click.echo(f"imported {sub['ref']} from {sub['path']}")
        for path in result["compositions"]:
            click.echo(f"wrote {path}")

    emit(result, as_json, human)


def register(group: click.Group) -> None:
    for command in (init, lock, render_cmd, show_png, import_reference):
        group.add_command(command)
