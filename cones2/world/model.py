"""The world model: a small Stable-Diffusion-shaped text-to-image model for the scenes.

A diffusers pipeline folder with a pixel-space ``UNet2DConditionModel``, the
pass-through :class:`~cones2.world.components.PassThroughVAE`, a word-level
``PreTrainedTokenizerFast`` with CLIP-like ``<|startoftext|>``/``<|endoftext|>`` tokens,
a v-prediction DDIM scheduler on a cosine schedule, and a text encoder: the phrase-local
:class:`~cones2.world.components.PhraseLocalTextEncoder` (default) or transformers'
causal ``CLIPTextModel`` (``encoder="clip"``, the kind Stable Diffusion uses). It loads
with ``Cones2Pipeline.from_pretrained(folder)`` and works with the rest of cones2 as
any base model does. :func:`build_world_model` writes one with random weights;
:mod:`cones2.world.train` trains it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .scenes import COLOURS, PATTERNS, SHAPES, SIZE

WORLD_MARKER = "cones2_world.json"
ENCODERS = ("phrase", "clip")
SPECIAL = {"bos": "<|startoftext|>", "eos": "<|endoftext|>", "pad": "<pad>", "unk": "<unk>"}
WORDS = ("a", "and", *COLOURS, *SHAPES, *(p for p in PATTERNS if p != "plain"), "striped", "dotted", "my", "photo", "of")
MAX_LENGTH = 24
HIDDEN = 64


def build_tokenizer() -> Any:
    """A word-level fast tokenizer over the world's words (unknown words become ``<unk>``)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for tok in (SPECIAL["pad"], SPECIAL["bos"], SPECIAL["eos"], SPECIAL["unk"], *WORDS):
        vocab.setdefault(tok, len(vocab))
    core = Tokenizer(WordLevel(vocab, unk_token=SPECIAL["unk"]))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    bos, eos = SPECIAL["bos"], SPECIAL["eos"]
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} $B {eos}",
        special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=bos, eos_token=eos, pad_token=SPECIAL["pad"], unk_token=SPECIAL["unk"],
        model_max_length=MAX_LENGTH,
    )


def isolated_ids(tokenizer: Any) -> tuple[int, ...]:
    """Token ids that carry no caption content in the phrase-local encoder."""
    names = [SPECIAL["bos"], SPECIAL["eos"], SPECIAL["pad"], SPECIAL["unk"], "a", "and", "of", "photo"]
    return tuple(int(tokenizer.convert_tokens_to_ids(t)) for t in names)


def build_unet(seed: int = 0, size: int = SIZE) -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=HIDDEN,
        attention_head_dim=4,
        norm_num_groups=8,
    )


def build_text_encoder(tokenizer: Any, encoder: str = "phrase", seed: int = 0) -> Any:
    import torch

    if encoder not in ENCODERS:
        from ..errors import UsageError

        raise UsageError(f"encoder {encoder!r}: choose one of {', '.join(ENCODERS)}")
    torch.manual_seed(seed)
    if encoder == "clip":
        from transformers import CLIPTextConfig, CLIPTextModel

        return CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=4 * HIDDEN, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=MAX_LENGTH, projection_dim=HIDDEN, hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ))
    from .components import PhraseLocalTextEncoder

    return PhraseLocalTextEncoder(vocab_size=len(tokenizer), hidden_size=HIDDEN, max_position_embeddings=MAX_LENGTH,
                                  isolated_token_ids=isolated_ids(tokenizer))


def build_scheduler() -> Any:
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1,
    )


def assemble(unet: Any, text_encoder: Any, tokenizer: Any, scheduler: Any | None = None) -> Any:
    """A :class:`~cones2.sampler.Cones2Pipeline` from world components."""
    from ..sampler.pipeline import Cones2Pipeline
    from .components import PassThroughVAE

    vae = PassThroughVAE(sample_size=int(unet.config.sample_size))
    return Cones2Pipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                          scheduler=scheduler or build_scheduler(), safety_checker=None, feature_extractor=None,
                          requires_safety_checker=False)


def save_world_pipeline(pipe: Any, directory: str | Path, info: dict[str, Any]) -> Path:
    """``save_pretrained`` plus the marker file naming the world model and its training state."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(directory, safe_serialization=True)
    (directory / WORLD_MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return directory


def world_pipeline(*, seed: int = 0, encoder: str = "phrase") -> Any:
    """An untrained world :class:`~cones2.sampler.Cones2Pipeline` (random weights from ``seed``)."""
    tokenizer = build_tokenizer()
    return assemble(build_unet(seed + 1), build_text_encoder(tokenizer, encoder, seed), tokenizer)


def build_world_model(directory: str | Path, *, seed: int = 0, encoder: str = "phrase", overwrite: bool = False) -> Path:
    """Write an untrained world model folder (random weights, deterministic from ``seed``)."""
    from ..fsutil import clear_output_folder

    directory = clear_output_folder(directory, overwrite=overwrite)
    return save_world_pipeline(world_pipeline(seed=seed, encoder=encoder), directory,
                               {"name": "cones2-world", "encoder": encoder, "seed": seed, "step": 0})


def is_world_model(directory: str | Path) -> bool:
    return (Path(directory) / WORLD_MARKER).is_file()


def load_world_pipeline(directory: str | Path) -> Any:
    """``Cones2Pipeline.from_pretrained`` of a world folder with the progress bar off."""
    from ..sampler.pipeline import Cones2Pipeline

    pipe = Cones2Pipeline.from_pretrained(str(directory))
    pipe.set_progress_bar_config(disable=True)
    return pipe
