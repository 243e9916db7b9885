"""The trained world model shipped in the package: written by ``cones2 demo-model --world``,
exported from a checkpoint, refused when damaged, and good enough to measure layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cones2.cli import main
from cones2.errors import BaseModelError, UsageError
from cones2.world.pretrained import WEIGHTS, export_weights, read_metadata, write_world_model


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_world_model(tmp_path_factory.mktemp("shipped") / "world")


def test_shipped_weights_are_small_and_describe_their_run() -> None:
    assert WEIGHTS.is_file() and WEIGHTS.stat().st_size <= 20 * 1024 * 1024
    info = read_metadata()["info"]
    assert info["name"] == "cones2-world" and info["encoder"] == "phrase" and info["weights"] == "ema"
    assert info["step"] >= 2000 and info["train_config"]["batch_size"] == 32


def test_demo_model_world_writes_a_loadable_pipeline_folder(tmp_path: Path, shipped: Path) -> None:
    from cones2.base_model import model_info

    result = CliRunner().invoke(main, ["demo-model", str(tmp_path / "w"), "--world", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{"):])
    assert out["step"] == read_metadata()["info"]["step"] and "world model" in out["notice"]
    # the same weights every time: the same fingerprint as another write
    assert out["fingerprint"] == model_info(str(shipped)).fingerprint
    marker = json.loads((tmp_path / "w" / "cones2_world.json").read_text())
    assert len(marker["weights_sha256"]) == 64
    # a second write into the non-empty folder is refused without --force, and leaves it as it was
    again = CliRunner().invoke(main, ["demo-model", str(tmp_path / "w"), "--world"])
    assert again.exit_code != 0 and "not empty" in again.output
    assert (tmp_path / "w" / "cones2_world.json").is_file()


def test_export_then_write_round_trips_the_weights(tmp_path: Path) -> None:
    import torch

    from cones2.world.model import build_world_model, load_world_pipeline

    src = build_world_model(tmp_path / "src", seed=5)
    weights = export_weights(src, tmp_path / "w.safetensors", evaluation={"caption": 0.5})
    assert read_metadata(weights)["evaluation"] == {"caption": 0.5}
    dst = write_world_model(tmp_path / "dst", weights=weights)
    a, b = load_world_pipeline(src), load_world_pipeline(dst)
    for part in ("unet", "text_encoder"):
        sa, sb = getattr(a, part).state_dict(), getattr(b, part).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    with pytest.raises(UsageError, match="not a world model folder"):
        export_weights(tmp_path, tmp_path / "x.safetensors")


def test_damaged_or_foreign_weights_are_refused_in_one_line(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(WEIGHTS.read_bytes()[:5000])
    with pytest.raises(BaseModelError, match="not a readable safetensors file") as exc:
        write_world_model(tmp_path / "a", weights=cut)
    assert "\n" not in str(exc.value)
    other = tmp_path / "other.safetensors"
    save_file({"x": __import__("torch").zeros(2)}, str(other), metadata={"format": "something-else"})
    with pytest.raises(BaseModelError, match="not a cones2 world weights file"):
        write_world_model(tmp_path / "b", weights=other)
    wrong = tmp_path / "wrong.safetensors"
    save_file({"unet.x": __import__("torch").zeros(2)}, str(wrong),
              metadata={"format": "cones2-world-weights", "format_version": "1", "info": "{}"})
    with pytest.raises(BaseModelError, match="the unet weights do not fit the world model"):
        write_world_model(tmp_path / "c", weights=wrong)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # with overwrite, a damaged file still leaves an existing folder as it was
    (tmp_path / "kept").mkdir()
    (tmp_path / "kept" / "note.txt").write_text("mine")
    with pytest.raises(BaseModelError, match="do not fit"):
        write_world_model(tmp_path / "kept", weights=wrong, overwrite=True)
    assert (tmp_path / "kept" / "note.txt").read_text() == "mine"


def test_shipped_model_draws_the_asked_objects_and_layout_guidance_moves_them(shipped: Path) -> None:
    """The figures the README's tables report, on a few scenes: the random demo model fails all three."""
    from cones2.world import evaluate as ev
    from cones2.world.model import load_world_pipeline

    pipe = load_world_pipeline(shipped)
    scenes = ev.fixed_scenes(8, counts=(1, 2), seed=3)
    unguided = ev.layout_accuracy(pipe, scenes, guidance_weight=None, steps=10)
    guided = ev.layout_accuracy(pipe, scenes, guidance_weight=0.08, steps=10)
    assert unguided.objects == guided.objects == 12
    assert unguided.hit_rate <= 0.25 and guided.hit_rate >= 0.75
    assert guided.mean_iou > unguided.mean_iou + 0.3
    captions = ev.caption_accuracy(pipe, 8, counts=(1, 2), steps=10, guidance_scale=2.0)
    assert captions.colours >= 0.75 and captions.by_count[1] >= 0.75
    assert float(np.mean(list(captions.by_count.values()))) >= 0.5
