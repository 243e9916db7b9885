"""Harness parts (c)/(d): learn subject variants on the world model and measure them.

A *variant* (:data:`~cones2.world.scenes.VARIANTS`: a striped circle, a dotted square, a
hollow triangle, a striped star) is a pattern the base captions never describe. It is
learned from a few rendered images with :func:`cones2.train.train_subject` on an exported
world pipeline folder (the class word is its shape), registered in the catalogue, and then
used like any subject: every image is rendered from a :class:`~cones2.composition.Composition`
(the subjects by registry ref, the boxes as a :class:`~cones2.composition.LayoutSpec`,
the sampler as :class:`~cones2.sampler.presets.SamplerSettings`) through
:func:`cones2.composition.render.render`, the same path as ``cones2 render``.

Scores, per variant, from the classical detector (:mod:`cones2.world.detect`):

* ``fidelity`` -- its object (the detected object of its colour) shows its pattern;
* ``leakage`` -- an object asked as another subject with a different pattern, or asked
  plainly, shows this variant's pattern;
* ``baseline`` -- its object shows its pattern when the subject is *not* used (the same
  prompt and seed without residuals): the detector's and the base model's false-positive
  rate, the floor fidelity has to beat.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import EVAL_SEED_BASE
from .scenes import VARIANTS, Scene, SceneObject, sample_scene

#: the sampler the harness uses unless told otherwise: the model's own scheduler (DDIM,
#: v-prediction), 20 steps, the reference's guidance weight
DEFAULT_SETTINGS = {"scheduler": "default", "steps": 20, "guidance_scale": 7.5, "guidance_weight": 0.08}


def composition_scenes(variants: Sequence[str], n: int, seed: int = 0) -> list[Scene]:
    """``n`` scenes with one object per variant (its class shape and colour), placed at random."""
    out = []
    for i in range(n):
        base = sample_scene(EVAL_SEED_BASE + 50_000_000 + seed * 100_000 + i * 7 + len(variants), count=len(variants),
                            textured=False)
        objs = tuple(SceneObject(VARIANTS[v].shape, VARIANTS[v].colour, o.cx, o.cy, o.r)
                     for v, o in zip(variants, base.objects, strict=True))
        out.append(Scene(objs, seed=base.seed))
    return out


def harness_settings(**overrides: Any) -> Any:
    """:class:`SamplerSettings` of the harness (reference preset, the model's scheduler) with overrides."""
    from ..sampler.presets import resolve_settings

    return resolve_settings("reference", **{**DEFAULT_SETTINGS, **overrides})


def train_variants(model: str | Path, variants: Sequence[str], *, steps: int, lr: float = 1e-3, images: int = 5,
                   seed: int = 0, work_dir: str | Path | None = None,
                   on_done: Callable[[str, Any], None] | None = None) -> dict[str, str]:
    """Learn each variant (``images`` renders, ``steps`` steps) on the world ``model`` folder.

    Returns ``{variant: "name@version"}``, registry refs for :class:`SubjectSpec`.
    """
    from ..train import TrainConfig, train_subject
    from .scenes import save_variant_images

    refs: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="cones2-world-variants-") as tmp:
        root = Path(work_dir) if work_dir is not None else Path(tmp)
        for name in variants:
            variant = VARIANTS[name]
            paths = save_variant_images(variant, root / "images" / name, n=images, seed=seed)
            config = TrainConfig(steps=steps, lr=lr, resolution=int(_image_size(paths[0])), seed=seed)
            result = train_subject(paths, variant.word, name, base=model, config=config,
                                   output_dir=root / "runs" / name,
                                   description=f"world variant: {variant.colour} {variant.shape}, {variant.pattern}")
            refs[name] = f"{result.name}@{result.version}"
            if on_done is not None:
                on_done(name, result)
    return refs


