"""Layouts: a region per subject word, turned into per-resolution attention weight maps.

A :class:`Layout` holds one :class:`Region` per subject key (``"dog"`` or ``"dog#2"``,
see :class:`cones2.residual.SubjectKey`). A region is given as

* a box, normalised ``x0, y0, x1, y1`` in [0, 1] with the origin at the top left (the
  GLIGEN/BoxDiff convention) -- :meth:`Layout.from_boxes`; boxes in pixels are accepted
  with ``pixels=True`` and the image size;
* a binary mask image -- :meth:`Layout.from_masks`;
* a colour-coded image and a map colour -> word (or (word, weight)) --
  :meth:`Layout.from_colour_image`; every pixel takes the nearest listed colour when it
  lies within ``tolerance`` (Euclidean RGB distance), so antialiased or JPEG layouts work.

Each region has an inside weight (default +2.5) and an outside weight (default -1e8:
the subject's tokens are switched off outside its region), as in the reference.

**Overlaps.** Each region's weights only touch the columns of its own subject's tokens,
so overlapping regions never fight over a number. The ``overlap`` rule says what a
pixel covered by several regions means:

* ``"share"`` (default): the pixel is inside every region that covers it;
* ``"last"``: the region listed last owns the pixel; earlier regions treat it as outside
  (draw order, like painting layers);
* ``"error"``: overlapping regions are refused with a :class:`~cones2.errors.LayoutError`.

A colour-coded image can not overlap (each pixel has one colour).

:meth:`Layout.weight_maps` turns the layout into the matrix ``W[pixel, token]`` of
METHOD.md section 3 for every attention resolution of the UNet: ``weight_in`` /
``weight_out`` in the columns of the subject's tokens, 0 in every other column.
Two resize rules (the sampler setting ``layout_resize``):

* ``"area"`` (cones2): a cell is inside when at least half of it is covered; a region
  that would vanish keeps its best-covered cell.
* ``"bilinear"`` (the reference): the full-resolution map of ``weight_in`` / ``weight_out``
  is resized to each resolution by bilinear interpolation with aligned corners, so a
  boundary cell mixes towards ``weight_out`` (-1e8) and regions shrink at their edges.
  Boxes are drawn at the image size first (a pixel is inside at >= 50 % cover).

Two occurrence rules (``occurrences``): ``"named"`` (cones2) weights only the named
occurrence of a word (the first for a bare ``dog``); ``"all"`` (the reference) weights
every occurrence of a bare word's tokens, unless another region names one of them
(``dog#2``), in which case the bare word keeps its first occurrence.

A colour layout built without an explicit ``tolerance`` follows the sampler's
``colour_match`` setting (:meth:`Layout.matched`): exact RGB matches (the reference)
or the nearest listed colour within ``colour_tolerance``.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LayoutError, TokenLocationError

DEFAULT_WEIGHT_IN = 2.5
DEFAULT_WEIGHT_OUT = -1e8
DEFAULT_COLOUR_TOLERANCE = 60.0
OVERLAP_RULES = ("share", "last", "error")
RESIZE_RULES = ("area", "bilinear")
OCCURRENCE_RULES = ("named", "all")
_ASPECT_TOLERANCE = 0.02


@dataclass(frozen=True)
class Region:
    """Where one subject goes: a normalised box or a boolean mask, and its two weights."""

    subject: str
    box: tuple[float, float, float, float] | None = None
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    weight_in: float = DEFAULT_WEIGHT_IN
    weight_out: float = DEFAULT_WEIGHT_OUT
    source: str = "box"

    def __post_init__(self) -> None:
        from ..residual import SubjectKey

        try:
            SubjectKey.parse(self.subject)
        except TokenLocationError as exc:
            raise LayoutError(f"layout: {exc}") from None
        if (self.box is None) == (self.mask is None):
            raise LayoutError(f"layout region {self.subject!r}: give exactly one of a box or a mask")
        if not (math.isfinite(self.weight_in) and math.isfinite(self.weight_out)):
            raise LayoutError(f"layout region {self.subject!r}: weights must be finite numbers")
        if self.box is not None:
            _check_box(self.subject, self.box)
        else:
            mask = self.mask
            if mask.ndim != 2 or mask.dtype != bool:
                raise LayoutError(f"layout region {self.subject!r}: a mask must be a 2-D boolean array")
            if not mask.any():
                raise LayoutError(f"layout region {self.subject!r}: the mask is empty")

    def coverage(self, height: int, width: int) -> np.ndarray:
        """Fraction of each cell of a ``height x width`` grid that the region covers (float32)."""
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            xs = _interval_cover(x0 * width, x1 * width, width)
            ys = _interval_cover(y0 * height, y1 * height, height)
            return np.outer(ys, xs).astype(np.float32)
        return _area_resize(self.mask.astype(np.float32), height, width)

    def cells(self, height: int, width: int) -> np.ndarray:
        """Boolean inside-mask on a ``height x width`` grid (at least one cell)."""
        cover = self.coverage(height, width)
        inside = cover >= 0.5
        if not inside.any():
            inside = cover >= cover.max() - 1e-6
        return inside


def _check_box(subject: str, box: Sequence[float]) -> None:
    if len(box) != 4:
        raise LayoutError(f"layout box {subject!r}: need 4 numbers x0,y0,x1,y1, got {len(box)}")
    x0, y0, x1, y1 = box
    if not all(math.isfinite(v) for v in box):
        raise LayoutError(f"layout box {subject!r}: coordinates must be finite numbers")
    if min(box) < 0.0 or max(box) > 1.0:
        raise LayoutError(f"layout box {subject!r}: {tuple(box)} lies outside [0, 1] (normalised x0,y0,x1,y1)")
    if x1 <= x0 or y1 <= y0:
        raise LayoutError(f"layout box {subject!r}: {tuple(box)} is empty (need x0 < x1 and y0 < y1)")


def _interval_cover(a: float, b: float, n: int) -> np.ndarray:
    """How much of each unit cell [i, i+1) of 0..n the interval [a, b] covers."""
    edges = np.arange(n, dtype=np.float64)
    return np.clip(np.minimum(edges + 1, b) - np.maximum(edges, a), 0.0, 1.0)


def _area_resize(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Average ``array`` over the cells of a ``height x width`` grid (exact area weights)."""
    src_h, src_w = array.shape
    if (src_h, src_w) == (height, width):
        return array.astype(np.float32)
    rows = np.stack([_interval_cover(i * src_h / height, (i + 1) * src_h / height, src_h) for i in range(height)])
    cols = np.stack([_interval_cover(j * src_w / width, (j + 1) * src_w / width, src_w) for j in range(width)])
    rows /= rows.sum(axis=1, keepdims=True)
    cols /= cols.sum(axis=1, keepdims=True)
    return (rows @ array.astype(np.float64) @ cols.T).astype(np.float32)


