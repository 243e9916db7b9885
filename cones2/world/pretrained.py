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
import os
import tempfile
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
    from safetensors.torch import save_file

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
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the file is meant to be shared
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
    """Write the trained world model as a diffusers pipeline folder (loadable with ``from_pretrained``)."""
    import shutil

    from safetensors.torch import load_file

    from .model import (
        assemble,
        build_text_encoder,
        build_tokenizer,
        build_unet,
        save_world_pipeline,
    )

    directory, weights = Path(directory), Path(weights)
    meta = read_metadata(weights)
    info = dict(meta["info"])
    if directory.exists() and any(directory.iterdir()):
        if not overwrite:
            raise UsageError(f"{directory} exists and is not empty (use overwrite=True / --force)")
        shutil.rmtree(directory)
    tensors = load_file(str(weights))
    tokenizer = build_tokenizer()
    unet = build_unet(int(info.get("seed", 0)) + 1)
    encoder = build_text_encoder(tokenizer, str(info.get("encoder", "phrase")), int(info.get("seed", 0)))
    for part, model in (("unet", unet), ("text_encoder", encoder)):
        state = {k[len(part) + 1 :]: v for k, v in tensors.items() if k.startswith(part + ".")}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise BaseModelError(f"{weights}: the {part} weights do not fit the world model ({first})") from None
    info["weights_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    return save_world_pipeline(assemble(unet, encoder, tokenizer), directory, info)
