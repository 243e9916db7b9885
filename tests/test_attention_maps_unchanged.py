"""Asking for attention maps must not change the image (the studio shows maps of the very
image that ``cones2 render``/``generate`` draw without them)."""

from __future__ import annotations

import pytest
import torch

from cones2.sampler import Cones2Pipeline, Layout


@pytest.mark.parametrize("guidance_steps", [None, 1])  # every step guided / later steps only recorded
def test_recording_attention_leaves_the_latents_bit_identical(demo_model_dir, guidance_steps) -> None:
    pipe = Cones2Pipeline.from_pretrained(demo_model_dir, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    layout = Layout.from_boxes({"dog": (0.05, 0.3, 0.5, 0.95), "mug": (0.55, 0.5, 0.95, 0.95)})
    kw = dict(num_inference_steps=3, guidance_steps=guidance_steps, seed=7, output_type="latent", height=64, width=64)
    plain = pipe("a dog and a mug on the beach", layout=layout, **kw)
    mapped = pipe("a dog and a mug on the beach", layout=layout, return_attention_maps=True, **kw)
    assert plain.attention_maps is None and set(mapped.attention_maps) == {"dog", "mug"}
    assert torch.equal(plain.images, mapped.images)
