"""A classical detector for the world's scenes: colour, connected components, shape, pattern.

No learned parts. Each pixel's *coverage* by a palette colour is its position on the
line from the grey background to that colour (anti-aliased edges get fractions); a pixel
belongs to the colour it is nearest to among the palette, grey and white. Per colour, the
pixels (with white pattern pixels next to them: stripes and dots) are grouped into
connected components; a component large enough is an object. Its box is the extent of
its pixels; its shape comes from its fill ratio (covered area / box area: square ~1,
circle ~0.79, triangle ~0.5, star ~0.38); its pattern from the white and background
pixels it encloses.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from .scenes import BACKGROUND, COLOURS, WHITE

# fill-ratio thresholds: above the first, a square; then circle; then triangle; else star
FILL_THRESHOLDS = (("square", 0.84), ("circle", 0.68))
STAR_SOLIDITY = 0.73
MIN_AREA_32 = 10.0  # pixels at 32 x 32; scaled with the image area
FOREGROUND_DISTANCE = 45.0  # RGB distance from the grey background


@dataclass(frozen=True)
class Detection:
    colour: str
    shape: str
    box: tuple[float, float, float, float]  # pixels, x0 y0 x1 y1 (exclusive ends)
    area: float
    fill: float
    pattern: str = "plain"
    white_fraction: float = 0.0
    hole_fraction: float = 0.0
    solidity: float = 1.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _palette() -> tuple[list[str], np.ndarray]:
    names = [*COLOURS, "_grey", "_white"]
    cols = np.array([*COLOURS.values(), BACKGROUND, WHITE], dtype=np.float64)
    return names, cols


def classify_pixels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(labels, coverage)``: nearest palette index per pixel, and ``(H, W, K)`` coverage of every colour."""
    img = np.asarray(image, dtype=np.float64)[..., :3]
    names, cols = _palette()
    dist = ((img[:, :, None, :] - cols[None, None]) ** 2).sum(-1)
    labels = dist.argmin(-1)
    bg = np.asarray(BACKGROUND, dtype=np.float64)
    direction = cols - bg
    norm = (direction**2).sum(-1)
    norm[norm == 0] = 1.0
    cover = np.clip(((img - bg)[:, :, None, :] * direction[None, None]).sum(-1) / norm, 0.0, 1.0)
    return labels, cover


def classify_shape(fill: float, solidity: float) -> str:
    """Star when clearly non-convex, else by fill ratio (square, circle, triangle)."""
    if solidity < STAR_SOLIDITY:
        return "star"
    for name, threshold in FILL_THRESHOLDS:
        if fill > threshold:
            return name
    return "triangle"


def _hull_area(pixels: np.ndarray) -> float:
    """Area of the convex hull of the given pixels' squares (corners included)."""
    from scipy.spatial import ConvexHull, QhullError

    ys, xs = np.nonzero(pixels)
    if len(xs) < 2:
        return max(float(len(xs)), 1.0)
    pts = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)]).astype(np.float64)
    try:
        return float(ConvexHull(pts).volume)
    except QhullError:
        return float(len(xs))


def detect(image: np.ndarray, min_area: float | None = None) -> list[Detection]:
    """Objects in an RGB uint8 image, largest first."""
    img = np.asarray(image)
    h, w = img.shape[:2]
    min_area = min_area if min_area is not None else MIN_AREA_32 * (h * w) / (32 * 32)
    labels, cover = classify_pixels(img)
    names, _ = _palette()
    white = labels == len(names) - 1
    # foreground: anything clearly off the grey background (pattern mixtures included)
    off_grey = np.sqrt(((img[..., :3].astype(np.float64) - np.asarray(BACKGROUND)) ** 2).sum(-1)) > FOREGROUND_DISTANCE
    found: list[Detection] = []
    for index, colour in enumerate(COLOURS):
        mask = labels == index
        if not mask.any():
            continue
        # pattern pixels (white, or mixed) next to this colour join its objects (stripes and dots)
        near = ndimage.binary_dilation(mask, iterations=1)
        pattern_px_all = (white | (off_grey & (labels >= len(COLOURS)))) & near
        body_all = mask | pattern_px_all
        cover_c = cover[..., index]
        edge = near & (labels == len(names) - 2) & (cover_c > 0.05)  # anti-aliased rim nearer to grey
        components, n = ndimage.label(body_all, structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            comp = components == k
            body = comp & mask
            pattern_px = comp & pattern_px_all
            rim = edge & ndimage.binary_dilation(comp, iterations=1) & ~comp
            if float(cover_c[body].sum()) + float(pattern_px.sum()) < min_area or not body.any():
                continue
            filled = ndimage.binary_fill_holes(comp)
            hole = filled & ~comp
            cov = np.where(body | rim, cover_c, 0.0) + (pattern_px | hole)
            ys, xs = np.nonzero(cov >= 0.5)
            if len(xs) == 0:
                continue
            x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
            width = float(cov.max(axis=0).sum())
            height = float(cov.max(axis=1).sum())
            area = float(cov.sum())
            fill = area / max(width * height, 1e-6)
            total = max(float(filled.sum()), 1.0)
            white_fraction = float(pattern_px.sum()) / total
            hole_fraction = float(hole.sum()) / total
            solidity = area / _hull_area(cov >= 0.5)
            found.append(Detection(colour, classify_shape(fill, solidity), (float(x0), float(y0), float(x1), float(y1)),
                                   area, fill, classify_pattern(pattern_px, white_fraction, hole_fraction),
                                   white_fraction, hole_fraction, solidity))
    return sorted(found, key=lambda d: -d.area)


def classify_pattern(white: np.ndarray, white_fraction: float, hole_fraction: float) -> str:
    """``plain``, ``hollow`` (an enclosed background hole), ``stripes`` or ``dots``."""
    if hole_fraction >= 0.12 and hole_fraction > white_fraction:
        return "hollow"
    if white_fraction < 0.12:
        return "plain"
    horizontal = float((white[:, 1:] & white[:, :-1]).sum())
    vertical = float((white[1:, :] & white[:-1, :]).sum())
    return "stripes" if horizontal > 2.0 * vertical + 1 else "dots"


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match_caption(detections: list[Detection], wanted: list[tuple[str, str]]) -> dict[str, object]:
    """Compare detections with the ``(colour, shape)`` pairs a caption asks for.

    ``correct``: every asked object is found with its colour and shape and nothing else
    is there; ``found``: how many asked objects were found; ``colours``: how many asked
    colours appear at all.
    """
    remaining = list(detections)
    found = 0
    for colour, shape in wanted:
        hit = next((d for d in remaining if d.colour == colour and d.shape == shape), None)
        if hit is not None:
            remaining.remove(hit)
            found += 1
    colours = sum(1 for colour, _ in wanted if any(d.colour == colour for d in detections))
    return {"correct": found == len(wanted) and not remaining, "found": found, "colours": colours,
            "extra": len(remaining), "count_ok": len(detections) == len(wanted)}
