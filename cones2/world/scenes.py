"""Procedural scenes: simple coloured shapes with captions and ground-truth boxes.

Everything is drawn with numpy, anti-aliased by 4x4 supersampling (a pixel's colour is
the background mixed with the object colour by the fraction of its 16 sub-samples the
shape covers), and is a pure function of a seed: the same seed gives the same scenes,
bit for bit, on every machine.

* :func:`sample_scene` draws 1 to 4 non-overlapping objects (distinct colours, a shape
  each) on a plain or faintly textured grey background and returns a :class:`Scene`
  with its caption (``"a red circle and a blue square"``) and every object's box.
* :data:`VARIANTS` are subject variants of a class (a striped circle, a dotted square,
  a hollow triangle, a striped star): patterns the captions never describe, to be
  learned from a few images (:func:`variant_images`) with ``cones2 train``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

SIZE = 32
SHAPES = ("circle", "square", "triangle", "star")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}
BACKGROUND = (128, 128, 128)
PATTERNS = ("plain", "stripes", "dots", "hollow")
WHITE = (250, 250, 250)
# probability of 1, 2, 3, 4 objects in a training scene
COUNT_WEIGHTS = (0.3, 0.35, 0.2, 0.15)
_SUPER = 4
_GAP = 2.0  # pixels between objects' boxes


@dataclass(frozen=True)
class SceneObject:
    """One object: its shape, colour name, centre and radius (pixels), pattern."""

    shape: str
    colour: str
    cx: float
    cy: float
    r: float
    pattern: str = "plain"

    @property
    def phrase(self) -> str:
        return f"a {self.colour} {self.shape}"

    def box(self) -> tuple[float, float, float, float]:
        """Pixel box ``(x0, y0, x1, y1)`` of the shape's extent."""
        cx, cy, r = self.cx, self.cy, self.r
        if self.shape == "square":
            h = 0.8 * r
            return (cx - h, cy - h, cx + h, cy + h)
        if self.shape == "triangle":
            return (cx - r, cy - 0.9 * r, cx + r, cy + 0.9 * r)
        if self.shape == "star":
            ys = [cy - r * math.cos(2 * math.pi * k / 5) for k in range(5)]
            xs = [cx + r * math.sin(2 * math.pi * k / 5) for k in range(5)]
            return (min(xs), min(ys), max(xs), max(ys))
        return (cx - r, cy - r, cx + r, cy + r)


@dataclass(frozen=True)
class Scene:
    """Objects on a background; ``caption`` names them in order."""

    objects: tuple[SceneObject, ...]
    textured: bool = False
    seed: int = 0
    size: int = SIZE
    caption: str = field(default="")

    def __post_init__(self) -> None:
        if not self.caption:
            object.__setattr__(self, "caption", caption_for(self.objects))

    def boxes(self, normalised: bool = False) -> list[tuple[float, float, float, float]]:
        s = float(self.size) if normalised else 1.0
        return [tuple(max(0.0, min(self.size, v)) / s for v in o.box()) for o in self.objects]  # type: ignore[misc]

    def render(self) -> np.ndarray:
        """``(size, size, 3)`` uint8 RGB."""
        return render(self)


def caption_for(objects: tuple[SceneObject, ...] | list[SceneObject]) -> str:
    return " and ".join(o.phrase for o in objects)


# --------------------------------------------------------------------------- drawing


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    n = size * _SUPER
    c = (np.arange(n, dtype=np.float64) + 0.5) / _SUPER
    return np.meshgrid(c, c)  # x, y


