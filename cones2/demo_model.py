"""A tiny, random, SD-2-shaped base model that needs no download.

It has the exact structure of a diffusers Stable Diffusion folder (UNet, VAE, CLIP text
encoder, CLIP BPE tokenizer, scheduler, ``model_index.json``) at a size that runs in
milliseconds on a CPU, so every code path that takes a real model id or folder also
runs here, and the tests load it through the same ``from_pretrained`` path. Its
weights are random: images made with it are noise, which cones2 says wherever it uses it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from importlib import resources
from pathlib import Path

DEMO_MODEL_NAME = "cones2-demo"
DEMO_NOTICE = "built-in demo model (tiny, random weights: images are noise)"
DEFAULT_SEED = 0
# The UNet and text encoder are deliberately SD-2-like: cross-attention at two
# resolutions, a linear-projection transformer, a 77-token context and "!" as pad token.
TEXT_HIDDEN_SIZE = 32
SAMPLE_SIZE = 32  # latent side; the VAE halves it, so images are 64 x 64 pixels


def tokenizer_files() -> dict[str, Path]:
    """Paths of the vocabulary and merges files shipped inside the package."""
    root = resources.files("cones2") / "assets" / "tokenizer"
    return {name: Path(str(root / name)) for name in ("vocab.json", "merges.txt")}


def build_demo_model(directory: str | Path, seed: int = DEFAULT_SEED, overwrite: bool = False) -> Path:
    """Write a complete tiny diffusers Stable Diffusion folder to ``directory``.

    The same ``seed`` gives bit-identical weights. The folder loads with
    ``StableDiffusionPipeline.from_pretrained(directory)`` without any network.
    """
    import torch
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from .fsutil import clear_output_folder

    directory = clear_output_folder(directory, overwrite=overwrite)

    with tempfile.TemporaryDirectory() as tmp:
        for name, src in tokenizer_files().items():
            shutil.copyfile(src, Path(tmp) / name)
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77, pad_token="!")

    vocab_size = len(tokenizer)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=TEXT_HIDDEN_SIZE,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=TEXT_HIDDEN_SIZE,
            hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(seed + 1)
    unet = UNet2DConditionModel(
        sample_size=SAMPLE_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN_SIZE,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        norm_num_groups=8,
    )
    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=SAMPLE_SIZE * 2,
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    directory.mkdir(parents=True, exist_ok=True)
    from ._quiet import no_progress_bars

    with no_progress_bars():  # "Writing model shards" for an 8 MB model is noise
        pipe.save_pretrained(directory, safe_serialization=True)
    (directory / "cones2_demo.json").write_text(
        json.dumps({"name": DEMO_MODEL_NAME, "seed": seed, "notice": DEMO_NOTICE}, indent=2) + "\n"
    )
    return directory


def is_demo_model(directory: str | Path) -> bool:
    """True for a folder written by :func:`build_demo_model`."""
    return (Path(directory) / "cones2_demo.json").is_file()
