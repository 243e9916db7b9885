"""A picture of a layout: each region filled in its own colour, outlined and labelled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MAX_PREVIEW_SIDE = 8192
PALETTE = [
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40),
]


def render_layout_preview(layout: Any, width: int = 512, height: int = 512, background: tuple[int, int, int] = (245, 245, 245)) -> Any:
    """An RGB PIL image of ``width x height`` showing every region of ``layout``."""
    from PIL import Image, ImageDraw

    from ..errors import LayoutError

    if not (1 <= width <= MAX_PREVIEW_SIDE and 1 <= height <= MAX_PREVIEW_SIDE):
        raise LayoutError(f"layout preview: size {width}x{height} must be 1 to {MAX_PREVIEW_SIDE} pixels a side")
    layout.check_size(height, width)
    canvas = np.zeros((height, width, 3), dtype=np.float32) + np.array(background, dtype=np.float32)
    cells = layout.cells(height, width)
    for i, region in enumerate(layout.regions):
        colour = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
        inside = cells[region.subject]
        canvas[inside] = canvas[inside] * 0.45 + colour * 0.55
    image = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for i, region in enumerate(layout.regions):
        colour = PALETTE[i % len(PALETTE)]
        inside = cells[region.subject]
        ys, xs = np.nonzero(inside)
        x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=max(1, min(width, height) // 128))
        label = region_label(region)
        tw = 6 * len(label) + 6
        draw.rectangle([x0, y0, x0 + tw, y0 + 12], fill=colour)
        draw.text((x0 + 3, y0), label, fill=(255, 255, 255))
    return image


def region_label(region: Any) -> str:
    """What a preview writes on a region: its word and what the number is ("dog: inside +2.5")."""
    return f"{region.subject}: inside {region.weight_in:+g}"


def save_layout_preview(layout: Any, path: str | Path, width: int = 512, height: int = 512) -> Path:
    from ..errors import UsageError

    path = Path(path)
    image = render_layout_preview(layout, width, height)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # PIL: no format for the file's extension
        raise UsageError(f"cannot write {path}: {exc}") from None
    return path
