"""The measurable world: scenes, detector, world model folder, resumable training, harness smoke run."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cones2.world.detect import box_iou, detect, match_caption
from cones2.world.scenes import COLOURS, VARIANTS, sample_scene, variant_images

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cones2.world.model import build_world_model

    return build_world_model(tmp_path_factory.mktemp("world") / "model", seed=3)


# --------------------------------------------------------------------------- scenes


def test_scenes_are_a_function_of_their_seed() -> None:
    a, b, c = sample_scene(11), sample_scene(11), sample_scene(12)
    assert a == b and a.caption == b.caption
    assert np.array_equal(a.render(), b.render())
    assert not np.array_equal(a.render(), c.render())
    counts = {len(sample_scene(s).objects) for s in range(60)}
    assert counts == {1, 2, 3, 4}


def test_pattern_rate_draws_uncaptioned_patterns_and_zero_changes_nothing() -> None:
    from cones2.world.model import build_tokenizer
    from cones2.world.train import TrainConfig, make_batch

    plain = [sample_scene(s) for s in range(200)]
    assert all(o.pattern == "plain" for sc in plain for o in sc.objects)
    assert [sample_scene(s, pattern_rate=0.0) for s in range(20)] == plain[:20]
    marked = [sample_scene(s, pattern_rate=0.5) for s in range(200)]
    # the same objects and captions; about half of them patterned, every pattern kind used
    assert [m.caption for m in marked] == [p.caption for p in plain]
    kinds = [o.pattern for sc in marked for o in sc.objects]
    assert 0.4 < sum(k != "plain" for k in kinds) / len(kinds) < 0.6
    assert set(kinds) == {"plain", "stripes", "dots", "hollow"}
    found = [d.pattern for d in detect(marked[0].render())]
    assert sorted(found) == sorted(o.pattern for o in marked[0].objects)
    # the training batch follows the config; 0 gives the batches of a run without the field
    tok = build_tokenizer()
    a = make_batch(TrainConfig(), 3, tok)[0]
    b = make_batch(TrainConfig(pattern_rate=0.0), 3, tok)[0]
    c = make_batch(TrainConfig(pattern_rate=0.5), 3, tok)[0]
    assert np.array_equal(a.numpy(), b.numpy()) and not np.array_equal(a.numpy(), c.numpy())


def test_caption_names_every_object_and_boxes_hold_their_pixels() -> None:
    for seed in range(20):
        scene = sample_scene(seed, textured=False)
        assert scene.caption == " and ".join(f"a {o.colour} {o.shape}" for o in scene.objects)
        img = scene.render().astype(int)
        assert len({o.colour for o in scene.objects}) == len(scene.objects)
        for obj, (x0, y0, x1, y1) in zip(scene.objects, scene.boxes(), strict=True):
            # pixels more than half covered by the object's colour lie inside its box
            near = np.abs(img - np.array(COLOURS[obj.colour])).sum(-1) < 60
            ys, xs = np.nonzero(near)
            assert len(xs) > 10
            assert xs.min() >= np.floor(x0) - 1 and xs.max() <= np.ceil(x1) and ys.min() >= np.floor(y0) - 1 and ys.max() <= np.ceil(y1)
        # boxes of different objects do not overlap
        boxes = scene.boxes()
        assert all(box_iou(p, q) == 0 for i, p in enumerate(boxes) for q in boxes[i + 1 :])


def test_objects_are_antialiased() -> None:
    img = sample_scene(5, count=1, textured=False).render()
    values = {tuple(p) for p in img.reshape(-1, 3)}
    assert len(values) > 5  # background, colour and the mixtures of the rim


def test_variants_have_five_images_their_caption_never_names() -> None:
    for name, variant in VARIANTS.items():
        pairs = variant_images(name)
        assert len(pairs) == 5
        assert {cap for _, cap in pairs} == {f"a {variant.colour} {variant.shape}"}
        assert variant.pattern not in pairs[0][1]


# --------------------------------------------------------------------------- detector


def test_detector_ceiling_on_ground_truth_renders() -> None:
    correct, ious = [], []
    for seed in range(40):
        scene = sample_scene(1000 + seed)
        found = detect(scene.render())
        correct.append(match_caption(found, [(o.colour, o.shape) for o in scene.objects])["correct"])
        for obj, box in zip(scene.objects, scene.boxes(), strict=True):
            ious.append(max((box_iou(d.box, box) for d in found if d.colour == obj.colour), default=0.0))
    assert np.mean(correct) >= 0.95
    assert min(ious) >= 0.5 and np.mean(ious) > 0.8


def test_detector_tells_the_variants_patterns_apart() -> None:
    for name, variant in VARIANTS.items():
        for img, _ in variant_images(name, n=5, seed=2):
            found = detect(img)
            assert found and found[0].colour == variant.colour
            assert found[0].pattern == variant.pattern, name
    plain = detect(sample_scene(3, count=1, textured=False).render())
    assert [d.pattern for d in plain] == ["plain"]


def test_detector_on_an_empty_image_finds_nothing() -> None:
    assert detect(np.full((32, 32, 3), 128, dtype=np.uint8)) == []


# --------------------------------------------------------------------------- model


def test_phrase_local_encoder_keeps_phrases_apart() -> None:
    import torch

    from cones2.world.model import build_text_encoder, build_tokenizer

    tok = build_tokenizer()
    enc = build_text_encoder(tok, "phrase", seed=0).eval()
    ids_a = tok("a red circle and a blue square", padding="max_length", max_length=24, return_tensors="pt").input_ids
    ids_b = tok("a red circle and a green star", padding="max_length", max_length=24, return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = enc(ids_a)[0], enc(ids_b)[0]
    # "red circle" (positions 2, 3) does not see the second phrase; BOS, EOS and padding carry nothing of it
    assert torch.equal(a[0, :4], b[0, :4])
    assert torch.equal(a[0, 9:], b[0, 9:])
    assert not torch.allclose(a[0, 6:8], b[0, 6:8])
    causal = build_text_encoder(tok, "phrase", seed=0)
    causal.register_to_config(mask="causal")
    with torch.no_grad():
        ca, cb = causal(ids_a)[0], causal(ids_b)[0]
    assert torch.equal(ca[0, :4], cb[0, :4]) and not torch.allclose(ca[0, 9:], cb[0, 9:])  # EOS sees everything


def test_world_folder_round_trip_through_from_pretrained(world_dir: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from cones2.base_model import load_text_encoder, model_info
    from cones2.residual import locate_word
    from cones2.sampler import Cones2Pipeline, Layout
    from cones2.world.components import PassThroughVAE, PhraseLocalTextEncoder

    index = json.loads((world_dir / "model_index.json").read_text())
    assert index["text_encoder"] == ["cones2.world.components", "PhraseLocalTextEncoder"]
    assert index["vae"] == ["cones2.world.components", "PassThroughVAE"]
    pipe = Cones2Pipeline.from_pretrained(str(world_dir))
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.vae, PassThroughVAE) and isinstance(pipe.text_encoder, PhraseLocalTextEncoder)
    assert pipe.vae_scale_factor == 1
    stock = StableDiffusionPipeline.from_pretrained(str(world_dir), safety_checker=None)
    assert isinstance(stock.text_encoder, PhraseLocalTextEncoder)

    prompt = "a red circle and a blue square"
    assert locate_word(pipe.tokenizer, prompt, "square") == [7]  # word-level tokens are whole words
    layout = Layout.from_boxes({"circle": (0, 0, 0.5, 0.5), "square": (0.5, 0.5, 1, 1)})
    one = pipe(prompt, layout=layout, num_inference_steps=2, seed=4, output_type="np")
    two = pipe(prompt, layout=layout, num_inference_steps=2, seed=4, output_type="np")
    assert one.images.shape == (1, 32, 32, 3)
    assert np.array_equal(one.images, two.images)
    assert one.info["guided_steps"] == 2 and one.info["unet_evaluations"] == 4  # self-recurrence doubles
    info = model_info(str(world_dir))
    assert (info.hidden_size, info.max_length, info.is_demo) == (64, 24, False)
    tok, enc = load_text_encoder(str(world_dir))
    assert isinstance(enc, PhraseLocalTextEncoder) and tok("a red circle").input_ids == pipe.tokenizer("a red circle").input_ids


def test_clip_encoder_world_folder_loads(tmp_path: Path) -> None:
    from transformers import CLIPTextModel

    from cones2.world.model import build_world_model, load_world_pipeline

    pipe = load_world_pipeline(build_world_model(tmp_path / "clip", encoder="clip"))
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    out = pipe("a green star", num_inference_steps=1, seed=0, output_type="np")
    assert out.images.shape == (1, 32, 32, 3)


# --------------------------------------------------------------------------- training


def _weights(trainer) -> dict:  # noqa: ANN001
    return {k: v.clone() for k, v in {**trainer.unet.state_dict(), **trainer.ema_text_encoder.state_dict()}.items()}


def _weights_of(checkpoint: Path) -> dict:
    from safetensors.torch import load_file

    tensors = load_file(str(checkpoint / "weights.safetensors"))
    return {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(("unet.", "ema_text_encoder."))}


def test_training_resumed_after_two_steps_equals_four_straight(tmp_path: Path) -> None:
    from cones2.errors import UsageError
    from cones2.world.model import load_world_pipeline
    from cones2.world.train import TrainConfig, checkpoints, train

    config = TrainConfig(batch_size=2, checkpoint_every=2, keep=1)
    straight = _weights(train(tmp_path / "a", 4, config))
    train(tmp_path / "b", 2, config)
    assert [p.name for p in checkpoints(tmp_path / "b")] == ["checkpoint-000002"]
    resumed = train(tmp_path / "b", 4, config, resume=True)
    assert resumed.step == 4
    for name, value in _weights(resumed).items():
        assert np.array_equal(value.numpy(), straight[name].numpy()), name
    assert [p.name for p in checkpoints(tmp_path / "b")] == ["checkpoint-000004"]  # keep=1 pruned the older one
    assert not list((tmp_path / "b").glob(".tmp-*"))
    log = [json.loads(line) for line in (tmp_path / "b" / "train.log").read_text().splitlines()]
    assert [e["step"] for e in log] == [2, 4] and all(np.isfinite(e["loss"]) for e in log)
    pipe = load_world_pipeline(tmp_path / "b" / "checkpoint-000004" / "pipeline")
    assert json.loads((tmp_path / "b" / "checkpoint-000004" / "pipeline" / "cones2_world.json").read_text())["step"] == 4
    assert pipe("a red circle", num_inference_steps=1, seed=0, output_type="np").images.shape == (1, 32, 32, 3)
    with pytest.raises(UsageError, match="different settings"):
        train(tmp_path / "b", 6, TrainConfig(batch_size=3), resume=True)
    with pytest.raises(UsageError, match="already holds checkpoints"):
        train(tmp_path / "b", 6, config)


def test_init_from_starts_a_new_run_from_another_runs_weights(tmp_path: Path) -> None:
    from cones2.errors import UsageError
    from cones2.world.train import TrainConfig, read_state, train

    base = TrainConfig(batch_size=2, checkpoint_every=2, keep=1)
    train(tmp_path / "base", 2, base)
    start = tmp_path / "base" / "checkpoint-000002"
    fine = replace(base, init_from=str(start), pattern_rate=0.5)
    # zero steps: the new run holds exactly the weights it started from (raw and EMA)
    assert all(np.array_equal(v.numpy(), _weights_of(start)[k].numpy()) for k, v in _weights(train(tmp_path / "f0", 0, fine)).items())
    tuned = train(tmp_path / "fine", 2, fine)
    assert tuned.step == 2
    scratch = _weights(train(tmp_path / "scratch", 2, replace(base, pattern_rate=0.5)))
    assert any(not np.array_equal(v.numpy(), scratch[k].numpy()) for k, v in _weights(tuned).items())
    assert read_state(tmp_path / "fine" / "checkpoint-000002")["config"]["init_from"] == str(start)
    with pytest.raises(UsageError, match="encoder checkpoint"):
        train(tmp_path / "clip", 1, replace(fine, encoder="clip"))


def test_cosine_learning_rate_decay_added_on_resume(tmp_path: Path) -> None:
    from cones2.errors import UsageError
    from cones2.world.train import TrainConfig, read_state, train

    config = TrainConfig(lr=1e-3, warmup=1, decay_start=10, decay_end=20, decay_final=0.1)
    assert config.lr_at(5) == pytest.approx(1e-3)  # before the decay: constant
    assert config.lr_at(10) == pytest.approx(1e-3)
    assert config.lr_at(15) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half-way down the cosine
    assert config.lr_at(20) == pytest.approx(1e-4) and config.lr_at(99) == pytest.approx(1e-4)
    assert TrainConfig().lr_at(5000) == pytest.approx(1e-3)  # off by default
    with pytest.raises(UsageError, match="decay_final"):
        TrainConfig(decay_final=1.5)

    # a constant-lr run resumed with a decay from its resumed step on: the new lr is used and recorded
    flat = TrainConfig(batch_size=2, checkpoint_every=2, keep=1, warmup=1)
    train(tmp_path / "run", 2, flat)
    decayed = replace(flat, decay_start=2, decay_end=4, decay_final=0.1)
    trainer = train(tmp_path / "run", 4, decayed, resume=True)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(decayed.lr_at(3))
    assert trainer.optimizer.param_groups[0]["lr"] < 0.9e-3
    state = read_state(tmp_path / "run" / "checkpoint-000004")
    assert state["config"]["decay_start"] == 2 and state["config"]["decay_end"] == 4
    log = [json.loads(line) for line in (tmp_path / "run" / "train.log").read_text().splitlines()]
    assert log[-1]["lr"] == pytest.approx(decayed.lr_at(3))
    # a decay that would change steps already taken is refused
    with pytest.raises(UsageError, match="start it at step 4"):
        train(tmp_path / "run", 6, replace(decayed, decay_start=1), resume=True)


def test_training_cli_refuses_a_bad_encoder(tmp_path: Path) -> None:
    from cones2.world.train import main

    assert main(["--out", str(tmp_path / "x"), "--steps", "1", "--encoder", "lstm"]) == 2
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------- harness


def test_variant_images_are_written_for_training(tmp_path: Path) -> None:
    from PIL import Image

    from cones2.world.scenes import save_variant_images

    paths = save_variant_images("dotted-square", tmp_path / "imgs")
    assert len(paths) == 5 and Image.open(paths[0]).size == (32, 32)
    assert detect(np.asarray(Image.open(paths[0])))[0].pattern == "dots"
    assert (tmp_path / "imgs" / "captions.txt").read_text().splitlines()[0] == "dotted-square-0.png\ta blue square"


def test_eval_world_harness_smoke(world_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:

    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import eval_world
    finally:
        sys.path.pop(0)
    rc = eval_world.main(["--model", str(world_dir), "--prompts", "2", "--layout-prompts", "2", "--steps", "1",
                          "--weights", "0.08", "--ceiling", "8",
                          "--caption-scales", "2.0", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["scheduler"] == "default" and out["guidance_scale"] == 7.5
    assert out["caption_by_scale"]["2.0"]["n"] == 2  # (a) again at a lower classifier-free guidance scale
    assert out["detector_ceiling"]["accuracy"] >= 0.85
    assert out["caption"]["n"] == 2 and 0.0 <= out["caption"]["accuracy"] <= 1.0
    assert [r["guidance_weight"] for r in out["layout"]] == [None, 0.08]
    # two fixed scenes (1 and 2 objects): every asked object is scored
    assert {r["objects"] for r in out["layout"]} == {3}
    assert all(0.0 <= r["hit_rate"] <= 1.0 for r in out["layout"])
    assert "subjects" not in out  # (c)/(d): benchmarks/eval_world_subjects.py