MAX_IMAGE_PIXELS = 8192 * 8192  # below PIL's decompression-bomb limits, far above any layout


def _open_image(path: Path, what: str) -> Any:
    """``path`` opened with only its header read, refused when not an image or over the pixel bound."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the bound below says it in one line
            img = Image.open(path)
    except FileNotFoundError:
        raise LayoutError(f"{what} {path}: no such file") from None
    except Image.DecompressionBombError:
        raise LayoutError(f"{what} {path}: far more pixels than a layout needs (at most {MAX_IMAGE_PIXELS}); scale it down") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise LayoutError(f"{what} {path}: not a readable image ({type(exc).__name__})") from None
    if img.width * img.height > MAX_IMAGE_PIXELS:
        img.close()
        raise LayoutError(
            f"{what} {path}: {img.width}x{img.height} pixels is more than a layout needs "
            f"(at most {MAX_IMAGE_PIXELS} pixels); scale it down"
        )
    return img


def check_image_file(path: str | os.PathLike[str], what: str) -> None:
    """Refuse a layout file that is missing, not an image or too large, reading its header only.

    Cheap: run before any model is loaded."""
    _open_image(Path(path), what).close()


def _load_image(image: Any, what: str) -> np.ndarray:
    """An image (path, PIL image or array) as an array; RGB(A) kept, no resizing."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        with _open_image(path, what) as img:
            try:
                img.load()
            except OSError as exc:
                raise LayoutError(f"{what} {path}: not a readable image ({type(exc).__name__})") from None
            image = img.copy()
    if hasattr(image, "convert") and hasattr(image, "mode"):  # PIL image
        mode = image.mode
        if mode in ("1", "L", "I", "F", "I;16"):
            return np.asarray(image.convert("L"))
        return np.asarray(image.convert("RGB"))
    return np.asarray(image)


