"""An independent port of the Cones-V2 reference code, for the parity tests only.

Written from reading ali-vilab/Cones-V2 (layout_guidance.py, attention_control.py,
utils.py and the residual loop at the end of train_cones2.py) and METHOD.md section 3;
it shares no code with the cones2 package, so the golden test compares two separate
implementations. What it does, in the reference's order:

* prompt embeddings from the base encoder, a residual added at hand-given token
  positions; the unconditional embeddings are those of the empty prompt;
* a colour layout matched exactly per colour; each region's map (``weight`` inside, the
  negative weight everywhere else) is resized to every attention resolution by bilinear
  interpolation with aligned corners and added to the column of every occurrence of
  the word's tokens;
* in cross-attention of the conditional UNet call, eagerly:
  ``softmax((QK^T + eta * W * log(1 + sigma^2) * std(QK^T)) * scale) V`` with the std over
  the whole score tensor of the call (one image); conditional and unconditional
  predictions come from two UNet calls;
* an LMS schedule on linspace timesteps stepped with order 1, i.e. the Euler update
  ``x + (sigma_next - sigma) * eps``; for guided steps the bias's sigma is step ``i`` of a
  second LMS schedule that is ``guidance_steps`` long (SD's betas, as the reference hard
  codes them); each guided step is taken twice, with ``sqrt(sigma^2 - sigma_next^2)``
  fresh noise added after the first pass (self-recurrence);
* all random numbers (initial latents, then recurrence noise) from one generator seeded
  with the image's seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# The prompt templates of the reference's residual loop (27), copied as data so the
# test checks cones2's "reference" set against an independent list.
REFERENCE_TEMPLATES = [
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
    "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}",
    "a rendition of a {}", "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}",
    "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}",
    "a photo of a cool {}", "a photo of a small {}",
]


class PortProcessor:
    """Eager attention; cross-attention gets the layout bias when ``port`` carries maps."""

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None,
                 port: dict[str, Any] | None = None) -> torch.Tensor:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.head_to_batch_dim(attn.to_q(hidden_states))
        k = attn.head_to_batch_dim(attn.to_k(context))
        v = attn.head_to_batch_dim(attn.to_v(context))
        scores = q @ k.transpose(-1, -2)  # (batch * heads, pixels, tokens), unscaled
        if encoder_hidden_states is not None and port is not None and port.get("maps") is not None:
            W = port["maps"][scores.shape[1]]
            scores = scores + port["eta"] * W * math.log(1 + port["sigma"] ** 2) * scores.std()
        probs = (scores * attn.scale).softmax(dim=-1)
        out = attn.batch_to_head_dim(probs @ v)
        return attn.to_out[1](attn.to_out[0](out))


def port_weight_maps(rgb: np.ndarray, colours: Mapping[tuple[int, int, int], tuple[str, float]], tokenizer: Any,
                     prompt_ids: Sequence[int], grids: Sequence[tuple[int, int]], negative: float = -1e8) -> dict[int, torch.Tensor]:
    """``{h*w: W (h*w, tokens)}`` built the way the reference builds its maps."""
    ids = list(prompt_ids)
    per_colour = []
    for colour, (word, weight) in colours.items():
        exact = torch.from_numpy((rgb[..., :3] == np.array(colour)).all(axis=-1))
        region = torch.where(exact, torch.tensor(float(weight)), torch.tensor(float(negative)))
        word_ids = tokenizer(word).input_ids[1:-1]
        per_colour.append((word_ids, region))
    maps = {}
    for h, w in grids:
        W = torch.zeros(h * w, len(ids))
        for word_ids, region in per_colour:
            small = F.interpolate(region[None, None], size=(h, w), mode="bilinear", align_corners=True).reshape(-1)
            n = len(word_ids)
            for start in range(len(ids) - n + 1):
                if ids[start : start + n] == word_ids:
                    W[:, start : start + n] += small[:, None]
        maps[h * w] = W
    return maps


def _lms_sigmas_and_timesteps(config: Any, steps: int) -> tuple[list[float], torch.Tensor]:
    from diffusers import LMSDiscreteScheduler

    sch = LMSDiscreteScheduler.from_config(config, timestep_spacing="linspace")
    sch.set_timesteps(steps)
    return [float(s) for s in sch.sigmas], sch.timesteps


def _guidance_sigmas(guidance_steps: int) -> list[float]:
    from diffusers import LMSDiscreteScheduler

    sch = LMSDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    sch.set_timesteps(guidance_steps)
    return [float(s) for s in sch.sigmas]


@torch.no_grad()
def port_sample(pipe: Any, prompt: str, residuals: Mapping[int, torch.Tensor], rgb: np.ndarray,
                colours: Mapping[tuple[int, int, int], tuple[str, float]], *, seed: int, steps: int,
                guidance_steps: int, guidance_weight: float = 0.08, cfg: float = 7.5, size: int = 64) -> torch.Tensor:
    """Final latents of the reference's loop for one image. ``residuals``: token position -> residual row."""
    unet, tok, enc = pipe.unet, pipe.tokenizer, pipe.text_encoder
    ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    cond = enc(ids)[0].clone()
    for position, delta in residuals.items():
        cond[0, position] += delta.reshape(-1)
    uncond = enc(tok([""], padding="max_length", max_length=ids.shape[-1], return_tensors="pt").input_ids)[0]

    factor = pipe.vae_scale_factor
    lh = lw = size // factor
    grids, h, w = [], lh, lw
    for _ in range(len(unet.config.block_out_channels) + 1):
        grids.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    maps = port_weight_maps(rgb, colours, tok, ids[0].tolist(), grids)

    old = dict(unet.attn_processors)
    unet.set_attn_processor(PortProcessor())
    try:
        sigmas, timesteps = _lms_sigmas_and_timesteps(pipe.scheduler.config, steps)
        g = min(guidance_steps, steps)
        g_sigmas = _guidance_sigmas(g) if g > 0 else []
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((1, unet.config.in_channels, lh, lw), generator=gen) * sigmas[0]
        for i, t in enumerate(timesteps):
            guided = i < g
            for rep in range(2 if guided else 1):
                state = {"maps": maps, "eta": guidance_weight, "sigma": g_sigmas[i]} if guided else None
                inp = x / math.sqrt(sigmas[i] ** 2 + 1)
                eps_c = unet(inp, t, encoder_hidden_states=cond, cross_attention_kwargs={"port": state}).sample
                eps_u = unet(inp, t, encoder_hidden_states=uncond, cross_attention_kwargs={"port": None}).sample
                eps = eps_u + cfg * (eps_c - eps_u)
                x = x + (sigmas[i + 1] - sigmas[i]) * eps
                if guided and rep == 0:
                    x = x + math.sqrt(sigmas[i] ** 2 - sigmas[i + 1] ** 2) * torch.randn(x.shape, generator=gen)
    finally:
        unet.set_attn_processor(old)
    return x


@torch.no_grad()
def port_residual(base: Any, tuned: Any, tokenizer: Any, word: str, token_num: int = 1) -> torch.Tensor:
    """The reference's residual loop: one template at a time, the word found by its first token."""
    first = tokenizer(word, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                      return_tensors="pt").input_ids[0][1]
    new = orig = 0
    for template in REFERENCE_TEMPLATES:
        ids = tokenizer(template.format(word), padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        at = int(torch.where(ids[0] == first)[0][0])
        new = new + tuned(ids)[0][0][at : at + token_num]
        orig = orig + base(ids)[0][0][at : at + token_num]
    return (new - orig) / len(REFERENCE_TEMPLATES)
