"""Cones2Pipeline on the demo model: stock parity, UNet evaluation count, guidance, subjects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cones2.errors import BaseModelMismatchError, LayoutError, TokenLocationError
from cones2.sampler import Cones2Pipeline, Layout
from cones2.sampler.attention_maps import region_share

PROMPT = "a dog and a mug on the beach"
BOXES = {"dog": (0.05, 0.3, 0.5, 0.95), "mug": (0.55, 0.5, 0.95, 0.95)}


@pytest.fixture(scope="module")
def pipe(demo_model_dir):
    p = Cones2Pipeline.from_pretrained(demo_model_dir, safety_checker=None, requires_safety_checker=False)
    p.set_progress_bar_config(disable=True)
    default = p.scheduler
    yield p
    p.scheduler = default


def _scheduler(pipe, name):
    import diffusers

    cls = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler", "lms": "LMSDiscreteScheduler",
           "dpm": "DPMSolverMultistepScheduler"}[name]
    if name == "lms":
        pytest.importorskip("scipy")
    pipe.scheduler = getattr(diffusers, cls).from_config(pipe.scheduler.config)


@pytest.fixture(scope="module")
def residuals(demo_model_dir, demo_text_encoder):
    from cones2.base_model import model_info
    from cones2.residual import word_token_ids
    from cones2.residual_file import make_residual

    tokenizer, _ = demo_text_encoder
    fp = model_info(str(demo_model_dir)).fingerprint
    gen = torch.Generator().manual_seed(3)
    return {w: make_residual(torch.randn(1, 32, generator=gen), w, word_token_ids(tokenizer, w), fp) for w in BOXES}


def test_reproduces_stock_pipeline(pipe):
    from diffusers import StableDiffusionPipeline

    _scheduler(pipe, "ddim")
    stock = StableDiffusionPipeline(**pipe.components)
    stock.set_progress_bar_config(disable=True)
    want = stock(PROMPT, num_inference_steps=3, generator=torch.Generator().manual_seed(5), output_type="np").images
    got = pipe(PROMPT, preset="cones2", num_inference_steps=3, seed=5, output_type="np")
    assert np.array_equal(want, got.images)
    assert got.info["unet_evaluations"] == 3 and got.info["guided_steps"] == 0
    # two images per prompt with a negative prompt: image k is the stock image of seed 1 + k
    want2 = np.concatenate([
        stock(PROMPT, negative_prompt="blurry", num_inference_steps=2, generator=torch.Generator().manual_seed(s),
              output_type="np").images
        for s in (1, 2)
    ])
    got2 = pipe(PROMPT, preset="cones2", negative_prompt="blurry", num_images_per_prompt=2, num_inference_steps=2,
                seed=1, output_type="np").images
    assert np.array_equal(want2, got2)


@pytest.mark.parametrize("scheduler", ["ddim", "euler", "lms", "dpm"])
def test_self_recurrence_costs_one_evaluation_per_guided_step(pipe, scheduler):
    _scheduler(pipe, scheduler)
    layout = Layout.from_boxes(BOXES)
    calls = {"n": 0}

    def count(*_):
        calls["n"] += 1

    hook = pipe.unet.register_forward_pre_hook(count)
    try:
        kw = dict(num_inference_steps=4, guidance_steps=3, seed=0, output_type="latent")
        off = pipe(PROMPT, preset="cones2", layout=layout, self_recurrence=False, **kw)
        n_off, calls["n"] = calls["n"], 0
        on = pipe(PROMPT, preset="cones2", layout=layout, self_recurrence=True, **kw)
        n_on, calls["n"] = calls["n"], 0
        split = pipe(PROMPT, preset="cones2", layout=layout, self_recurrence=True, separate_cfg=True, **kw)
        n_split = calls["n"]
    finally:
        hook.remove()
    assert n_off == 4 and off.info["unet_evaluations"] == 4
    assert n_on == 4 + 3 and on.info["unet_evaluations"] == 7
    assert n_split == 2 * 7
    assert torch.isfinite(on.images).all() and not torch.equal(on.images, off.images)
    sigmas = on.info["sigmas"]
    assert len(sigmas) == 5 and all(a > b for a, b in zip(sigmas[:-1], sigmas[1:], strict=True))
    # batched and split CFG compute the same maths
    assert (split.images - on.images).abs().max() < 1e-3


def test_renoise_reaches_the_higher_noise_level(pipe):
    _scheduler(pipe, "ddim")  # variance preserving latents
    x = torch.zeros(4, 4, 64, 64)
    gen = torch.Generator().manual_seed(0)
    y = pipe._renoise(x, 1.0, 3.0, gen)
    # x0 = 0: sigma space value sqrt(9 - 1) * n, scaled by 1 / sqrt(1 + 9)
    assert abs(float(y.std()) - (8**0.5 / 10**0.5)) < 0.02
    _scheduler(pipe, "euler")  # sigma-space latents
    y = pipe._renoise(x, 1.0, 3.0, gen)
    assert abs(float(y.std()) - 8**0.5) < 0.05


def test_guidance_moves_attention_into_regions(pipe):
    _scheduler(pipe, "ddim")
    layout = Layout.from_boxes(BOXES)
    kw = dict(num_inference_steps=4, seed=0, output_type="latent", return_attention_maps=True)
    guided = pipe(PROMPT, preset="cones2", layout=layout, **kw)
    plain = pipe(PROMPT, preset="cones2", attention_words=list(BOXES), **kw)
    assert plain.info["guided_steps"] == 0
    cells = layout.cells(32, 32)
    for word in BOXES:
        g = region_share(guided.attention_maps[word][0], cells[word])
        p = region_share(plain.attention_maps[word][0], cells[word])
        assert g > p + 0.2, (word, g, p)


def test_subjects_from_objects_files_and_registry(pipe, residuals, tmp_path):
    from cones2.registry import open_catalogue

    _scheduler(pipe, "ddim")
    kw = dict(num_inference_steps=2, seed=0, output_type="np")
    base = pipe(PROMPT, preset="cones2", **kw).images
    with_obj = pipe(PROMPT, preset="cones2", subjects=dict(residuals), **kw)
    assert not np.array_equal(base, with_obj.images)
    path = residuals["dog"].save(tmp_path / "dog.safetensors")
    with open_catalogue() as cat:
        cat.add(residuals["mug"], "mug-red")
    out = pipe(PROMPT, preset="cones2", subjects={"dog": str(path), "mug": "mug-red@1"}, **kw)
    assert np.array_equal(out.images, with_obj.images)
    info = out.info["subjects"]
    assert info["dog"]["source"] == "file" and info["dog"]["sha256"] == residuals["dog"].sha256()
    assert info["mug"]["source"] == "registry" and info["mug"]["version"] == 1
    assert info["mug"]["sha256"] == residuals["mug"].sha256()
    assert info["dog"]["positions"] and info["mug"]["positions"]


def test_subject_refusals(pipe, residuals):
    from cones2.residual_file import make_residual

    other = make_residual(residuals["dog"].residual, "dog", residuals["dog"].token_ids, "0" * 64)
    with pytest.raises(BaseModelMismatchError):
        pipe(PROMPT, preset="cones2", subjects={"dog": other}, num_inference_steps=1, output_type="latent")
    with pytest.raises(TokenLocationError, match="learned for the word"):
        pipe(PROMPT, preset="cones2", subjects={"mug": residuals["dog"]}, num_inference_steps=1, output_type="latent")
    # Right word, token ids of another word (e.g. a residual made with another tokenizer).
    mislabelled = make_residual(residuals["dog"].residual, "mug", residuals["dog"].token_ids, residuals["dog"].base_fingerprint)
    with pytest.raises(TokenLocationError, match=r"token ids \[\d+\] are not 'mug' in this tokenizer"):
        pipe(PROMPT, preset="cones2", subjects={"mug": mislabelled}, num_inference_steps=1, output_type="latent")
    with pytest.raises(LayoutError, match="cat"):
        pipe(PROMPT, preset="cones2", layout=Layout.from_boxes({"cat": (0, 0, 1, 1)}), num_inference_steps=1, output_type="latent")


def test_second_order_scheduler_refused_for_self_recurrence(pipe):
    from diffusers import HeunDiscreteScheduler

    from cones2.errors import UsageError

    default = pipe.scheduler
    pipe.scheduler = HeunDiscreteScheduler.from_config(default.config)
    try:
        with pytest.raises(UsageError, match="first-order"):
            pipe(PROMPT, preset="cones2", layout=Layout.from_boxes(BOXES), num_inference_steps=2, output_type="latent")
    finally:
        pipe.scheduler = default


def test_attention_maps_saved(pipe, tmp_path):
    from cones2.sampler import save_attention_maps

    _scheduler(pipe, "ddim")
    layout = Layout.from_boxes(BOXES)
    out = pipe(PROMPT, preset="cones2", layout=layout, num_inference_steps=2, seed=0, return_attention_maps=True)
    files = save_attention_maps(tmp_path, out.images, out.attention_maps, layout=layout)
    names = {p.name for p in files}
    assert {"layout.png", "image-0-attention-dog.png", "image-0-attention-mug.png", "image-0-attention.png"} <= names