def _as_mask(image: Any, subject: str) -> np.ndarray:
    array = _load_image(image, f"layout mask {subject!r}")
    if array.ndim == 3:
        array = array[..., :3].max(axis=-1)
    if array.ndim != 2:
        raise LayoutError(f"layout mask {subject!r}: expected a 2-D image, got shape {tuple(array.shape)}")
    if array.dtype == bool:
        return array
    array = array.astype(np.float32)
    top = 1.0 if array.max() <= 1.0 else 255.0
    return array >= top / 2


def parse_colour(text: str | Sequence[int]) -> tuple[int, int, int]:
    """``"255,0,0"``, ``"#ff0000"`` or a triple -> an RGB triple."""
    if not isinstance(text, str):
        values = [int(v) for v in text]
    elif text.strip().startswith("#"):
        hex_ = text.strip()[1:]
        if len(hex_) != 6:
            raise LayoutError(f"bad colour {text!r}: use R,G,B or #rrggbb")
        values = [int(hex_[i : i + 2], 16) for i in (0, 2, 4)]
    else:
        try:
            values = [int(v) for v in text.split(",")]
        except ValueError:
            raise LayoutError(f"bad colour {text!r}: use R,G,B or #rrggbb") from None
    if len(values) != 3 or not all(0 <= v <= 255 for v in values):
        raise LayoutError(f"bad colour {text!r}: need three values in 0..255")
    return (values[0], values[1], values[2])


