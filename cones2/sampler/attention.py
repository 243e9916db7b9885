"""The Cones 2 attention processor for diffusers 0.42+ (METHOD.md section 3).

In every cross-attention layer, for the conditional rows only, the raw scores ``QK^T``
get the bias ``eta * W[pixel, token] * log(1 + sigma^2) * std(QK^T)`` before the usual
scale and softmax. ``std`` is taken per image: over the whole score tensor of one
conditional row of the batch (all heads, pixels and tokens; unbiased, as ``torch.std``),
as the reference computes it when it renders one image at a time, so an image does not
depend on the others in its batch. ``W`` is the layout weight
map at the layer's resolution, ``sigma`` the current step's noise level.

Per-call data travels as the explicit processor parameter ``cones2`` through
``cross_attention_kwargs={"cones2": GuidanceCall(...)}`` (diffusers only passes keys a
processor names). The same processor is installed on self-attention layers so the key
is never unknown there; it hands those calls, and every call without guidance, to the
processor it replaced (by default :class:`diffusers.models.attention_processor.AttnProcessor2_0`),
so with no layout the output is exactly the stock processor's.

A guided cross-attention call costs one extra small matmul (the conditional rows' raw
scores, for their standard deviation) and stays one fused SDPA call: the bias goes in as
SDPA's additive mask, zero on the unconditional rows, so those rows get the stock
attention. The mask's layout part, ``W * eta * log(1 + sigma^2) * scale``, is built once
per step and resolution and shared by the layers; a layer only multiplies it by its std.
An explicit softmax is used only where the probabilities are needed (attention maps) or
asked for (``eager=True``, the reference's execution scheme in the benchmark).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import UsageError


@dataclass
class GuidanceCall:
    """What the processors need for one UNet call; the pipeline updates it per step.

    ``weight_maps`` maps a query length ``h*w`` to ``W`` of shape ``(rows|1, h*w, tokens)``.
    ``cond`` says which batch rows are conditional: ``"cfg"`` (the second half of a
    batched ``[uncond, cond]`` batch) or ``"all"`` (a UNet call on conditional rows only).
    ``active`` switches the bias off (unguided steps) while still recording.
    """

    weight_maps: dict[int, torch.Tensor] | None = None
    eta: float = 0.08
    sigma: float = 0.0
    cond: str = "cfg"
    active: bool = True
    recorder: Any = None  # an AttentionRecorder, or None
    _cache: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)
    _masks: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False)
    _masks_sigma: float | None = field(default=None, repr=False)

    @property
    def sigma_factor(self) -> float:
        return math.log1p(self.sigma**2)

    def weight_for(self, query_length: int, device: torch.device) -> torch.Tensor | None:
        if not self.active or not self.weight_maps:
            return None
        W = self.weight_maps.get(query_length)
        if W is None:
            raise UsageError(f"no layout weight map for an attention layer with {query_length} pixels")
        key = (query_length, str(device))
        cached = self._cache.get(key)
        if cached is None:
            cached = self._cache[key] = W.to(device=device, dtype=torch.float32)
        return cached

    def mask_base(
        self, W: torch.Tensor, batch: int, start: int, scale: float, dtype: torch.dtype
    ) -> torch.Tensor:
        """``W * eta * log(1 + sigma^2) * scale`` as ``(batch, 1, Q, K')``, zero for rows ``< start``.

        Built in float32 (so ``-1e8 * 0`` stays 0) and cast once to ``dtype``. ``K'`` is
        ``K`` rounded up to a multiple of 16 (zero columns): a mask sliced back to ``K``
        keeps the row alignment fused SDPA kernels want, so they need no padded copy.
        Kept until ``sigma`` changes.
        """
        if self._masks_sigma != self.sigma:
            self._masks.clear()
            self._masks_sigma = self.sigma
        q_len, k_len = W.shape[-2], W.shape[-1]
        key = (q_len, batch, start, float(scale), dtype, str(W.device))
        base = self._masks.get(key)
        if base is None:
            padded = -(-k_len // 16) * 16
            full = torch.zeros(batch, 1, q_len, padded, device=W.device, dtype=torch.float32)
            full[start:, 0, :, :k_len] = W * (self.eta * self.sigma_factor * scale)
            base = self._masks[key] = full.to(dtype)
        return base


def per_image_std(scores: torch.Tensor) -> torch.Tensor:
    """Unbiased std of each row's whole score tensor: ``(rows, ...)`` -> ``(rows, 1, 1, 1)`` float32."""
    return scores.float().flatten(1).std(dim=1).view(-1, 1, 1, 1)


def guidance_bias(scores: torch.Tensor, W: torch.Tensor, eta: float, sigma: float) -> torch.Tensor:
    """``eta * W * log(1 + sigma^2) * std(scores)`` as ``(rows, 1, Q, K)`` float32.

    ``scores`` are the raw, unscaled ``QK^T`` of the conditional rows, ``(rows, heads, Q, K)``;
    the std is taken per row (image), see :func:`per_image_std`.
    """
    return (eta * math.log1p(sigma**2)) * per_image_std(scores) * W[:, None, :, :]


class Cones2AttnProcessor:
    """Stock attention plus the Cones 2 cross-attention bias; see the module docstring.

    ``inner`` is the processor used for every unguided call (self-attention included).
    ``eager=True`` computes guided cross-attention with explicit matmul/softmax instead
    of SDPA (used to re-create the reference's execution scheme in the benchmark).
    """

    def __init__(self, inner: Any = None, eager: bool = False) -> None:
        if inner is None:
            from diffusers.models.attention_processor import AttnProcessor2_0

            inner = AttnProcessor2_0()
        self.inner = inner
        self.eager = eager

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        cones2: GuidanceCall | None = None,
    ) -> torch.Tensor:
        if cones2 is None or encoder_hidden_states is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        query_length = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        W = cones2.weight_for(query_length, hidden_states.device)
        if W is None and cones2.recorder is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return self._guided(attn, hidden_states, encoder_hidden_states, attention_mask, temb, cones2, W)

    # ------------------------------------------------------------------------------------

    def _guided(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None,
        temb: torch.Tensor | None,
        call: GuidanceCall,
        W: torch.Tensor | None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = encoder_hidden_states.shape
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        inner_dim = key.shape[-1]
        head_dim = inner_dim // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        start = batch_size // 2 if call.cond == "cfg" else 0
        if call.cond == "cfg" and batch_size % 2:
            raise UsageError("Cones 2 guidance with cond='cfg' needs an [uncond, cond] batch of even size")
        q_len, k_len = query.shape[2], key.shape[2]
        scale = attn.scale
        if W is not None and W.shape[-1] != k_len:
            raise UsageError(f"layout weight map has {W.shape[-1]} tokens but the text has {k_len}")

        if W is not None and not self.eager:
            # std of each conditional row's raw QK^T, in float32 (raw fp16 scores can overflow);
            # the unconditional rows' mask is zero, their factor is 1
            scores = query[start:].float() @ key[start:].float().transpose(-1, -2)
            std = torch.ones(batch_size, 1, 1, 1, device=query.device, dtype=torch.float32)
            std[start:] = per_image_std(scores)
            mask = (call.mask_base(W, batch_size, start, scale, query.dtype) * std.to(query.dtype))[..., :k_len]
            if attention_mask is not None:
                mask = mask + attention_mask
            hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
            if call.recorder is not None:  # maps on the side: the image is the same with or without them
                logits = (scores + guidance_bias(scores, W, call.eta, call.sigma)) * scale
                if attention_mask is not None:
                    logits = logits + attention_mask[start:].float()
                call.recorder.add(logits.softmax(dim=-1), q_len)
        elif W is None:  # recording only, no bias: the stock output, the maps on the side
            scores = (query @ key.transpose(-1, -2)) * scale
            if attention_mask is not None:
                scores = scores + attention_mask
            probs = scores.softmax(dim=-1)
            call.recorder.add(probs[start:], q_len)
            if self.eager:
                hidden_states = probs @ value
            else:
                hidden_states = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                               is_causal=False)
        else:
            # conditional rows: raw scores, bias, scale, softmax -- in float32, on the small
            # pixels x tokens tensor that cross-attention has anyway
            scores = query[start:].float() @ key[start:].float().transpose(-1, -2)
            logits = (scores + guidance_bias(scores, W, call.eta, call.sigma)) * scale
            if attention_mask is not None:
                logits = logits + attention_mask[start:].float()
            probs = logits.softmax(dim=-1)
            if call.recorder is not None:
                call.recorder.add(probs, q_len)
            cond_out = probs.to(value.dtype) @ value[start:]
            if start == 0:
                hidden_states = cond_out
            else:  # unconditional rows: exactly the stock computation
                q_u, k_u, v_u = query[:start], key[:start], value[:start]
                m_u = attention_mask[:start] if attention_mask is not None else None
                if self.eager:
                    s_u = (q_u @ k_u.transpose(-1, -2)) * scale
                    if m_u is not None:
                        s_u = s_u + m_u
                    uncond_out = s_u.softmax(dim=-1) @ v_u
                else:
                    uncond_out = F.scaled_dot_product_attention(q_u, k_u, v_u, attn_mask=m_u, dropout_p=0.0, is_causal=False)
                hidden_states = torch.cat([uncond_out, cond_out])

        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = hidden_states.to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def install(unet: Any, eager: bool = False, eager_self_attention: bool = False) -> dict[str, Any]:
    """Put a :class:`Cones2AttnProcessor` on every attention layer; returns the old processors.

    ``eager_self_attention`` replaces the wrapped self-attention processors with diffusers'
    eager ``AttnProcessor`` (reference execution scheme, benchmark only).
    """
    old = dict(unet.attn_processors)
    new = {}
    for name, proc in old.items():
        inner = proc
        if isinstance(proc, Cones2AttnProcessor):
            inner = proc.inner
        if eager_self_attention:
            from diffusers.models.attention_processor import AttnProcessor

            inner = AttnProcessor()
        new[name] = Cones2AttnProcessor(inner, eager=eager)
    unet.set_attn_processor(new)
    return old


def restore(unet: Any, old: dict[str, Any]) -> None:
    unet.set_attn_processor(old)
