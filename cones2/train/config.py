"""Training settings: one frozen value, checked when it is built.

Defaults are the reference's (METHOD.md section 1): 768 px, batch 1, a constant
learning rate of 5e-6 for 4,000 steps, AdamW as diffusers' training scripts set it up
(betas 0.9/0.999, weight decay 1e-2, eps 1e-8, gradients clipped to norm 1), and the
preservation weights 1e-2 (BOS) and 1e-3 (every position after the word).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import UsageError

MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    """How to learn one subject; everything that changes the result, nothing about where files go."""

    steps: int = 4000
    lr: float = 5e-6
    resolution: int = 768
    batch_size: int = 1
    seed: int = 0
    flip: bool = False
    gradient_checkpointing: bool = False
    mixed_precision: str = "no"
    bos_weight: float = 1e-2
    rest_weight: float = 1e-3
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    checkpoint_every: int = 0  # 0: no periodic checkpoints (Ctrl-C still writes one)
    checkpoints_total_limit: int | None = 2  # checkpoint-N folders kept; None keeps all
    validate_every: int = 0  # 0: no validation images
    validation_prompt: str | None = None  # default "a photo of a {word}"
    validation_steps: int = 25
    templates: str = "reference"  # the prompt-template set the residual is averaged over

    def __post_init__(self) -> None:
        def whole(name: str, low: int) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"training setting {name} must be an integer >= {low}, not {value!r}")

        whole("steps", 1)
        whole("resolution", 8)
        whole("batch_size", 1)
        whole("seed", 0)
        whole("checkpoint_every", 0)
        whole("validate_every", 0)
        whole("validation_steps", 1)
        if self.checkpoints_total_limit is not None:
            whole("checkpoints_total_limit", 1)
        if self.resolution % 8:
            raise UsageError(f"training setting resolution must be a multiple of 8, not {self.resolution}")
        for name in ("lr", "bos_weight", "rest_weight", "adam_weight_decay", "adam_epsilon", "max_grad_norm"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise UsageError(f"training setting {name} must be a finite number >= 0, not {value!r}")
        if not self.lr > 0:
            raise UsageError("training setting lr must be > 0")
        from ..residual import TEMPLATE_SETS

        if self.templates not in TEMPLATE_SETS:
            raise UsageError(f"training setting templates must be one of {', '.join(TEMPLATE_SETS)}, not {self.templates!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise UsageError(f"training setting mixed_precision must be one of {', '.join(MIXED_PRECISION)}, not {self.mixed_precision!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**data)

    # Settings that must match for a checkpoint to be resumed into this run.
    def identity(self) -> dict[str, Any]:
        keep = ("lr", "resolution", "batch_size", "seed", "flip", "bos_weight", "rest_weight", "adam_beta1",
                "adam_beta2", "adam_weight_decay", "adam_epsilon", "max_grad_norm")
        return {k: getattr(self, k) for k in keep}
