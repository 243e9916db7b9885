"""The training loss of Cones 2 (METHOD.md section 1), computed per sample.

For sample b with training prompt p (BOS, the word's n tokens, EOS, padding):

    diffusion_b = mean over (C, h, w) of (UNet(x_t, t, E(p)) - target)^2
    bos_b       = || E(p)[b, 0]    - E0(p)[0]    ||_2
    rest_b      = || E(p)[b, 1+n:] - E0(p)[1+n:] ||_2        (plain L2 norms, not squared)
    loss_b      = diffusion_b + bos_weight * bos_b + rest_weight * rest_b

and the batch loss is the mean of loss_b. ``target`` is the noise for epsilon
prediction and the velocity for v-prediction (as the noise scheduler's
``prediction_type`` says). With batch 1 this is the reference's loss; because every
term is taken per sample, batch sizes above 1 are the mean of the batch-1 losses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import TrainingError

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass
class LossTerms:
    """Per-sample loss terms, each of shape (batch,)."""

    diffusion: torch.Tensor
    bos: torch.Tensor
    rest: torch.Tensor
    total: torch.Tensor

    def mean(self) -> torch.Tensor:
        return self.total.mean()

    def summary(self) -> dict[str, float]:
        return {
            "loss": float(self.total.detach().mean()),
            "diffusion": float(self.diffusion.detach().mean()),
            "bos": float(self.bos.detach().mean()),
            "rest": float(self.rest.detach().mean()),
        }


def preservation_terms(embeds: torch.Tensor, base_embeds: torch.Tensor, word_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(bos, rest) L2 distances per sample between ``embeds`` (B, L, H) and ``base_embeds`` (B|1, L, H)."""
    diff = embeds.float() - base_embeds.float()
    bos = diff[:, 0].flatten(1).norm(dim=1)
    rest = diff[:, 1 + word_tokens :].flatten(1).norm(dim=1)
    return bos, rest


def diffusion_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise TrainingError(f"the base model's scheduler predicts {kind!r}; cones2 trains epsilon or v_prediction models")


def loss_terms(
    *,
    unet: Any,
    scheduler: Any,
    embeds: torch.Tensor,
    base_embeds: torch.Tensor,
    word_tokens: int,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    bos_weight: float,
    rest_weight: float,
) -> LossTerms:
    """All loss terms of one batch. ``embeds`` (B, L, H) come from the encoder being tuned."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = diffusion_target(scheduler, latents, noise, timesteps)
    unet_dtype = next(unet.parameters()).dtype
    pred = unet(noisy.to(unet_dtype), timesteps, encoder_hidden_states=embeds.to(unet_dtype)).sample
    diffusion = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    bos, rest = preservation_terms(embeds, base_embeds, word_tokens)
    total = diffusion + bos_weight * bos + rest_weight * rest
    return LossTerms(diffusion, bos, rest, total)
