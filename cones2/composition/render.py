"""Render resolved compositions: one model load, seeds batched, optionally several processes.

:func:`render` takes :class:`RenderJob` s (a composition and its resolution) and
:class:`RenderOptions` (where and how: output folder, device, batch size, processes --
nothing that changes an image). Every image has its own CPU generator seeded with its
seed, so image ``k`` of a batch is the image rendered alone with that seed (given the
sampler's per-image statistics); a batch split over processes renders each image exactly
once. Each PNG's metadata holds ``{format, format_version, composition, resolved, seed}``
(:func:`~cones2.composition.model.png_record`), enough for ``cones2 render --from-png``.

One adapter, :func:`sampler_arguments`, turns :class:`SamplerSettings` into what the
pipeline's ``__call__`` takes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import Cones2Error, UsageError
from ..sampler.presets import SamplerSettings
from .model import Composition, png_record
from .resolve import Resolution, check_base, load_residuals

CONTACT_SHEET = "contact-sheet.png"


@dataclass(frozen=True)
class RenderJob:
    """A composition with its resolution; ``outputs`` (one path per seed) overrides the file names;
    ``only`` renders just these of the composition's seeds (``render --from-png``)."""

    composition: Composition
    resolution: Resolution
    outputs: tuple[Path, ...] | None = None
    only: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.only is not None:
            missing = sorted(set(self.only) - set(self.composition.seeds))
            if missing:
                raise UsageError(f"seed {missing[0]} is not one of the composition's seeds {list(self.composition.seeds)}")

    def output_for(self, index: int, seed: int, folder: Path) -> Path:
        if self.outputs is not None:
            return Path(self.outputs[index])
        return folder / f"{self.composition.name}-{seed}.png"


@dataclass(frozen=True)
class RenderOptions:
    """How and where to render; none of these change an image."""

    output_dir: Path = Path(".")
    device: str | None = None
    batch_size: int | None = None  # seeds per pipeline call; None: 4
    num_processes: int = 1
    contact_sheet: bool = True
    attention_dir: Path | None = None
    on_image: Callable[[int, int], None] | None = None  # (images done, total)

    def __post_init__(self) -> None:
        for label in ("batch_size", "num_processes"):
            value = getattr(self, label)
            if value is None and label == "batch_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"--{label.replace('_', '-')} must be a whole number >= 1, not {value!r}")


@dataclass(frozen=True)
class RenderedImage:
    path: Path
    name: str
    seed: int
    info: dict[str, Any] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "name": self.name, "seed": self.seed}


@dataclass(frozen=True)
class RenderResult:
    images: tuple[RenderedImage, ...]
    contact_sheet: Path | None = None
    attention_maps: tuple[Path, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": [i.to_dict() for i in self.images],
            "contact_sheet": str(self.contact_sheet) if self.contact_sheet else None,
            "attention_maps": [str(p) for p in self.attention_maps],
        }


# ---------------------------------------------------------------------- the adapter


def sampler_arguments(settings: SamplerSettings) -> dict[str, Any]:
    """Keyword arguments of ``Cones2Pipeline.__call__`` for ``settings``: the one place that maps
    a composition's sampler section onto the pipeline (which takes them whole, scheduler included)."""
    return {"settings": settings}


# ---------------------------------------------------------------------- models


def pick_device(name: str | None) -> Any:
    """The torch device for ``name`` (None: $CONES2_RENDER_DEVICE, else CUDA when there is one, else the CPU)."""
    import torch

    name = name or os.environ.get("CONES2_RENDER_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r}: not a torch device (cpu, cuda, cuda:1, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name!r}: CUDA is not available here")
    return device