def _image_size(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as img:
        return int(img.size[0])


def scene_boxes(scene: Scene) -> tuple[tuple[str, tuple[float, float, float, float]], ...]:
    """Each object's box under its colour word and its shape word (the scene's shapes are distinct)."""
    out: list[tuple[str, tuple[float, float, float, float]]] = []
    for obj, box in zip(scene.objects, scene.boxes(normalised=True), strict=True):
        b = tuple(float(v) for v in box)
        out += [(obj.colour, b), (obj.shape, b)]  # type: ignore[list-item]
    return tuple(out)


def variant_composition(model: str | Path, scene: Scene, refs: Mapping[str, str], *, guided: bool, settings: Any,
                        name: str = "world") -> Any:
    """The :class:`Composition` of one scene: its caption, ``refs``' subjects bound to their
    shape words, the scene's boxes when ``guided``, one seed (the scene's)."""
    from ..composition import Composition, LayoutSpec, SubjectSpec

    subjects = tuple(SubjectSpec(key=VARIANTS[v].word, ref=ref) for v, ref in refs.items())
    layout = LayoutSpec(boxes=scene_boxes(scene)) if guided else None
    return Composition(prompt=scene.caption, subjects=subjects, layout=layout, sampler=settings,
                       base_model=str(model), seeds=(int(scene.seed),), name=name)


def render_compositions(compositions: Sequence[Any]) -> list[np.ndarray]:
    """Render through :func:`cones2.composition.render.render` (one model load); uint8 images in order."""
    from PIL import Image

    from ..composition.render import RenderJob, RenderOptions, render
    from ..composition.resolve import resolve

    jobs = [RenderJob(c, resolve(c)) for c in compositions]
    with tempfile.TemporaryDirectory(prefix="cones2-world-render-") as tmp:
        outputs = [Path(tmp) / f"{i:05d}.png" for i in range(len(jobs))]
        jobs = [RenderJob(j.composition, j.resolution, outputs=(out,)) for j, out in zip(jobs, outputs, strict=True)]
        render(jobs, RenderOptions(output_dir=Path(tmp), contact_sheet=False, batch_size=1))
        images = []
        for out in outputs:
            with Image.open(out) as img:
                images.append(np.asarray(img.convert("RGB")).copy())
    return images


@dataclass
class SubjectScores:
    """Fidelity, leakage and baseline per variant of one case (a set of subjects, guided or not)."""

    subjects: list[str]
    guided: bool
    scenes: int
    fidelity: dict[str, float]
    leakage: dict[str, float]
    baseline: dict[str, float]

    def summary(self) -> dict[str, Any]:
        return asdict(self)


def score(variants: Sequence[str], scenes: Sequence[Scene], with_subjects: Sequence[np.ndarray],
          without: Sequence[np.ndarray], guided: bool) -> SubjectScores:
    """Score images of ``scenes`` rendered with the ``variants``' residuals and without them."""
    from .detect import detect

    fid: dict[str, list[float]] = {v: [] for v in variants}
    leak: dict[str, list[float]] = {v: [] for v in variants}
    base: dict[str, list[float]] = {v: [] for v in variants}
    asked = {VARIANTS[v].colour: VARIANTS[v].pattern for v in variants}
    for img, plain in zip(with_subjects, without, strict=True):
        det, det_plain = detect(img), detect(plain)
        for v in variants:
            var = VARIANTS[v]
            own = [d for d in det if d.colour == var.colour]
            fid[v].append(float(bool(own) and own[0].pattern == var.pattern))
            own_plain = [d for d in det_plain if d.colour == var.colour]
            base[v].append(float(bool(own_plain) and own_plain[0].pattern == var.pattern))
            # objects that should not show this pattern: asked plainly, or as a subject with another pattern
            others = [d for d in det if d.colour != var.colour and asked.get(d.colour, "plain") != var.pattern]
            leak[v].append(float(any(d.pattern == var.pattern for d in others)))
    mean = lambda rows: {k: float(np.mean(r)) if r else 0.0 for k, r in rows.items()}  # noqa: E731
    return SubjectScores(list(variants), guided, len(scenes), mean(fid), mean(leak), mean(base))


def pattern_ceiling(cases: Sequence[Sequence[str]], scenes_per_case: int, *, seed: int = 0) -> list[dict[str, float]]:
    """The detector's fidelity on ground truth: each case's scenes rendered *with* the variants'
    patterns (the images a perfect model would draw); the most :func:`measure` can report."""
    from dataclasses import replace

    from .detect import detect

    out = []
    for case in cases:
        hits: dict[str, list[float]] = {v: [] for v in case}
        for scene in composition_scenes(list(case), scenes_per_case, seed=seed):
            objs = tuple(replace(o, pattern=VARIANTS[v].pattern) for v, o in zip(case, scene.objects, strict=True))
            det = detect(Scene(objs, seed=scene.seed, size=scene.size).render())
            for v in case:
                own = [d for d in det if d.colour == VARIANTS[v].colour]
                hits[v].append(float(bool(own) and own[0].pattern == VARIANTS[v].pattern))
        out.append({v: float(np.mean(h)) for v, h in hits.items()})
    return out


def measure(model: str | Path, refs: Mapping[str, str], cases: Sequence[Sequence[str]], scenes_per_case: int, *,
            settings: Any | None = None, guided: Sequence[bool] = (False, True), seed: int = 0) -> list[SubjectScores]:
    """(c)/(d): for each case (variants used together), ``scenes_per_case`` scenes holding one object
    per variant, rendered with and without the subjects, unguided and/or guided."""

    settings = settings if settings is not None else harness_settings()
    plan: list[tuple[list[str], bool, list[Scene]]] = []
    with_c: list[Any] = []
    without_c: list[Any] = []
    for case in cases:
        case = list(case)
        scenes = composition_scenes(case, scenes_per_case, seed=seed)
        for g in guided:
            plan.append((case, g, scenes))
            for i, scene in enumerate(scenes):
                label = f"{'-'.join(case)}-{'guided' if g else 'free'}-{i}"
                with_c.append(variant_composition(model, scene, {v: refs[v] for v in case}, guided=g,
                                                  settings=settings, name=label))
                without_c.append(variant_composition(model, scene, {}, guided=g, settings=settings, name=label + "-plain"))
    images = render_compositions(with_c + without_c)
    with_i, without_i = images[: len(with_c)], images[len(with_c) :]
    out, at = [], 0
    for case, g, scenes in plan:
        n = len(scenes)
        out.append(score(case, scenes, with_i[at : at + n], without_i[at : at + n], g))
        at += n
    return out
