"""The world model's own diffusers components: a pass-through "VAE" and a phrase-local text encoder.

Both are diffusers ``ModelMixin``/``ConfigMixin`` models, so ``save_pretrained`` writes a
``config.json`` and safetensors weights, and a pipeline folder names them in
``model_index.json`` as ``["cones2.world.components", "<class>"]``. diffusers (0.42)
loads such a component only from a module that is already imported -- it never imports a
module because a folder names it -- and it finds the load method by checking the class
against the base classes (``ModelMixin``) this module exposes. ``cones2.sampler.pipeline``
imports this module, so ``Cones2Pipeline.from_pretrained(folder)`` loads a world model;
with the stock ``StableDiffusionPipeline`` import ``cones2.world.components`` first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import ModelMixin  # noqa: F401 -- diffusers looks the load method up by this name here
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.utils import BaseOutput
from torch import nn

__all__ = ["ModelMixin", "PassThroughVAE", "PhraseLocalTextEncoder", "TextEncoderOutput"]


# --------------------------------------------------------------------------- pass-through VAE


class _Identity:
    """A "latent distribution" that is the image itself."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def sample(self, generator: Any = None) -> torch.Tensor:
        return self.x

    def mode(self) -> torch.Tensor:
        return self.x

    @property
    def mean(self) -> torch.Tensor:
        return self.x

    @property
    def std(self) -> torch.Tensor:
        return torch.zeros_like(self.x)


@dataclass
class _EncoderOutput(BaseOutput):
    latent_dist: Any


@dataclass
class _DecoderOutput(BaseOutput):
    sample: torch.Tensor


class PassThroughVAE(ModelMixin, ConfigMixin):
    """An autoencoder that is the identity: the UNet works in pixel space.

    ``block_out_channels=(channels,)`` makes the pipeline's ``vae_scale_factor`` 1 and
    ``scaling_factor=1.0`` leaves latents unscaled; ``encode``/``decode`` return their input.
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, latent_channels: int = 3, sample_size: int = 32, scaling_factor: float = 1.0,
                 block_out_channels: tuple[int, ...] = (3,), force_upcast: bool = False) -> None:
        super().__init__()
        # one saved number, so the folder has weights like every other component (and a dtype)
        self.register_buffer("identity", torch.ones(1))

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> Any:
        return _EncoderOutput(latent_dist=_Identity(x)) if return_dict else (_Identity(x),)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: Any = None) -> Any:
        return _DecoderOutput(sample=z) if return_dict else (z,)

    def forward(self, sample: torch.Tensor, return_dict: bool = True, **_: Any) -> Any:
        return self.decode(sample, return_dict=return_dict)


# --------------------------------------------------------------------------- text encoder


@dataclass
class TextEncoderOutput(BaseOutput):
    """Like transformers' output: ``[0]`` and ``.last_hidden_state`` are the token states."""

    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor | None = None


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class PhraseLocalTextEncoder(ModelMixin, ConfigMixin):
    """A small bidirectional transformer whose words see only their own phrase.

    Tokens listed in ``isolated_token_ids`` (BOS, EOS, padding, "a", "and") attend only to
    themselves and so carry no caption content; every other token attends to the tokens of
    its own run between two isolated tokens -- in "a red circle and a blue square",
    "red" and "circle" see each other, not "blue" or "square". With ``mask="causal"`` it is
    instead a causal (CLIP-like) encoder of the same size, for comparison.
    """

    @register_to_config
    def __init__(
        self,
        vocab_size: int,
        hidden_size: int = 64,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 2,
        intermediate_size: int = 256,
        max_position_embeddings: int = 24,
        isolated_token_ids: tuple[int, ...] = (),
        mask: str = "phrase",
    ) -> None:
        super().__init__()
        if mask not in ("phrase", "causal"):
            raise ValueError(f"mask must be 'phrase' or 'causal', not {mask!r}")
        self.token_embedding = nn.Embedding(vocab_size, hidden_size)
        self.position_embedding = nn.Embedding(max_position_embeddings, hidden_size)
        self.blocks = nn.ModuleList(
            _Block(hidden_size, num_attention_heads, intermediate_size) for _ in range(num_hidden_layers)
        )
        self.final_layer_norm = nn.LayerNorm(hidden_size)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding.weight, std=0.01)

    def attention_allowed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, N, N)`` bool: which token (column) each token (row) may attend to."""
        n = input_ids.shape[1]
        eye = torch.eye(n, dtype=torch.bool, device=input_ids.device)
        if self.config.mask == "causal":
            return torch.ones(n, n, dtype=torch.bool, device=input_ids.device).tril().expand(input_ids.shape[0], n, n)
        iso = torch.zeros_like(input_ids, dtype=torch.bool)
        for t in self.config.isolated_token_ids:
            iso |= input_ids == int(t)
        run = torch.cumsum(iso.long(), dim=1)  # tokens between two isolated ones share a run number
        same = (run[:, :, None] == run[:, None, :]) & ~iso[:, :, None] & ~iso[:, None, :]
        return same | eye

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                return_dict: bool = True, **_: Any) -> Any:
        pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x = self.token_embedding(input_ids) + self.position_embedding(pos)[None]
        allowed = self.attention_allowed(input_ids)
        for block in self.blocks:
            x = block(x, allowed)
        x = self.final_layer_norm(x)
        out = TextEncoderOutput(last_hidden_state=x, pooler_output=x[:, 0])
        return out if return_dict else (x, x[:, 0])