def quiet_loading() -> None:
    """Loading bars of diffusers and transformers are not for CLI users (and not one line)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


class PipelineCache:
    """Pipelines loaded once per (model folder, dtype): for the whole batch, or across renders
    when a caller (the studio) keeps one and passes it to :func:`render`."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.loaded: dict[tuple[str, str], Any] = {}

    def get(self, model: str | None, dtype: str) -> tuple[Any, Any]:
        import torch

        from ..base_model import model_info, resolve_model_path
        from ..sampler.pipeline import Cones2Pipeline

        info = model_info(model)
        key = (info.path, dtype)
        if key not in self.loaded:
            _, folder = resolve_model_path(model, full=True)
            quiet_loading()
            pipe = Cones2Pipeline.from_pretrained(str(folder), dtype=getattr(torch, dtype), safety_checker=None,
                                                  requires_safety_checker=False)
            pipe.base_fingerprint = info.fingerprint
            try:
                pipe = pipe.to(self.device)
            except (RuntimeError, AssertionError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                raise UsageError(f"--device {str(self.device)!r}: {first}") from None
            pipe.set_progress_bar_config(disable=True)
            self.loaded[key] = (pipe, info)
        return self.loaded[key]


# ---------------------------------------------------------------------- rendering


def _distributed() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` under ``accelerate launch`` / torchrun, else ``(0, 1, 0)``."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        return 0, 1, 0
    return (rank, world, local) if world > 1 else (0, 1, 0)


def _work(jobs: Sequence[RenderJob]) -> list[tuple[int, int]]:
    """Every (job, seed index) pair, in order."""
    return [(j, k) for j, job in enumerate(jobs) for k, seed in enumerate(job.composition.seeds)
            if job.only is None or seed in job.only]


def render(jobs: Sequence[RenderJob], options: RenderOptions | None = None, *,
           pipelines: PipelineCache | None = None) -> RenderResult:
    """Render every seed of every job; see the module docstring. ``pipelines``: a cache that
    keeps models loaded between calls (used when it is for the device this render runs on)."""
    options = options or RenderOptions()
    from ..fsutil import check_writable_folder

    folders = {job.output_for(k, s, Path(options.output_dir)).parent for job in jobs
               for k, s in enumerate(job.composition.seeds)}
    if options.attention_dir is not None:
        folders.add(Path(options.attention_dir))
    for folder in sorted(folders):
        check_writable_folder(folder)  # before minutes of sampling
    from ..base_model import model_info

    for job in jobs:  # refuse before any model is loaded
        if job.composition.layout is not None:
            job.composition.layout.check_files()
        check_base(job.resolution, model_info(job.composition.base_model).fingerprint)
        load_residuals(job.resolution)  # re-verifies every blob; pulls pinned versions that are missing
    work = _work(jobs)
    rank, world, local_rank = _distributed()
    if world > 1:
        work = work[rank::world]
    if options.on_image is not None and work:
        options.on_image(0, len(work))  # everything is checked: the bar opens before the model loads
    if options.num_processes > 1 and len(work) > 1:
        images = _render_in_processes(jobs, work, options)
    else:
        device = options.device or (f"cuda:{local_rank}" if world > 1 and _cuda() else None)
        images, maps = _render_here(jobs, work, options, device, pipelines)
        if maps:
            return RenderResult(tuple(images), _sheet(images, options) if world == 1 else None, tuple(maps))
    return RenderResult(tuple(images), _sheet(images, options) if world == 1 else None)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _sheet(images: Sequence[RenderedImage], options: RenderOptions) -> Path | None:
    if not options.contact_sheet or len(images) < 2:
        return None
    return write_contact_sheet([(i.path, f"{i.name} · seed {i.seed}") for i in images],
                               Path(options.output_dir) / CONTACT_SHEET)


def _render_here(jobs: Sequence[RenderJob], work: Sequence[tuple[int, int]], options: RenderOptions,
                 device_name: str | None, cache: PipelineCache | None = None) -> tuple[list[RenderedImage], list[Path]]:
    import torch

    device = pick_device(device_name)
    pipelines = cache if cache is not None and cache.device == device else PipelineCache(device)
    wanted: dict[int, list[int]] = {}
    for j, k in work:
        wanted.setdefault(j, []).append(k)
    batch_size = options.batch_size or 4
    total = len(work)
    done = 0
    images: list[RenderedImage] = []
    maps: list[Path] = []
    for j, indices in wanted.items():
        job = jobs[j]
        comp = job.composition
        dtype = comp.dtype or ("float16" if device.type == "cuda" else "float32")
        pipe, info = pipelines.get(comp.base_model, dtype)
        check_base(job.resolution, info.fingerprint)
        residuals = load_residuals(job.resolution, fetch_missing=False)
        size = pipe.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        height = comp.height or size * pipe.vae_scale_factor
        width = comp.width or size * pipe.vae_scale_factor
        layout = comp.layout.build(height, width, comp.sampler) if comp.layout is not None else None
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            seeds = [comp.seeds[k] for k in chunk]
            generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
            out = pipe(
                comp.prompt, residuals, layout, negative_prompt=comp.negative_prompt, generator=generators,
                num_images_per_prompt=len(seeds), height=height, width=width,
                return_attention_maps=options.attention_dir is not None, **sampler_arguments(comp.sampler),
            )
            for image, k, seed in zip(out.images, chunk, seeds, strict=True):
                path = job.output_for(k, seed, Path(options.output_dir))
                extra = _run_record(comp, job.resolution, out.info, pipe, info, dtype, str(device), height, width)
                _save_png(image, path, png_record(comp, job.resolution.to_dict(), seed, extra), info.is_demo)
                images.append(RenderedImage(path, comp.name, seed, extra))
                done += 1
                if options.on_image is not None:
                    options.on_image(done, total)
            if options.attention_dir is not None:
                from ..sampler.attention_maps import save_attention_maps

                stem = job.output_for(chunk[0], seeds[0], Path(options.output_dir)).stem
                try:
                    maps.extend(save_attention_maps(options.attention_dir, out.images, out.attention_maps or {},
                                                    layout=layout, stem=stem))
                except OSError as exc:
                    raise UsageError(f"cannot write {exc.filename or options.attention_dir}: {exc.strerror or exc}") from None
    return images, maps


def _run_record(comp: Composition, resolution: Resolution, out_info: dict[str, Any], pipe: Any, info: Any,
                dtype: str, device: str, height: int, width: int) -> dict[str, Any]:
    """What the pipeline reported (subjects with positions, layout, scheduler class): shown by ``--json``."""
    from .. import __version__
    from ..demo_model import DEMO_NOTICE

    subjects = {}
    for key, sub in (out_info.get("subjects") or {}).items():
        pinned = resolution.subject(key)
        entry = dict(sub)
        if pinned is not None:
            entry.update(sha256=pinned.sha256, source="registry" if pinned.name else "file")
            if pinned.name:
                entry.update(name=pinned.name, version=pinned.version)
            else:
                entry.update(path=pinned.file)
        subjects[key] = entry
    s = comp.sampler
    return {
        "prompt": comp.prompt,
        "negative_prompt": comp.negative_prompt,
        "subjects": subjects,
        "layout": out_info.get("layout"),
        "settings": {
            **s.to_dict(),  # the preset and every setting it implied
            "overridden": sorted(s.differences()),
            "guided_steps": out_info.get("guided_steps"),
            "scheduler_class": out_info.get("scheduler", type(pipe.scheduler).__name__),
            "height": height, "width": width, "dtype": dtype, "device": device,
            "overlap": comp.layout.overlap if comp.layout else "share",
        },
        "base_model": {"source": info.source, "fingerprint": info.fingerprint, "is_demo": info.is_demo,
                       "notice": DEMO_NOTICE if info.is_demo else None},
        "cones2_version": __version__,
    }


def _save_png(image: Any, path: Path, record: str, is_demo: bool) -> None:
    from PIL.PngImagePlugin import PngInfo

    from ..demo_model import DEMO_NOTICE
    from .model import PNG_KEY

    meta = PngInfo()
    meta.add_text(PNG_KEY, record)
    if is_demo:
        meta.add_text("cones2-demo-model", DEMO_NOTICE)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, format="PNG", pnginfo=meta)  # always a PNG: the metadata is PNG text
    except OSError as exc:
        raise UsageError(f"cannot write {exc.filename or path}: {exc.strerror or exc}") from None


def write_contact_sheet(items: Sequence[tuple[Path, str]], path: Path, cell: int = 192) -> Path:
    """A grid of thumbnails with a caption under each."""
    import math

    from PIL import Image, ImageDraw

    cols = min(len(items), 4)
    rows = math.ceil(len(items) / cols)
    caption = 16
    sheet = Image.new("RGB", (cols * cell, rows * (cell + caption)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image_path, text) in enumerate(items):
        with Image.open(image_path) as im:
            thumb = im.convert("RGB").resize((cell, cell), Image.Resampling.NEAREST if im.width < cell else Image.Resampling.LANCZOS)
        x, y = (i % cols) * cell, (i // cols) * (cell + caption)
        sheet.paste(thumb, (x, y))
        draw.text((x + 4, y + cell + 2), text, fill="black")
    try:
        sheet.save(path, format="PNG")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    return path


# ---------------------------------------------------------------------- processes


def _render_share(payload: dict[str, Any]) -> list[dict[str, Any]]:
    """One worker process: render its share of the work (a spawn target; plain data in and out)."""
    from .model import Composition
    from .resolve import Resolution

    torch_threads = payload.get("threads")
    if torch_threads:
        import torch

        torch.set_num_threads(torch_threads)
    jobs = [RenderJob(Composition.from_dict(j["composition"]), Resolution.from_dict(j["resolution"]),
                      tuple(Path(p) for p in j["outputs"]), tuple(j["only"]) if j["only"] is not None else None)
            for j in payload["jobs"]]
    options = RenderOptions(output_dir=Path(payload["output_dir"]), device=payload["device"],
                            batch_size=payload["batch_size"], contact_sheet=False)
    try:
        images, _ = _render_here(jobs, [tuple(w) for w in payload["work"]], options, payload["device"])
    except Cones2Error as exc:
        return [{"error": str(exc), "type": type(exc).__name__}]
    return [{"path": str(i.path), "name": i.name, "seed": i.seed} for i in images]


def _render_in_processes(jobs: Sequence[RenderJob], work: Sequence[tuple[int, int]], options: RenderOptions) -> list[RenderedImage]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    n = min(options.num_processes, len(work))
    folder = Path(options.output_dir)
    payload_jobs = [{
        "composition": job.composition.to_dict(),
        "resolution": job.resolution.to_dict(),
        "outputs": [str(job.output_for(k, s, folder)) for k, s in enumerate(job.composition.seeds)],
        "only": list(job.only) if job.only is not None else None,
    } for job in jobs]
    threads = max(1, (os.cpu_count() or 1) // n)
    shares = [{"jobs": payload_jobs, "work": list(work[p::n]), "output_dir": str(folder), "device": options.device,
               "batch_size": options.batch_size, "threads": threads} for p in range(n)]
    done = 0
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context("spawn")) as pool:
        for share in pool.map(_render_share, shares):
            errors = [r for r in share if "error" in r]
            if errors:
                from .. import errors as error_types

                kind = getattr(error_types, errors[0]["type"], UsageError)
                raise kind(errors[0]["error"])
            results.extend(share)
            done += len(share)
            if options.on_image is not None:
                options.on_image(done, len(work))
    order = {(jobs[j].output_for(k, jobs[j].composition.seeds[k], folder)): i for i, (j, k) in enumerate(work)}
    images = [RenderedImage(Path(r["path"]), r["name"], int(r["seed"])) for r in results]
    images.sort(key=lambda im: order.get(im.path, len(order)))
    return images
