"""Training images: finding them, checking them, turning them into cached latents.

Resize/crop rule: an image's shorter side must be at least the training resolution
(smaller images are refused, never upscaled); it is resized so that its shorter side
equals the resolution (Lanczos), then the centre square is cropped. Every image is
read and checked before any model is loaded.

Latents are computed once per image: the VAE's latent distribution (mean and standard
deviation) is cached and a latent is sampled from it at every step, as re-encoding the
image every step would (the reference does that), without the VAE's cost. The flip
augmentation mirrors the cached distribution along its width.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TrainingError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class TrainingImage:
    """One checked image, already cropped to a square of the training resolution (RGB, uint8)."""

    path: str
    sha256: str
    pixels: Any  # numpy (resolution, resolution, 3) uint8
    original_size: tuple[int, int]  # (width, height)


def collect_images(sources: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Expand files and folders (their image files, sorted, not recursive) into a list of files."""
    found: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise UsageError(f"training image {source}: no such file or folder")
    if not found:
        raise UsageError("no training images (give image files or folders that contain .png/.jpg/.webp images)")
    return found


def load_image(path: Path, resolution: int) -> TrainingImage:
    """Read, check, resize and centre-crop one image; one TrainingError line on any problem."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TrainingError(f"training image {path}: cannot read it ({exc.strerror or exc})") from None
    digest = hashlib.sha256(data).hexdigest()
    try:
        import io

        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()  # structure and checksums; the image must be reopened after verify()
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = "not an image" if isinstance(exc, UnidentifiedImageError) else f"corrupt ({' '.join(str(exc).split()) or type(exc).__name__})"
        raise TrainingError(f"training image {path}: {reason}") from None
    width, height = rgb.size
    if min(width, height) < resolution:
        raise TrainingError(
            f"training image {path}: {width}x{height} is smaller than the training resolution {resolution} "
            "(the shorter side must be at least the resolution; use a larger image or a lower --resolution)"
        )
    scale = resolution / min(width, height)
    new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if new_size != (width, height):
        rgb = rgb.resize(new_size, Image.Resampling.LANCZOS)
    left = (new_size[0] - resolution) // 2
    top = (new_size[1] - resolution) // 2
    rgb = rgb.crop((left, top, left + resolution, top + resolution))
    return TrainingImage(str(path), digest, np.asarray(rgb, dtype=np.uint8).copy(), (width, height))


def load_images(sources: Iterable[str | os.PathLike[str]], resolution: int) -> list[TrainingImage]:
    return [load_image(p, resolution) for p in collect_images(sources)]


def to_tensor(images: list[TrainingImage]) -> torch.Tensor:
    """(N, 3, R, R) float32 in [-1, 1], as the VAE expects."""
    import numpy as np
    import torch

    stacked = np.stack([img.pixels for img in images]).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()


@dataclass
class LatentCache:
    """The VAE's latent distribution of every training image, scaled for the UNet."""

    mean: torch.Tensor  # (N, C, h, w), already multiplied by the VAE's scaling factor
    std: torch.Tensor

    def __len__(self) -> int:
        return int(self.mean.shape[0])

    def sample(self, indices: list[int], noise: torch.Tensor, flips: list[bool]) -> torch.Tensor:
        """Latents of ``indices`` drawn with ``noise`` (same shape), mirrored where ``flips`` says."""
        import torch

        latents = self.mean[indices] + self.std[indices] * noise.to(self.mean.device, self.mean.dtype)
        if any(flips):
            mask = torch.tensor(flips, device=latents.device)[:, None, None, None]
            latents = torch.where(mask, latents.flip(-1), latents)
        return latents


def encode_latents(vae: Any, images: list[TrainingImage], *, device: Any, dtype: Any, batch_size: int = 4) -> LatentCache:
    """Encode every image once through the frozen VAE."""
    import torch

    pixels = to_tensor(images)
    scale = float(getattr(vae.config, "scaling_factor", 0.18215))
    means, stds = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            chunk = pixels[start : start + batch_size].to(device=device, dtype=dtype)
            dist = vae.encode(chunk).latent_dist
            means.append(dist.mean.float() * scale)
            stds.append(dist.std.float() * scale)
    return LatentCache(torch.cat(means), torch.cat(stds))
