"""``cones2 generate`` and ``cones2 layout preview`` on the demo model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cones2.cli import main

PROMPT = "a dog and a mug on the beach"


@pytest.fixture()
def dog_file(tmp_path, demo_model_dir, demo_text_encoder):
    import torch

    from cones2.base_model import model_info
    from cones2.residual import word_token_ids
    from cones2.residual_file import make_residual

    fp = model_info(str(demo_model_dir)).fingerprint
    rf = make_residual(torch.randn(1, 32, generator=torch.Generator().manual_seed(0)), "dog",
                       word_token_ids(demo_text_encoder[0], "dog"), fp)
    return rf, rf.save(tmp_path / "dog.safetensors")


def test_generate_writes_png_with_metadata(tmp_path, dog_file):
    rf, path = dog_file
    out = tmp_path / "out.png"
    result = CliRunner().invoke(main, [
        "generate", PROMPT, "--subject", f"dog={path}", "--box", "dog=0.05,0.3,0.5,0.95",
        "--box", "mug=0.55,0.5,0.95,0.95", "--steps", "2", "--seed", "3", "-o", str(out),
        "--attention-maps", str(tmp_path / "maps"), "--json",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["images"] == [str(out)] and data["base_model"]["is_demo"]
    image = Image.open(out)
    assert image.size == (64, 64)
    meta = json.loads(image.text["cones2"])
    assert meta["prompt"] == PROMPT and meta["seed"] == 3
    assert meta["subjects"]["dog"]["sha256"] == rf.sha256()
    assert [r["subject"] for r in meta["layout"]] == ["dog", "mug"]
    assert meta["settings"]["steps"] == 2 and meta["settings"]["self_recurrence"] is True
    assert meta["base_model"]["fingerprint"] == rf.base_fingerprint
    assert "cones2-demo-model" in image.text
    maps = {p.split("/")[-1] for p in data["attention_maps"]}
    assert {"out-0-attention-dog.png", "out-0-attention-mug.png", "out-0-attention.png"} <= maps
    assert data["layout_preview"] == str(tmp_path / "maps" / "layout.png") and "layout.png" not in maps


def test_generate_registry_ref_and_colour_layout(tmp_path, dog_file):
    from cones2.registry import open_catalogue

    rf, _ = dog_file
    with open_catalogue() as cat:
        cat.add(rf, "dog-max")
    layout = np.zeros((64, 64, 3), dtype=np.uint8)
    layout[20:, :30] = (255, 0, 0)
    Image.fromarray(layout).save(tmp_path / "l.png")
    result = CliRunner().invoke(main, [
        "generate", PROMPT, "--subject", "dog=dog-max", "--layout-image", str(tmp_path / "l.png"),
        "--colour", "255,0,0=dog:3", "--steps", "2", "--scheduler", "euler", "-o", str(tmp_path / "o.png"),
    ])
    assert result.exit_code == 0, result.output
    assert "demo model" in result.output
    meta = json.loads(Image.open(tmp_path / "o.png").text["cones2"])
    assert meta["subjects"]["dog"]["name"] == "dog-max" and meta["subjects"]["dog"]["version"] == 1
    assert meta["layout"][0]["weight_in"] == 3.0 and meta["settings"]["scheduler"] == "euler"
    assert meta["settings"]["scheduler_class"] == "EulerDiscreteScheduler" and meta["settings"]["preset"] == "reference"
    assert meta["settings"]["overridden"] == ["scheduler", "steps"]


@pytest.mark.parametrize("args, code, text", [
    (["--box", "cat=0,0,0.5,0.5"], 6, "cat"),
    (["--box", "dog=0,0,1.5,0.5"], 6, "outside"),
    (["--box", "dog=0.5,0,0.5,0.5"], 6, "empty"),
    (["--box", "dog=0,0,0.5"], 6, "4 numbers"),
    (["--box", "dog0,0,0.5,0.5"], 2, "LEFT=RIGHT"),
    (["--colour", "255,0,0=dog"], 2, "go together"),
    (["--subject", "dog=no-such-subject"], 8, "no-such-subject"),
])
def test_generate_refusals(tmp_path, args, code, text):
    result = CliRunner().invoke(main, ["generate", PROMPT, "--steps", "1", "-o", str(tmp_path / "x.png"), *args])
    assert result.exit_code == code, result.output
    assert text in result.output
    assert not (tmp_path / "x.png").exists()


def test_layout_preview(tmp_path):
    out = tmp_path / "layout.png"
    result = CliRunner().invoke(main, [
        "layout", "preview", "--box", "dog=0.05,0.3,0.5,0.95", "--box", "mug=0.55,0.5,0.95,0.95",
        "--prompt", PROMPT, "--width", "256", "--height", "128", "-o", str(out), "--json",
    ])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data["positions"]) == {"dog", "mug"}
    assert Image.open(out).size == (256, 128)
    bad = CliRunner().invoke(main, ["layout", "preview", "--box", "cat=0,0,1,1", "--prompt", PROMPT, "-o", str(out)])
    assert bad.exit_code == 6 and "cat" in bad.output