class Layout:
    """Regions for subject words; see the module docstring for the conventions."""

    def __init__(self, regions: Iterable[Region], *, overlap: str = "share", size: tuple[int, int] | None = None) -> None:
        if overlap not in OVERLAP_RULES:
            raise LayoutError(f"layout: unknown overlap rule {overlap!r} (one of {', '.join(OVERLAP_RULES)})")
        self.regions: tuple[Region, ...] = tuple(regions)
        self.overlap = overlap
        self._rematch: Any = None  # rebuilds a colour layout with another tolerance (see matched())
        if not self.regions:
            raise LayoutError("layout: no regions")
        seen: set[str] = set()
        for r in self.regions:
            if r.subject in seen:
                raise LayoutError(f"layout: subject {r.subject!r} has more than one region")
            seen.add(r.subject)
        sizes = {tuple(r.mask.shape) for r in self.regions if r.mask is not None}
        if len(sizes) > 1:
            raise LayoutError(f"layout: masks of different sizes {sorted(sizes)} (all masks must have one size)")
        mask_size = next(iter(sizes)) if sizes else None
        if size is not None and mask_size is not None and tuple(size) != mask_size:
            raise LayoutError(f"layout: masks are {mask_size[1]}x{mask_size[0]} but the layout size is {size[1]}x{size[0]}")
        self.size: tuple[int, int] | None = tuple(size) if size is not None else mask_size  # (height, width)
        if overlap == "error":
            self._refuse_overlaps()

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_boxes(
        cls,
        boxes: Mapping[str, Sequence[float]],
        *,
        weights: Mapping[str, float | tuple[float, float]] | None = None,
        pixels: bool = False,
        size: tuple[int, int] | None = None,
        overlap: str = "share",
    ) -> Layout:
        """Boxes ``{subject: (x0, y0, x1, y1)}``, normalised to [0, 1] unless ``pixels``.

        ``size`` is ``(height, width)`` of the image; it is needed for pixel boxes.
        ``weights`` maps a subject to its inside weight or to ``(inside, outside)``.
        """
        regions = []
        for subject, box in boxes.items():
            box = tuple(float(v) for v in box)
            if pixels:
                if size is None:
                    raise LayoutError("layout: boxes in pixels need the image size (height, width)")
                h, w = size
                if len(box) == 4:
                    if min(box) < 0 or box[2] > w or box[3] > h or box[0] > w or box[1] > h:
                        raise LayoutError(f"layout box {subject!r}: {box} lies outside the {w}x{h} image")
                    box = (box[0] / w, box[1] / h, box[2] / w, box[3] / h)
            w_in, w_out = _weights(subject, weights)
            regions.append(Region(subject, box=box, weight_in=w_in, weight_out=w_out, source="box"))
        return cls(regions, overlap=overlap, size=size)

    @classmethod
    def from_masks(
        cls,
        masks: Mapping[str, Any],
        *,
        weights: Mapping[str, float | tuple[float, float]] | None = None,
        overlap: str = "share",
    ) -> Layout:
        """Binary masks ``{subject: image path | PIL image | array}``; white/true = inside."""
        regions = []
        for subject, image in masks.items():
            w_in, w_out = _weights(subject, weights)
            regions.append(Region(subject, mask=_as_mask(image, subject), weight_in=w_in, weight_out=w_out, source="mask"))
        return cls(regions, overlap=overlap)

    @classmethod
    def from_colour_image(
        cls,
        image: Any,
        colours: Mapping[Any, str | tuple[str, float]],
        *,
        tolerance: float | None = None,
        weight_out: float = DEFAULT_WEIGHT_OUT,
    ) -> Layout:
        """A colour-coded layout; ``colours`` maps a colour to a word or ``(word, inside weight)``.

        Each pixel takes the nearest listed colour if it is within ``tolerance``
        (Euclidean RGB distance; 0 = exact matches only); other pixels (background) belong
        to no subject. Several colours may name one word (their regions are joined).
        Without ``tolerance`` the regions are matched within the default 60 here and the
        sampler re-matches them by its ``colour_match`` setting (:meth:`matched`).
        """
        if not colours:
            raise LayoutError("layout image: no colour -> word map given")
        follows_settings = tolerance is None
        if follows_settings:
            tolerance = DEFAULT_COLOUR_TOLERANCE
        if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < float("inf")):
            raise LayoutError(f"layout image: colour tolerance must be a finite number >= 0, not {tolerance}")
        array = _load_image(image, "layout image")
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] < 3:
            raise LayoutError(f"layout image: expected an RGB image, got shape {tuple(array.shape)}")
        rgb = array[..., :3].astype(np.float32)
        if rgb.max() <= 1.0 and array.dtype != np.uint8:
            rgb = rgb * 255.0
        keys = list(colours)
        palette = np.array([parse_colour(c) for c in keys], dtype=np.float32)
        dist = np.linalg.norm(rgb[:, :, None, :] - palette[None, None, :, :], axis=-1)
        nearest = dist.argmin(axis=-1)
        matched = dist.min(axis=-1) <= tolerance
        per_word: dict[str, tuple[np.ndarray, float]] = {}
        for i, key in enumerate(keys):
            value = colours[key]
            word, w_in = (value, DEFAULT_WEIGHT_IN) if isinstance(value, str) else (value[0], float(value[1]))
            hit = matched & (nearest == i)
            if not hit.any():
                raise LayoutError(
                    f"layout image: colour {parse_colour(key)} for {word!r} matches no pixel (tolerance {tolerance:g})"
                )
            if word in per_word:
                old, old_w = per_word[word]
                if old_w != w_in:
                    raise LayoutError(f"layout image: colours for {word!r} give different weights ({old_w:g}, {w_in:g})")
                hit = hit | old
            per_word[word] = (hit, w_in)
        regions = [
            Region(word, mask=m, weight_in=w, weight_out=weight_out, source="colour") for word, (m, w) in per_word.items()
        ]
        layout = cls(regions, overlap="share")
        if follows_settings:
            layout._rematch = lambda tol: cls.from_colour_image(array, colours, tolerance=tol, weight_out=weight_out)
        return layout

    def matched(self, colour_match: str, tolerance: float = DEFAULT_COLOUR_TOLERANCE) -> Layout:
        """This layout with its colours matched by the sampler's rule (``"exact"`` or ``"nearest"``).

        Only a colour layout built without an explicit tolerance changes; every other
        layout is returned as it is.
        """
        if colour_match not in ("exact", "nearest"):
            raise LayoutError(f"layout: unknown colour match {colour_match!r} (exact or nearest)")
        if self._rematch is None:
            return self
        return self._rematch(0.0 if colour_match == "exact" else float(tolerance))

    # ------------------------------------------------------------------ queries

    @property
    def subjects(self) -> list[str]:
        return [r.subject for r in self.regions]

    def __repr__(self) -> str:
        return f"Layout({', '.join(self.subjects)}; overlap={self.overlap!r}, size={self.size})"

    def check_size(self, height: int, width: int) -> None:
        """Refuse masks whose aspect ratio differs from the image's (they are resized by area)."""
        if self.size is None:
            return
        mh, mw = self.size
        if abs(mh / mw - height / width) > _ASPECT_TOLERANCE * (height / width):
            raise LayoutError(
                f"layout masks are {mw}x{mh} pixels, which does not fit a {width}x{height} image (different aspect ratio)"
            )

    def cells(self, height: int, width: int) -> dict[str, np.ndarray]:
        """Inside-masks on a ``height x width`` grid, after the overlap rule."""
        out = {r.subject: r.cells(height, width) for r in self.regions}
        if self.overlap == "last":
            taken = np.zeros((height, width), dtype=bool)
            for r in reversed(self.regions):
                mine = out[r.subject] & ~taken
                taken |= out[r.subject]
                if mine.any():
                    out[r.subject] = mine
        return out

    def _full_maps(self, height: int, width: int) -> dict[str, Any]:
        """Each region's ``weight_in`` / ``weight_out`` map at full resolution (float32 tensors),
        after the overlap rule; masks keep their own size, boxes are drawn at ``height x width``."""
        import torch

        inside: dict[str, np.ndarray] = {}
        for r in self.regions:
            inside[r.subject] = r.mask if r.mask is not None else r.coverage(height, width) >= 0.5
        if self.overlap == "last":
            shapes = {m.shape for m in inside.values()}
            if len(shapes) == 1:
                taken = np.zeros(next(iter(shapes)), dtype=bool)
                for r in reversed(self.regions):
                    mine = inside[r.subject] & ~taken
                    taken |= inside[r.subject]
                    if mine.any():
                        inside[r.subject] = mine
        return {
            r.subject: torch.where(torch.from_numpy(np.ascontiguousarray(inside[r.subject])),
                                   torch.tensor(r.weight_in), torch.tensor(r.weight_out)).float()
            for r in self.regions
        }

    def _refuse_overlaps(self) -> None:
        h, w = self.size or (64, 64)
        cells = {r.subject: r.coverage(h, w) > 0 for r in self.regions}
        names = list(cells)
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if (cells[a] & cells[b]).any():
                    raise LayoutError(f"layout: regions {a!r} and {b!r} overlap (overlap rule 'error')")

    def positions(self, tokenizer: Any, prompt: str, occurrences: str = "named") -> dict[str, list[int]]:
        """Token positions of every region's subject in ``prompt`` (see the occurrence rules)."""
        from ..residual import SubjectKey, find_occurrences, locate_word, word_token_ids

        if occurrences not in OCCURRENCE_RULES:
            raise LayoutError(f"layout: unknown occurrence rule {occurrences!r} (one of {', '.join(OCCURRENCE_RULES)})")
        keys = {r.subject: SubjectKey.parse(r.subject) for r in self.regions}
        named_words = {k.word for k in keys.values() if k.occurrence is not None}
        found: dict[str, list[int]] = {}
        claimed: dict[int, str] = {}
        for r in self.regions:
            key = keys[r.subject]
            try:
                pos = locate_word(tokenizer, prompt, key.word, key.occurrence)
                if occurrences == "all" and key.occurrence is None and key.word not in named_words:
                    ids = word_token_ids(tokenizer, key.word)
                    row = tokenizer(prompt, truncation=True, max_length=getattr(tokenizer, "model_max_length", 77)).input_ids
                    pos = [s + j for s in find_occurrences(row, ids, tokenizer) for j in range(len(ids))]
            except TokenLocationError as exc:
                raise LayoutError(f"layout region {r.subject!r}: {exc}") from None
            for p in pos:
                if p in claimed:
                    raise LayoutError(f"layout regions {claimed[p]!r} and {r.subject!r} name the same token")
                claimed[p] = r.subject
            found[r.subject] = pos
        return found

    def weight_maps(
        self,
        tokenizer: Any,
        prompts: str | Sequence[str],
        grids: Iterable[tuple[int, int]],
        *,
        num_tokens: int | None = None,
        resize: str = "area",
        occurrences: str = "named",
        image_size: tuple[int, int] | None = None,
    ) -> dict[int, Any]:
        """``{h*w: W}`` with ``W`` a float32 tensor ``(rows, h*w, tokens)`` per grid ``(h, w)``.

        ``rows`` is 1 for a single prompt, else one row per prompt. ``resize`` and
        ``occurrences`` are the rules of the module docstring; ``image_size``
        ``(height, width)`` is where boxes are drawn for the bilinear rule (default: the
        layout's size, else 8 times the finest grid).
        """
        import torch

        if resize not in RESIZE_RULES:
            raise LayoutError(f"layout: unknown resize rule {resize!r} (one of {', '.join(RESIZE_RULES)})")
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        grids = list(grids)
        num_tokens = num_tokens or int(getattr(tokenizer, "model_max_length", 77))
        per_prompt = [self.positions(tokenizer, p, occurrences) for p in prompts]
        if len(set(map(_freeze, per_prompt))) == 1:
            per_prompt = per_prompt[:1]
        full = None
        if resize == "bilinear":
            fh, fw = image_size or self.size or (8 * max(g[0] for g in grids), 8 * max(g[1] for g in grids))
            full = self._full_maps(fh, fw)
        maps: dict[int, Any] = {}
        for h, w in grids:
            columns: dict[str, Any] = {}
            if full is not None:
                for r in self.regions:
                    resized = torch.nn.functional.interpolate(full[r.subject][None, None], size=(h, w), mode="bilinear", align_corners=True)
                    columns[r.subject] = resized.reshape(-1)
            else:
                cells = self.cells(h, w)
                for r in self.regions:
                    inside = torch.from_numpy(cells[r.subject].reshape(-1))
                    columns[r.subject] = torch.where(inside, torch.tensor(r.weight_in), torch.tensor(r.weight_out)).float()
            out = torch.zeros(len(per_prompt), h * w, num_tokens, dtype=torch.float32)
            for row, positions in enumerate(per_prompt):
                for r in self.regions:
                    column = columns[r.subject]
                    for p in positions[r.subject]:
                        if p >= num_tokens:
                            raise LayoutError(f"layout region {r.subject!r}: token {p} beyond the {num_tokens}-token context")
                        out[row, :, p] = column
            maps[h * w] = out
        return maps

    def with_weights(self, weights: Mapping[str, float | tuple[float, float]]) -> Layout:
        """A copy with other inside (or inside, outside) weights for some subjects."""
        unknown = set(weights) - set(self.subjects)
        if unknown:
            raise LayoutError(f"layout: weight for {sorted(unknown)[0]!r}, which has no region")
        regions = []
        for r in self.regions:
            if r.subject in weights:
                w_in, w_out = _weights(r.subject, weights, r.weight_out)
                r = replace(r, weight_in=w_in, weight_out=w_out)
            regions.append(r)
        out = Layout(regions, overlap=self.overlap, size=self.size)
        if self._rematch is not None:
            rematch = self._rematch
            out._rematch = lambda tol: rematch(tol).with_weights(weights)
        return out

    def describe(self) -> list[dict[str, Any]]:
        """JSON-friendly description (for image metadata and ``--json``)."""
        out = []
        for r in self.regions:
            item: dict[str, Any] = {"subject": r.subject, "source": r.source, "weight_in": r.weight_in, "weight_out": r.weight_out}
            if r.box is not None:
                item["box"] = [round(v, 6) for v in r.box]
            else:
                ys, xs = np.nonzero(r.mask)
                h, w = r.mask.shape
                item["mask_size"] = [w, h]
                item["mask_fraction"] = round(float(r.mask.mean()), 6)
                item["bbox"] = [round(xs.min() / w, 4), round(ys.min() / h, 4), round((xs.max() + 1) / w, 4), round((ys.max() + 1) / h, 4)]
            out.append(item)
        return out

    @staticmethod
    def combine(layouts: Iterable[Layout], overlap: str = "share") -> Layout:
        """One layout from several (e.g. boxes and masks given together)."""
        regions: list[Region] = []
        for lay in layouts:
            regions.extend(lay.regions)
        return Layout(regions, overlap=overlap)


def _freeze(positions: Mapping[str, list[int]]) -> tuple:
    return tuple(sorted((k, tuple(v)) for k, v in positions.items()))


def _weights(
    subject: str, weights: Mapping[str, float | tuple[float, float]] | None, default_out: float = DEFAULT_WEIGHT_OUT
) -> tuple[float, float]:
    if not weights or subject not in weights:
        return DEFAULT_WEIGHT_IN, default_out
    value = weights[subject]
    if isinstance(value, (tuple, list)):
        return float(value[0]), float(value[1])
    return float(value), default_out


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"0.05,0.3,0.5,0.95"`` -> a 4-tuple (validated later by the layout)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise LayoutError(f"bad box {text!r}: use x0,y0,x1,y1") from None
    if len(values) != 4:
        raise LayoutError(f"bad box {text!r}: need 4 numbers x0,y0,x1,y1")
    return values  # type: ignore[return-value]


def latent_grids(latent_height: int, latent_width: int, levels: int) -> list[tuple[int, int]]:
    """The ``(h, w)`` of each UNet level: halved (rounding up) per down-sampling."""
    grids = []
    h, w = latent_height, latent_width
    for _ in range(levels):
        grids.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return grids
