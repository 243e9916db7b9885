"""Cross-attention maps per subject token and their heat-map overlays.

:class:`AttentionRecorder` receives the conditional rows' attention probabilities of every
guided cross-attention call, keeps the columns of the tracked subjects' tokens (summed
over a word's tokens, averaged over heads), resizes them to the latent grid and averages
over layers and steps. The result, per subject, is an array ``(images, h, w)`` of
attention probabilities at latent resolution. :func:`save_attention_maps` writes each as
a heat-map overlay on its image, next to the layout preview.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


class AttentionRecorder:
    """Accumulates attention maps of subject tokens; see the module docstring."""

    def __init__(
        self,
        positions: Sequence[Mapping[str, list[int]]],
        grids: Mapping[int, tuple[int, int]],
        latent_size: tuple[int, int],
    ) -> None:
        # positions: per conditional row (or one row for all), subject key -> token positions
        self.positions = [dict(p) for p in positions]
        self.keys = list(self.positions[0]) if self.positions else []
        self.grids = dict(grids)
        self.latent_size = latent_size
        self.sums: dict[str, torch.Tensor] = {}
        self.calls = 0
        self.enabled = True

    def add(self, probs: torch.Tensor, query_length: int) -> None:
        """``probs``: ``(rows, heads, Q, K)`` softmax output of the conditional rows."""
        if not self.enabled or not self.keys:
            return
        h, w = self.grids[query_length]
        mean = probs.float().mean(dim=1)  # (rows, Q, K)
        rows = mean.shape[0]
        per_row = self.positions if len(self.positions) == rows else self.positions[:1] * rows
        for key in self.keys:
            cols = torch.stack([mean[r, :, per_row[r][key]].sum(dim=-1) for r in range(rows)])  # (rows, Q)
            grid = cols.view(rows, 1, h, w)
            if (h, w) != self.latent_size:
                grid = F.interpolate(grid, size=self.latent_size, mode="bilinear", align_corners=False)
            grid = grid[:, 0].detach().cpu()
            self.sums[key] = grid if key not in self.sums else self.sums[key] + grid
        self.calls += 1

    def maps(self) -> dict[str, np.ndarray]:
        """Average per subject: ``{key: (rows, h, w) float32}`` (empty if nothing recorded)."""
        if not self.calls:
            return {}
        return {k: (v / self.calls).numpy().astype(np.float32) for k, v in self.sums.items()}


def region_share(attention: np.ndarray, inside: np.ndarray) -> float:
    """Share of a map's total attention that falls inside a boolean region of the same grid."""
    total = float(attention.sum())
    return float(attention[inside].sum()) / total if total > 0 else 0.0


def _colormap(values: np.ndarray) -> np.ndarray:
    """A small perceptual-ish 'jet-like' ramp (blue -> cyan -> yellow -> red) on [0, 1]."""
    stops = np.array([[0, 0, 128], [0, 128, 255], [0, 255, 255], [255, 255, 0], [255, 64, 0], [200, 0, 0]], dtype=np.float32)
    x = np.clip(values, 0.0, 1.0) * (len(stops) - 1)
    i = np.clip(np.floor(x).astype(int), 0, len(stops) - 2)
    t = (x - i)[..., None]
    return (stops[i] * (1 - t) + stops[i + 1] * t).astype(np.uint8)


COLOUR_BAR_WIDTH = 12  # the scale beside every heat map: the colour ramp, then its two values
SCALE_WIDTH = COLOUR_BAR_WIDTH + 44


