"""The world's measurements: caption accuracy, layout accuracy, subject fidelity and leakage.

Each function samples a fixed prompt set at fixed seeds through a
:class:`~cones2.sampler.Cones2Pipeline` and scores the images with the classical detector
(:mod:`cones2.world.detect`). ``benchmarks/eval_world.py`` runs them and prints the tables.

* :func:`caption_accuracy` -- (a): are exactly the asked objects there, with the right
  colour and shape?
* :func:`layout_accuracy` -- (b): IoU of each object's detected box (the largest object of
  its colour) with the box it was asked for, and the hit rate (IoU >= 0.5); unguided
  (``guidance_weight=None``) or guided on the object's colour and shape words.

Subject fidelity and leakage, (c)/(d), are measured by :mod:`cones2.world.subjects` through
compositions (``benchmarks/eval_world_subjects.py``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .detect import Detection, box_iou, detect, match_caption
from .scenes import Scene, SceneObject, sample_scene

EVAL_SEED_BASE = 900_000_000  # scene seeds never used in training (which uses seed * 1e9 + step * batch)


def fixed_scenes(n: int, counts: Sequence[int] = (1, 2, 3, 4), seed: int = 0) -> list[Scene]:
    """``n`` evaluation scenes, object counts taken in turn from ``counts``, plain backgrounds."""
    return [sample_scene(EVAL_SEED_BASE + seed * 100_000 + i, count=counts[i % len(counts)], textured=False) for i in range(n)]


def _images(pipe: Any, prompts: list[str], seeds: list[int], batch: int = 16, **kwargs: Any) -> list[np.ndarray]:
    """uint8 images, one per prompt, each from its own seed (a batch does not change the image)."""
    import torch

    out: list[np.ndarray] = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds[start : start + batch]]
        result = pipe(chunk, generator=gens, output_type="np", **kwargs)
        out.extend(np.clip(np.rint(np.asarray(img) * 255), 0, 255).astype(np.uint8) for img in result.images)
    return out


@dataclass
class CaptionResult:
    """Caption accuracy overall and per object count; colour and count checks beside it."""

    n: int
    accuracy: float
    by_count: dict[int, float]
    colours: float
    exact_count: float
    images: list[np.ndarray] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("images")
        return d


def caption_accuracy(pipe: Any, n: int = 32, *, counts: Sequence[int] = (1, 2, 3, 4), steps: int = 20,
                     guidance_scale: float = 7.5, seed: int = 0, keep_images: bool = False,
                     **pipe_kwargs: Any) -> CaptionResult:
    """(a) Sample the caption of ``n`` fixed scenes and check the objects the detector finds."""
    scenes = fixed_scenes(n, counts, seed)
    images = _images(pipe, [s.caption for s in scenes], [s.seed for s in scenes], num_inference_steps=steps,
                     guidance_scale=guidance_scale, **pipe_kwargs)
    per: dict[int, list[bool]] = defaultdict(list)
    colours = exact = 0.0
    asked = 0
    for scene, img in zip(scenes, images, strict=True):
        m = match_caption(detect(img), [(o.colour, o.shape) for o in scene.objects])
        per[len(scene.objects)].append(bool(m["correct"]))
        colours += float(m["colours"])
        asked += len(scene.objects)
        exact += float(m["count_ok"])
    every = [v for vals in per.values() for v in vals]
    return CaptionResult(
        n=n, accuracy=float(np.mean(every)), by_count={k: float(np.mean(v)) for k, v in sorted(per.items())},
        colours=colours / max(asked, 1), exact_count=exact / n, images=images if keep_images else [],
    )


def scene_layout(scene: Scene) -> Any:
    """Boxes for every object's colour word and shape word (``circle#2`` for a repeated shape)."""
    from ..sampler.layout import Layout

    boxes: dict[str, tuple[float, ...]] = {}
    seen: dict[str, int] = defaultdict(int)
    for obj, box in zip(scene.objects, scene.boxes(normalised=True), strict=True):
        seen[obj.shape] += 1
        shape_key = obj.shape if seen[obj.shape] == 1 else f"{obj.shape}#{seen[obj.shape]}"
        if sum(o.shape == obj.shape for o in scene.objects) > 1 and seen[obj.shape] == 1:
            shape_key = f"{obj.shape}#1"
        boxes[obj.colour] = box
        boxes[shape_key] = box
    return Layout.from_boxes(boxes)


@dataclass
class LayoutResult:
    """Mean IoU and hit rate (IoU >= 0.5) over every asked object, overall and per object count."""

    guidance_weight: float | None
    objects: int
    mean_iou: float
    hit_rate: float
    hit_by_count: dict[int, float]
    images: list[np.ndarray] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("images")
        return d


def _object_iou(detections: list[Detection], obj: SceneObject, box: tuple[float, ...]) -> float:
    same = [d for d in detections if d.colour == obj.colour]
    return box_iou(same[0].box, box) if same else 0.0


def layout_accuracy(pipe: Any, scenes: Sequence[Scene], *, guidance_weight: float | None, steps: int = 20,
                    guidance_scale: float = 7.5, keep_images: bool = False, **pipe_kwargs: Any) -> LayoutResult:
    """(b) Sample each scene's caption (with its layout unless ``guidance_weight`` is None) and score boxes."""
    images: list[np.ndarray] = []
    for scene in scenes:
        kwargs = dict(pipe_kwargs)
        if guidance_weight is not None:
            kwargs.update(layout=scene_layout(scene), guidance_weight=guidance_weight)
        images += _images(pipe, [scene.caption], [scene.seed], num_inference_steps=steps,
                          guidance_scale=guidance_scale, **kwargs)
    ious: list[float] = []
    by_count: dict[int, list[float]] = defaultdict(list)
    for scene, img in zip(scenes, images, strict=True):
        det = detect(img)
        for obj, box in zip(scene.objects, scene.boxes(), strict=True):
            iou = _object_iou(det, obj, box)
            ious.append(iou)
            by_count[len(scene.objects)].append(float(iou >= 0.5))
    arr = np.asarray(ious)
    return LayoutResult(guidance_weight=guidance_weight, objects=len(ious), mean_iou=float(arr.mean()) if len(arr) else 0.0,
                        hit_rate=float((arr >= 0.5).mean()) if len(arr) else 0.0,
                        hit_by_count={k: float(np.mean(v)) for k, v in sorted(by_count.items())},
                        images=images if keep_images else [])
