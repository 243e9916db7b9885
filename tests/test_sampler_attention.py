"""The Cones 2 attention processor: stock parity without a layout, METHOD.md's formula with one."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from cones2.sampler.attention import Cones2AttnProcessor, GuidanceCall, install, restore
from cones2.sampler.attention_maps import AttentionRecorder


@pytest.fixture(scope="module")
def unet(demo_model_dir):
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel.from_pretrained(demo_model_dir / "unet")
    model.eval()
    return model


def _unet_inputs(unet):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 32, 32, generator=gen)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=gen)
    return x, torch.tensor(500), text


def test_no_layout_equals_stock_processor(unet):
    x, t, text = _unet_inputs(unet)
    unet.set_attn_processor(AttnProcessor2_0())
    with torch.no_grad():
        stock = unet(x, t, encoder_hidden_states=text).sample
        old = install(unet)
        try:
            assert all(isinstance(p, Cones2AttnProcessor) for p in unet.attn_processors.values())
            plain = unet(x, t, encoder_hidden_states=text).sample
            off = unet(x, t, encoder_hidden_states=text, cross_attention_kwargs={"cones2": GuidanceCall(active=False)}).sample
            none = unet(x, t, encoder_hidden_states=text, cross_attention_kwargs={"cones2": None}).sample
            # recording forces the explicit softmax path: still the same attention
            rec = AttentionRecorder([{"x": [3]}], {h * w: (h, w) for h, w in [(32, 32), (16, 16), (8, 8)]}, (32, 32))
            recorded = unet(x, t, encoder_hidden_states=text,
                            cross_attention_kwargs={"cones2": GuidanceCall(active=False, recorder=rec)}).sample
        finally:
            restore(unet, old)
    assert (plain - stock).abs().max() <= 1e-6
    assert (off - stock).abs().max() <= 1e-6
    assert (none - stock).abs().max() <= 1e-6
    assert (recorded - stock).abs().max() <= 1e-5
    assert rec.calls > 0 and rec.maps()["x"].shape == (1, 32, 32)


def _eager_reference(attn, hidden, text, W, eta, sigma, cond_rows):
    """Direct eager computation of METHOD.md section 3, written out step by step."""
    B, Q, _ = hidden.shape
    H = attn.heads
    q = attn.to_q(hidden)
    k = attn.to_k(text)
    v = attn.to_v(text)
    d = q.shape[-1] // H

    def heads(t):
        return t.view(B, -1, H, d).transpose(1, 2)

    q, k, v = heads(q), heads(k), heads(v)
    scores = q @ k.transpose(-1, -2)  # raw QK^T, (B, H, Q, K)
    cond = scores[cond_rows]
    # per image: over the whole score tensor of one conditional row (all heads), as the
    # reference computes it when it renders one image per call
    std = torch.stack([torch.std(row) for row in cond])[:, None, None]
    bias = eta * W * math.log(1 + sigma**2) * std  # (rows, Q, K), shared across heads
    biased = scores.clone()
    biased[cond_rows] = cond + bias[:, None]
    probs = torch.softmax(biased * (1.0 / math.sqrt(d)), dim=-1)
    out = (probs @ v).transpose(1, 2).reshape(B, Q, H * d)
    return attn.to_out[1](attn.to_out[0](out))


@pytest.mark.parametrize("weights", ["layout", "random"])
def test_biased_cross_attention_matches_formula(weights):
    torch.manual_seed(0)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8)
    attn.eval()
    B, Q, K = 4, 64, 77  # [uncond x2, cond x2]
    hidden = torch.randn(B, Q, 32)
    text = torch.randn(B, K, 24)
    if weights == "layout":
        W = torch.zeros(1, Q, K)
        inside = torch.zeros(Q, dtype=torch.bool)
        inside[:20] = True
        W[0, :, 5] = torch.where(inside, torch.tensor(2.5), torch.tensor(-1e8))
        W[0, :, 9] = torch.where(~inside, torch.tensor(2.5), torch.tensor(-1e8))
    else:
        W = torch.randn(2, Q, K) * 3
    eta, sigma = 0.08, 7.3
    attn.set_processor(Cones2AttnProcessor())
    with torch.no_grad():
        got = attn(hidden, text, cones2=GuidanceCall(weight_maps={Q: W}, eta=eta, sigma=sigma, cond="cfg"))
        want = _eager_reference(attn, hidden, text, W, eta, sigma, slice(2, 4))
        stock = Attention.forward(attn, hidden, text, cones2=None)
        eager = Cones2AttnProcessor(eager=True)
        got_eager = eager(attn, hidden, text, cones2=GuidanceCall(weight_maps={Q: W}, eta=eta, sigma=sigma, cond="cfg"))
        all_rows = attn(hidden, text, cones2=GuidanceCall(weight_maps={Q: W[:1].expand(B, Q, K) if W.shape[0] == 1 else W.repeat(2, 1, 1)}, eta=eta, sigma=sigma, cond="all"))
        want_all = _eager_reference(attn, hidden, text, W if W.shape[0] == 1 else W.repeat(2, 1, 1), eta, sigma, slice(0, 4))
    assert (got - want).abs().max() <= 1e-5
    assert (got_eager - want).abs().max() <= 1e-5
    assert (all_rows - want_all).abs().max() <= 1e-5
    # conditional-only rule: the unconditional half is untouched, the conditional half moved
    assert (got[:2] - stock[:2]).abs().max() <= 1e-6
    assert (got[2:] - stock[2:]).abs().max() > 1e-3


def test_bias_fades_with_sigma_and_self_attention_untouched():
    torch.manual_seed(1)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8)
    attn.set_processor(Cones2AttnProcessor())
    hidden, text = torch.randn(2, 16, 32), torch.randn(2, 77, 24)
    W = torch.randn(1, 16, 77)
    with torch.no_grad():
        stock = attn(hidden, text, cones2=None)
        zero = attn(hidden, text, cones2=GuidanceCall(weight_maps={16: W}, sigma=0.0))
        self_attn = Attention(query_dim=32, heads=4, dim_head=8)
        self_attn.set_processor(Cones2AttnProcessor())
        a = self_attn(hidden, cones2=GuidanceCall(weight_maps={16: W}, sigma=5.0))
        self_attn.set_processor(AttnProcessor2_0())
        b = self_attn(hidden)
    assert (zero - stock).abs().max() <= 1e-6
    assert (a - b).abs().max() == 0


def test_one_guidance_call_follows_sigma_across_steps():
    """The per-step mask cache must follow sigma: one GuidanceCall reused over steps, as the pipeline does."""
    torch.manual_seed(2)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8)
    attn.set_processor(Cones2AttnProcessor())
    B, Q, K = 2, 16, 77
    hidden, text = torch.randn(B, Q, 32), torch.randn(B, K, 24)
    W = torch.randn(1, Q, K) * 3
    call = GuidanceCall(weight_maps={Q: W}, eta=0.08, cond="cfg")
    with torch.no_grad():
        for sigma in (7.3, 0.5, 7.3, 0.0):
            call.sigma = sigma
            got = attn(hidden, text, cones2=call)
            want = _eager_reference(attn, hidden, text, W, 0.08, sigma, slice(1, 2))
            assert (got - want).abs().max() <= 1e-5, sigma
        # another batch size through the same call (num_images_per_prompt): its own mask
        hidden4, text4 = torch.randn(4, Q, 32), torch.randn(4, K, 24)
        call.sigma = 3.0
        got4 = attn(hidden4, text4, cones2=call)
        want4 = _eager_reference(attn, hidden4, text4, W, 0.08, 3.0, slice(2, 4))
    assert (got4 - want4).abs().max() <= 1e-5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("sigma", [0.0, 6.0])
def test_low_precision_bias_stays_finite(sigma, dtype):
    """fp16/bf16: the -1e8 outside weight saturates to -inf in the mask, never NaN (not even at sigma 0)."""
    torch.manual_seed(3)
    attn = Attention(query_dim=32, cross_attention_dim=24, heads=4, dim_head=8)
    attn.eval()
    B, Q, K = 2, 64, 77
    hidden, text = torch.randn(B, Q, 32), torch.randn(B, K, 24)
    W = torch.zeros(1, Q, K)
    W[0, :, 5] = torch.where(torch.arange(Q) < 20, torch.tensor(2.5), torch.tensor(-1e8))
    with torch.no_grad():
        want = _eager_reference(attn, hidden, text, W, 0.08, sigma, slice(1, 2))
        attn.to(dtype)
        attn.set_processor(Cones2AttnProcessor())
        got = attn(hidden.to(dtype), text.to(dtype), cones2=GuidanceCall(weight_maps={Q: W}, eta=0.08, sigma=sigma))
    assert torch.isfinite(got).all()
    assert (got.float() - want).abs().max() <= 0.05