def heatmap_overlay(image: Any, attention: np.ndarray, alpha: float = 0.55, label: str | None = None,
                    scale: bool = True) -> Any:
    """An RGB PIL image: ``attention`` (any grid, stretched from its min to its max) over ``image``.

    With ``scale``, a colour bar to the right gives the attention probability at the top
    (the map's max) and bottom (its min) of the ramp.
    """
    from PIL import Image, ImageDraw

    base = image.convert("RGB") if hasattr(image, "convert") else Image.fromarray(np.asarray(image)).convert("RGB")
    a = np.asarray(attention, dtype=np.float32)
    low, high = float(a.min()), float(a.max())
    a = a - low
    a = a / a.max() if a.max() > 0 else a
    heat = Image.fromarray(_colormap(a)).resize(base.size, Image.BILINEAR)
    out = Image.blend(base, heat, alpha)
    if label:
        draw = ImageDraw.Draw(out)
        draw.rectangle([0, 0, 6 * len(label) + 6, 12], fill=(0, 0, 0))
        draw.text((3, 0), label, fill=(255, 255, 255))
    if not scale:
        return out
    w, h = out.size
    canvas = Image.new("RGB", (w + SCALE_WIDTH, h), (255, 255, 255))
    canvas.paste(out, (0, 0))
    ramp = np.linspace(1.0, 0.0, h, dtype=np.float32)[:, None].repeat(COLOUR_BAR_WIDTH, axis=1)
    canvas.paste(Image.fromarray(_colormap(ramp)), (w + 2, 0))
    draw = ImageDraw.Draw(canvas)
    draw.text((w + COLOUR_BAR_WIDTH + 4, 0), f"{high:.3g}", fill=(0, 0, 0))
    draw.text((w + COLOUR_BAR_WIDTH + 4, h - 11), f"{low:.3g}", fill=(0, 0, 0))
    return canvas


CAPTION_HEIGHT = 14


def captioned(tile: Any, caption: str) -> Any:
    """``tile`` with ``caption`` written in a white band under it."""
    from PIL import Image, ImageDraw

    out = Image.new("RGB", (tile.size[0], tile.size[1] + CAPTION_HEIGHT), (255, 255, 255))
    out.paste(tile, (0, 0))
    ImageDraw.Draw(out).text((2, tile.size[1] + 1), caption, fill=(0, 0, 0))
    return out


def save_attention_maps(
    directory: str | Path,
    images: Sequence[Any],
    maps: Mapping[str, np.ndarray],
    layout: Any = None,
    stem: str = "image",
    min_side: int = 256,
) -> list[Path]:
    """Write ``layout.png`` (if a layout is given: the layout preview, not an attention map),
    one overlay per subject and image (with its colour scale), and a
    ``{stem}-{i}-attention.png`` strip (layout preview, image, overlays side by side, each
    captioned).

    Small images (the demo model's 64 px) are enlarged to ``min_side`` for viewing.
    """
    from PIL import Image

    from .preview import render_layout_preview

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    preview = None
    if layout is not None and images:
        w, h = images[0].size
        scale = max(1, -(-min_side // min(w, h)))
        preview = render_layout_preview(layout, w * scale, h * scale)
        path = directory / "layout.png"
        preview.save(path)
        written.append(path)
    for i, img in enumerate(images):
        w, h = img.size
        scale = max(1, -(-min_side // min(w, h)))
        big = img.convert("RGB").resize((w * scale, h * scale), Image.NEAREST)
        tiles = [captioned(preview, "layout (region weights)")] if preview is not None else []
        tiles.append(captioned(big, f"image {i}"))
        for key, arr in maps.items():
            over = heatmap_overlay(big, arr[min(i, arr.shape[0] - 1)], label=key)
            path = directory / f"{stem}-{i}-attention-{_safe(key)}.png"
            over.save(path)
            written.append(path)
            tiles.append(captioned(over, f"attention to {key!r}"))
        strip = Image.new("RGB", (sum(t.size[0] for t in tiles) + 4 * (len(tiles) - 1), max(t.size[1] for t in tiles)), (255, 255, 255))
        x = 0
        for t in tiles:
            strip.paste(t, (x, 0))
            x += t.size[0] + 4
        path = directory / f"{stem}-{i}-attention.png"
        strip.save(path)
        written.append(path)
    return written


def _safe(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key)
