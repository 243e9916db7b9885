"""Training checkpoints: ``checkpoint-N`` folders, format ``cones2.train-checkpoint`` version 1.

A checkpoint holds everything a run needs to continue exactly as if it had not stopped:

* ``text_encoder.safetensors`` – the encoder being tuned;
* ``optimizer.safetensors`` – AdamW's per-parameter state, and the training random
  generator's state (``generator``), which draws data order, noise and timesteps;
* ``state.json`` – format, format version, step, the remaining data order, the loss of
  every step so far, and what the run must match to resume it (settings, base model
  fingerprint, word, image digests).

No pickle is involved: tensors are safetensors, the rest JSON. A checkpoint is written
to a temporary folder and renamed into place, so a crash leaves either the old set of
checkpoints or the new one. At most ``limit`` checkpoints are kept (oldest removed).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TrainingError
from ..fsutil import fsync_dir

if TYPE_CHECKING:  # pragma: no cover
    import torch

FORMAT_NAME = "cones2.train-checkpoint"
FORMAT_VERSION = 1
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainState:
    """What changes from step to step besides the weights and the optimizer."""

    step: int
    order: list[int]  # image indices still to visit in this pass over the images
    losses: list[float]
    identity: dict[str, Any]  # must equal the resuming run's (settings, base, word, images)
    extra: dict[str, Any] = field(default_factory=dict)


def list_checkpoints(folder: str | os.PathLike[str]) -> list[Path]:
    """``checkpoint-N`` folders under ``folder``, oldest step first."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def find_checkpoint(folder: str | os.PathLike[str], resume: str) -> Path | None:
    """``"latest"`` (None when there is none yet) or a checkpoint folder's path or name."""
    if resume == "latest":
        found = list_checkpoints(folder)
        return found[-1] if found else None
    path = Path(resume).expanduser()
    if not path.is_dir():
        path = Path(folder) / resume
    if not (path / "state.json").is_file():
        raise TrainingError(f"checkpoint {resume}: not found (give 'latest', a checkpoint-N name or its folder)")
    return path


def _optimizer_tensors(optimizer: Any) -> dict[str, torch.Tensor]:
    tensors: dict[str, Any] = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{key}.{index}"] = value.detach().cpu().contiguous().clone()
    return tensors


def save_checkpoint(folder: str | os.PathLike[str], encoder: Any, optimizer: Any, generator: torch.Generator,
                    state: TrainState, limit: int | None) -> Path:
    """Write ``checkpoint-<step>`` atomically and keep at most ``limit`` checkpoints."""
    from safetensors.torch import save_file

    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{state.step}"
    tmp = Path(tempfile.mkdtemp(prefix=f".checkpoint-{state.step}.", suffix=".tmp", dir=root))
    try:
        weights = {k: v.detach().cpu().contiguous().clone() for k, v in encoder.state_dict().items()}
        save_file(weights, str(tmp / "text_encoder.safetensors"))
        extra = _optimizer_tensors(optimizer)
        extra["generator"] = generator.get_state()
        save_file(extra, str(tmp / "optimizer.safetensors"))
        doc = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "step": state.step,
            "order": state.order,
            "losses": state.losses,
            "identity": state.identity,
            "extra": state.extra,
        }
        (tmp / "state.json").write_text(json.dumps(doc, sort_keys=True, indent=1) + "\n")
        for name in ("text_encoder.safetensors", "optimizer.safetensors", "state.json"):
            with open(tmp / name, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if limit is not None:
        for stale in list_checkpoints(root)[:-limit]:
            shutil.rmtree(stale, ignore_errors=True)
    return final


def read_state(path: Path) -> TrainState:
    try:
        doc = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise TrainingError(f"checkpoint {path}: unreadable state.json ({type(exc).__name__})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise TrainingError(f"checkpoint {path}: not a cones2 training checkpoint")
    if doc.get("format_version") != FORMAT_VERSION:
        raise TrainingError(
            f"checkpoint {path}: format version {doc.get('format_version')!r} is not supported (this cones2 reads {FORMAT_VERSION})"
        )
    try:
        return TrainState(int(doc["step"]), [int(i) for i in doc["order"]], [float(x) for x in doc["losses"]],
                          dict(doc["identity"]), dict(doc.get("extra") or {}))
    except (KeyError, TypeError, ValueError):
        raise TrainingError(f"checkpoint {path}: incomplete state.json") from None


def load_checkpoint(path: Path, encoder: Any, optimizer: Any, generator: torch.Generator, identity: dict[str, Any]) -> TrainState:
    """Restore weights, optimizer and generator from ``path``; refuse one made for another run."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    state = read_state(path)
    mismatched = sorted(k for k in set(identity) | set(state.identity) if identity.get(k) != state.identity.get(k))
    if mismatched:
        raise TrainingError(f"checkpoint {path} belongs to another run (different {', '.join(mismatched)})")
    try:
        weights = load_file(str(path / "text_encoder.safetensors"))
        extra = load_file(str(path / "optimizer.safetensors"))
    except (OSError, SafetensorError) as exc:
        raise TrainingError(f"checkpoint {path}: unreadable tensors ({' '.join(str(exc).split())})") from None
    missing, unexpected = encoder.load_state_dict(weights, strict=False)
    if [m for m in missing if not m.endswith("position_ids")] or unexpected:
        raise TrainingError(f"checkpoint {path}: text encoder weights do not fit the base model")
    generator.set_state(extra.pop("generator"))
    current = optimizer.state_dict()
    restored: dict[int, dict[str, Any]] = {}
    for key, value in extra.items():
        name, _, index = key.rpartition(".")
        restored.setdefault(int(index), {})[name] = value
    try:
        optimizer.load_state_dict({"state": restored, "param_groups": current["param_groups"]})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise TrainingError(f"checkpoint {path}: optimizer state does not fit ({' '.join(str(exc).split())})") from None
    return state