def _in_polygon(x: np.ndarray, y: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    inside = np.zeros(x.shape, dtype=bool)
    j = len(pts) - 1
    for i in range(len(pts)):
        xi, yi = pts[i]
        xj, yj = pts[j]
        crosses = (yi > y) != (yj > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xcross = (xj - xi) * (y - yi) / (yj - yi + 1e-12) + xi
        inside ^= crosses & (x < xcross)
        j = i
    return inside


def shape_mask(obj: SceneObject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean mask of the filled shape on a (supersampled) coordinate grid."""
    cx, cy, r = obj.cx, obj.cy, obj.r
    if obj.shape == "circle":
        return (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    if obj.shape == "square":
        h = 0.8 * r
        return (np.abs(x - cx) <= h) & (np.abs(y - cy) <= h)
    if obj.shape == "triangle":
        pts = [(cx, cy - 0.9 * r), (cx - r, cy + 0.9 * r), (cx + r, cy + 0.9 * r)]
        return _in_polygon(x, y, pts)
    if obj.shape == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else 0.45 * r
            a = math.pi * k / 5
            pts.append((cx + rad * math.sin(a), cy - rad * math.cos(a)))
        return _in_polygon(x, y, pts)
    raise ValueError(f"unknown shape {obj.shape!r}")


def pattern_mask(obj: SceneObject, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Where a patterned object shows white (or the background, for ``hollow``)."""
    if obj.pattern == "stripes":
        return np.floor((y - obj.cy) / 2.0).astype(int) % 2 == 1
    if obj.pattern == "dots":
        px = np.mod(x - obj.cx + 2.0, 4.0)
        py = np.mod(y - obj.cy + 2.0, 4.0)
        return ((px - 2.0) ** 2 + (py - 2.0) ** 2) <= 1.2
    if obj.pattern == "hollow":
        inner = SceneObject(obj.shape, obj.colour, obj.cx, obj.cy, obj.r * 0.5)
        if obj.shape == "triangle":
            inner = SceneObject(obj.shape, obj.colour, obj.cx, obj.cy + 0.15 * obj.r, obj.r * 0.45)
        return shape_mask(inner, x, y)
    return np.zeros(x.shape, dtype=bool)


def _pool(a: np.ndarray, size: int) -> np.ndarray:
    return a.reshape(size, _SUPER, size, _SUPER).mean(axis=(1, 3))


def render(scene: Scene) -> np.ndarray:
    size = scene.size
    img = np.empty((size, size, 3), dtype=np.float64)
    img[:] = BACKGROUND
    if scene.textured:
        rng = np.random.default_rng(scene.seed + 7919)
        yy, xx = np.mgrid[0:size, 0:size]
        fx, fy, ph = rng.uniform(0.15, 0.5), rng.uniform(0.15, 0.5), rng.uniform(0, 2 * math.pi)
        wave = 10.0 * np.sin(fx * xx + fy * yy + ph)
        img += wave[..., None] + rng.normal(0, 3.0, (size, size, 1))
    x, y = _grid(size)
    for obj in scene.objects:
        inside = shape_mask(obj, x, y)
        colour = np.asarray(COLOURS[obj.colour], dtype=np.float64)
        if obj.pattern == "plain":
            cover = _pool(inside.astype(np.float64), size)
            img = img * (1 - cover[..., None]) + colour * cover[..., None]
            continue
        pat = pattern_mask(obj, x, y) & inside
        solid = _pool((inside & ~pat).astype(np.float64), size)
        img = img * (1 - solid[..., None]) + colour * solid[..., None]
        if obj.pattern != "hollow":
            white = _pool(pat.astype(np.float64), size)
            img = img * (1 - white[..., None]) + np.asarray(WHITE, dtype=np.float64) * white[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- sampling


def _place(rng: np.random.Generator, radii: list[float], shapes: list[str], size: int) -> list[tuple[float, float]] | None:
    placed: list[tuple[float, float, float, float]] = []
    centres = []
    for r, shape in zip(radii, shapes, strict=True):
        for _ in range(60):
            cx, cy = rng.uniform(r + 0.5, size - r - 0.5, 2)
            x0, y0, x1, y1 = SceneObject(shape, "red", cx, cy, r).box()
            if all(x1 + _GAP <= a or b + _GAP <= x0 or y1 + _GAP <= c or d + _GAP <= y0 for a, c, b, d in placed):
                placed.append((x0, y0, x1, y1))
                centres.append((float(cx), float(cy)))
                break
        else:
            return None
    return centres


def radius_range(count: int) -> tuple[float, float]:
    """Object radii (pixels at 32 px) for a scene of ``count`` objects."""
    return (5.0, 8.0) if count <= 2 else (4.0, 6.0)


def sample_scene(
    seed: int,
    *,
    count: int | None = None,
    shapes: tuple[str, ...] = SHAPES,
    colours: tuple[str, ...] = tuple(COLOURS),
    textured: bool | None = None,
    size: int = SIZE,
    pattern_rate: float = 0.0,
) -> Scene:
    """A random scene, a pure function of ``seed`` (and the keyword choices).

    ``pattern_rate``: the chance that an object is drawn with a pattern (stripes, dots or
    hollow) its caption does not mention -- so a base model trained on such scenes can draw
    patterns, and a subject variant has a pattern to learn. At 0 (the default) no extra
    random numbers are drawn: the scenes are those of a run without patterns.
    """
    rng = np.random.default_rng([seed, 20231126])
    n = count if count is not None else int(rng.choice(4, p=COUNT_WEIGHTS)) + 1
    if not 1 <= n <= min(4, len(colours)):
        raise ValueError(f"a scene has 1 to {min(4, len(colours))} objects, not {n}")
    tex = bool(rng.random() < 0.3) if textured is None else textured
    scale = size / SIZE
    while True:
        lo, hi = radius_range(n)
        radii = [float(rng.uniform(lo, hi)) * scale for _ in range(n)]
        picked = [str(s) for s in rng.choice(shapes, n)]
        centres = _place(rng, radii, picked, size)
        if centres is not None:
            break
    cols = [str(c) for c in rng.permutation(list(colours))[:n]]
    objs = tuple(
        SceneObject(s, c, cx, cy, r) for s, c, (cx, cy), r in zip(picked, cols, centres, radii, strict=True)
    )
    if pattern_rate > 0:
        marked = rng.random(n) < pattern_rate
        kinds = rng.choice(PATTERNS[1:], n)
        objs = tuple(replace(o, pattern=str(k)) if m else o for o, m, k in zip(objs, marked, kinds, strict=True))
    return Scene(objs, textured=tex, seed=seed, size=size)


def scene_batch(seeds: list[int] | range, **kwargs: Any) -> tuple[np.ndarray, list[str], list[Scene]]:
    """Images ``(B, size, size, 3)`` uint8, captions and scenes for a list of seeds."""
    scenes = [sample_scene(int(s), **kwargs) for s in seeds]
    return np.stack([sc.render() for sc in scenes]), [sc.caption for sc in scenes], scenes


# --------------------------------------------------------------------------- subject variants


@dataclass(frozen=True)
class Variant:
    """A subject: a class word (the shape), the colour it is shown in, and its pattern."""

    name: str
    shape: str
    colour: str
    pattern: str

    @property
    def word(self) -> str:
        return self.shape


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("striped-circle", "circle", "red", "stripes"),
        Variant("dotted-square", "square", "blue", "dots"),
        Variant("hollow-triangle", "triangle", "green", "hollow"),
        Variant("striped-star", "star", "yellow", "stripes"),
    )
}


def variant_scene(variant: Variant, seed: int, size: int = SIZE) -> Scene:
    """One image of ``variant`` alone (radius 7-10 px at 32 px), captioned by its plain class."""
    rng = np.random.default_rng([seed, 424242])
    r = float(rng.uniform(7.0, 10.0)) * size / SIZE
    cx, cy = (float(v) for v in rng.uniform(r + 0.5, size - r - 0.5, 2))
    obj = SceneObject(variant.shape, variant.colour, cx, cy, r, variant.pattern)
    return Scene((obj,), seed=seed, size=size)


def variant_images(variant: Variant | str, n: int = 5, seed: int = 0, size: int = SIZE) -> list[tuple[np.ndarray, str]]:
    """``n`` (image, caption) pairs of a subject variant, for ``cones2 train``."""
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    out = []
    for i in range(n):
        sc = variant_scene(v, seed * 1000 + i, size)
        out.append((sc.render(), sc.caption))
    return out


def save_variant_images(variant: Variant | str, folder: str | Path, n: int = 5, seed: int = 0) -> list[Path]:
    """Write ``n`` PNGs of a subject variant (and ``captions.txt``) to ``folder``, for ``cones2 train``."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    paths, lines = [], []
    for i, (img, caption) in enumerate(variant_images(v, n, seed)):
        path = folder / f"{v.name}-{i}.png"
        Image.fromarray(img).save(path)
        paths.append(path)
        lines.append(f"{path.name}\t{caption}")
    (folder / "captions.txt").write_text("\n".join(lines) + "\n")
    return paths
