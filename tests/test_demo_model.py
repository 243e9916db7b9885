"""The demo base model: complete diffusers folder, deterministic, offline, used as fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cones2.base_model import model_info, resolve_model_path
from cones2.demo_model import build_demo_model, is_demo_model
from cones2.errors import UsageError


def test_layout_and_loading_through_from_pretrained(demo_model_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline

    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (demo_model_dir / part).is_dir(), part
    index = json.loads((demo_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    pipe = StableDiffusionPipeline.from_pretrained(demo_model_dir, local_files_only=True)
    assert pipe.tokenizer.model_max_length == 77
    assert pipe.tokenizer.pad_token == "!" and pipe.tokenizer.pad_token_id == 0  # like SD 2
    assert pipe.scheduler.config.steps_offset == 1
    image = pipe("a photo of a dog", num_inference_steps=2, height=64, width=64, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 64, 64, 3)


def test_tokenizer_covers_demo_words_and_falls_back_to_bytes(demo_text_encoder) -> None:
    tokenizer, _ = demo_text_encoder
    for word in ("dog", "mug", "cat", "beach", "photo", "rendering"):
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    ids = tokenizer("zyxwv", add_special_tokens=False).input_ids
    assert len(ids) > 1 and tokenizer.unk_token_id not in ids


def test_deterministic_from_seed(tmp_path: Path, demo_model_dir: Path) -> None:
    again = build_demo_model(tmp_path / "again", seed=0)
    other = build_demo_model(tmp_path / "other", seed=5)
    for part, name in (("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")):
        a, b, c = (load_file(d / part / name) for d in (demo_model_dir, again, other))
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a)


def test_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        build_demo_model(tmp_path / "x")
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_demo_is_the_fallback_base_model(monkeypatch: pytest.MonkeyPatch, cones2_home: Path) -> None:
    monkeypatch.delenv("CONES2_BASE_MODEL")
    source, path = resolve_model_path(None)
    assert source == "demo" and is_demo_model(path) and path.is_relative_to(cones2_home)
    info = model_info(None)
    assert info.is_demo
    # The config file wins over the demo model, the env var over the config file.
    (cones2_home / "config.toml").write_text(f'base_model = "{path}"\n')
    assert resolve_model_path(None)[0] == str(path)
    monkeypatch.setenv("CONES2_BASE_MODEL", "/nonexistent/model/folder")
    with pytest.raises(Exception, match="not a model folder"):
        resolve_model_path(None)
