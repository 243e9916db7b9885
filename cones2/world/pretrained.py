"""The trained world model shipped with cones2, and the export that produces it.

The package holds one safetensors file, ``weights/world.safetensors``: the EMA weights of
the world model's UNet and text encoder from one training run (``cones2.world.train``),
with the run's settings, step and evaluation in its metadata. :func:`write_world_model`
rebuilds the architecture from :mod:`cones2.world.model`, loads those weights and writes
an ordinary diffusers pipeline folder (``cones2 demo-model DIR --world``);
:func:`export_weights` turns a checkpoint's ``pipeline/`` into such a file
(``python -m cones2.world.train ... --export-weights FILE``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import BaseModelError, UsageError

WEIGHTS = Path(__file__).parent / "weights" / "world.safetensors"
FORMAT = "cones2-world-weights"
FORMAT_VERSION = "1"
WORLD_NOTICE = "built-in world model (32 px shape scenes, trained; see the README's measurable world)"
_PARTS = ("unet", "text_encoder")


def export_weights(pipeline_dir: str | Path, out: str | Path, *, evaluation: dict[str, Any] | None = None) -> Path:
    """Write the UNet and text encoder of a world pipeline folder to one safetensors file."""
    from safetensors.torch import save

    from ..fsutil import atomic_write_bytes
    from .model import WORLD_MARKER, load_world_pipeline

    pipeline_dir, out = Path(pipeline_dir), Path(out)
    marker = pipeline_dir / WORLD_MARKER
    if not marker.is_file():
        raise UsageError(f"{pipeline_dir}: not a world model folder (no {WORLD_MARKER})")
    info = json.loads(marker.read_text())
    state = pipeline_dir.parent / "state.json"  # a checkpoint's pipeline/: record the run's settings too
    if state.is_file():
        saved = json.loads(state.read_text())
        info["train_config"] = saved.get("config", {})
    pipe = load_world_pipeline(pipeline_dir)
    tensors = {f"{part}.{k}": v.detach().contiguous().clone()
               for part in _PARTS for k, v in getattr(pipe, part).state_dict().items()}
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "info": json.dumps(info, sort_keys=True)}
    if evaluation is not None:
        meta["evaluation"] = json.dumps(evaluation, sort_keys=True)
    atomic_write_bytes(out, save(tensors, metadata=meta))
    return out


def read_metadata(weights: str | Path = WEIGHTS) -> dict[str, Any]:
    """The shipped file's metadata: ``info`` (run settings, step) and ``evaluation`` when recorded."""
    from safetensors import safe_open

    weights = Path(weights)
    if not weights.is_file():
        raise BaseModelError(f"{weights}: world model weights not found")
    try:
        with safe_open(str(weights), framework="pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as exc:  # safetensors raises its own errors for damaged headers
        raise BaseModelError(f"{weights}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise BaseModelError(f"{weights}: not a cones2 world weights file (format {meta.get('format')!r})")
    out: dict[str, Any] = {"info": json.loads(meta.get("info", "{}"))}
    if "evaluation" in meta:
        out["evaluation"] = json.loads(meta["evaluation"])
    return out


def write_world_model(directory: str | Path, *, weights: str | Path = WEIGHTS, overwrite: bool = False) -> Path:
    """Write the trained world model as a diffusers pipeline folder (loadable with ``from_pretrained``).

    The weights are read and fitted to the architecture before ``directory`` is touched, so a
    damaged file leaves an existing folder as it was, even with ``overwrite``.
    """
    from safetensors.torch import load

    from ..fsutil import clear_output_folder
    from .model import save_world_pipeline, world_pipeline

    weights = Path(weights)
    info = dict(read_metadata(weights)["info"])
    data = weights.read_bytes()
    tensors = load(data)
    pipe = world_pipeline(seed=int(info.get("seed", 0)), encoder=str(info.get("encoder", "phrase")))
    for part in _PARTS:
        state = {k[len(part) + 1 :]: v for k, v in tensors.items() if k.startswith(part + ".")}
        try:
            getattr(pipe, part).load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise BaseModelError(f"{weights}: the {part} weights do not fit the world model ({first})") from None
    info["weights_sha256"] = hashlib.sha256(data).hexdigest()
    return save_world_pipeline(pipe, clear_output_folder(directory, overwrite=overwrite), info)
