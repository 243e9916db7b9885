"""Learning a subject (cones2.train, ``cones2 train``) on the demo model, at 32 px and a few steps."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from cones2.cli import main
from cones2.errors import (
    BaseModelError,
    BaseModelMismatchError,
    ConflictError,
    TokenLocationError,
    TrainingError,
    TrainingInterrupted,
    UsageError,
)
from cones2.train import TrainConfig, train_subject

RES = 32


def _picture(path: Path, seed: int, size: tuple[int, int] = (40, 48)) -> Path:
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 127 / (w + h)], axis=-1)
    img = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


@pytest.fixture()
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        _picture(folder / f"img{i}.png", i)
    (folder / "notes.txt").write_text("not an image, and not picked up from a folder")
    return folder


def quick(**overrides: object) -> TrainConfig:
    settings: dict[str, object] = {"steps": 2, "resolution": RES, "lr": 1e-3}
    settings.update(overrides)
    return TrainConfig(**settings)  # type: ignore[arg-type]


def _stored(ref: str):  # noqa: ANN202
    from cones2.registry import open_catalogue

    with open_catalogue() as cat:
        return cat.load(ref)


def _nothing_registered() -> None:
    from cones2.registry import open_catalogue

    with open_catalogue() as cat:
        assert cat.list_subjects() == []


# ------------------------------------------------------------------ end to end


def test_train_registers_a_version_with_training_metadata(photos: Path, tmp_path: Path, demo_model_dir: Path,
                                                           demo_text_encoder) -> None:
    import torch
    from transformers import CLIPTextModel

    from cones2.base_model import model_info
    from cones2.residual import TEMPLATE_SETS, encode, locate_word

    steps_seen: list[int] = []
    result = train_subject([photos], "dog", "dog-max", config=quick(), description="Max", keep_encoder=tmp_path / "enc",
                           on_step=lambda s: steps_seen.append(s.step))
    assert (result.name, result.version, result.steps) == ("dog-max", 1, 2)
    assert steps_seen == [1, 2]
    record, residual = _stored("dog-max@1")
    info = model_info(str(demo_model_dir))
    assert record.sha256 == result.sha256 and residual.shape == (1, 32) and residual.word == "dog"
    assert record.base_fingerprint == info.fingerprint
    meta = residual.metadata["training"]
    digests = sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.glob("*.png"))
    assert sorted(i["sha256"] for i in meta["images"]) == digests
    assert (meta["steps"], meta["lr"], meta["batch_size"], meta["seed"]) == (2, 1e-3, 1, 0)
    assert meta["base_fingerprint"] == info.fingerprint and meta["loss"]["first"] > 0
    assert len(meta["loss"]["bucket_means"]) == 2
    assert residual.templates == "reference" and meta["templates"] == {"set": "reference", "count": 27}
    assert not any(Path(result.output_dir).glob("checkpoint-*"))

    # the registered residual is the template mean of the tuned encoder's change at the word,
    # written out here by hand rather than through compute_residual
    tokenizer, base = demo_text_encoder
    tuned = CLIPTextModel.from_pretrained(result.encoder_dir).eval()
    diffs = []
    with torch.no_grad():
        for template in TEMPLATE_SETS["reference"]:
            prompt = template.format("dog")
            ids = tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
            diffs.append((encode(tuned, ids) - encode(base, ids))[0, locate_word(tokenizer, prompt, "dog")])
    expected = torch.stack(diffs).mean(0).numpy()
    np.testing.assert_allclose(residual.residual, expected, atol=1e-6)
    assert np.abs(expected).max() > 1e-4  # the encoder moved at the word

    # a second run is the next version of the same subject; without --keep-encoder nothing else is kept
    again = train_subject([photos], "dog", "dog-max", config=quick(steps=1, seed=1))
    assert again.version == 2 and again.encoder_dir is None


# ------------------------------------------------------------------ the loss


def _moves(tmp_path: Path, photos: Path, tokenizer, base, bos: float, rest: float, tag: str) -> tuple[float, float, float]:  # noqa: ANN001
    """How far the tuned encoder's output for the training prompt moved: at BOS, after the word, at the word."""
    import torch
    from transformers import CLIPTextModel

    result = train_subject([photos], "dog", f"dog-{tag}", keep_encoder=tmp_path / tag,
                           config=quick(steps=4, lr=2e-3, bos_weight=bos, rest_weight=rest))
    tuned = CLIPTextModel.from_pretrained(result.encoder_dir).eval()
    ids = tokenizer("dog", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        diff = tuned(ids)[0] - base(ids)[0]
    n = len(tokenizer("dog", add_special_tokens=False).input_ids)
    return float(diff[0, 0].norm()), float(diff[0, 1 + n :].norm()), float(diff[0, 1 : 1 + n].norm())


def test_preservation_loss_keeps_bos_and_after_word_outputs(photos: Path, tmp_path: Path, demo_text_encoder) -> None:
    tokenizer, base = demo_text_encoder
    bos_on, rest_on, word_on = _moves(tmp_path, photos, tokenizer, base, 1e-2, 1e-3, "on")
    bos_off, rest_off, word_off = _moves(tmp_path, photos, tokenizer, base, 0.0, 0.0, "off")
    assert bos_on < bos_off and rest_on < rest_off, (bos_on, bos_off, rest_on, rest_off)
    assert word_on > 0 and word_off > 0


def test_batch_of_two_gives_the_loss_terms_of_two_single_samples(demo_model_dir: Path) -> None:
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel

    from cones2.train.loss import loss_terms

    unet = UNet2DConditionModel.from_pretrained(str(demo_model_dir), subfolder="unet").eval()
    scheduler = DDPMScheduler.from_pretrained(str(demo_model_dir), subfolder="scheduler")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(1, 77, 32, generator=g)
    embeds = base + 0.1 * torch.randn(2, 77, 32, generator=g)  # two samples, two different encoder outputs
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    timesteps = torch.tensor([10, 700])
    common = {"unet": unet, "scheduler": scheduler, "base_embeds": base, "word_tokens": 1, "bos_weight": 1e-2, "rest_weight": 1e-3}
    with torch.no_grad():
        both = loss_terms(embeds=embeds, latents=latents, noise=noise, timesteps=timesteps, **common)
        single = [loss_terms(embeds=embeds[i : i + 1], latents=latents[i : i + 1], noise=noise[i : i + 1],
                             timesteps=timesteps[i : i + 1], **common) for i in range(2)]
    for name in ("diffusion", "bos", "rest", "total"):
        pair = torch.cat([getattr(s, name) for s in single])
        torch.testing.assert_close(getattr(both, name), pair, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.mean(), (single[0].mean() + single[1].mean()) / 2, atol=1e-5, rtol=1e-5)
    # the terms are the plain L2 norms of METHOD.md section 1
    diff = embeds - base
    torch.testing.assert_close(both.bos, diff[:, 0].norm(dim=-1))
    torch.testing.assert_close(both.rest, diff[:, 2:].flatten(1).norm(dim=-1))
    assert not torch.allclose(both.bos[0], both.bos[1])


def test_v_prediction_target_is_the_velocity(demo_model_dir: Path) -> None:
    import torch
    from diffusers import DDPMScheduler

    from cones2.train.loss import diffusion_target

    sched = DDPMScheduler.from_pretrained(str(demo_model_dir), subfolder="scheduler", prediction_type="v_prediction")
    x, n, t = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4), torch.tensor([500])
    a = sched.alphas_cumprod[500]
    torch.testing.assert_close(diffusion_target(sched, x, n, t), a.sqrt() * n - (1 - a).sqrt() * x)


# ------------------------------------------------------------------ checkpoints, resume, Ctrl-C


def test_interrupt_then_resume_equals_uninterrupted_run(photos: Path, tmp_path: Path) -> None:
    from cones2.registry import open_catalogue

    config = quick(steps=4, batch_size=2, flip=True, checkpoint_every=3)
    whole = train_subject([photos], "dog", "dog-a", config=config, output_dir=tmp_path / "a")
    assert [Path(p).name for p in whole.checkpoints] == ["checkpoint-3"]

    def stop_at_two(step) -> None:  # noqa: ANN001
        if step.step == 2:  # Ctrl-C: the handler lets step 2 finish and stops at the boundary
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="after step 2 of 4"):
        train_subject([photos], "dog", "dog-b", config=config, output_dir=tmp_path / "b", on_step=stop_at_two)
    assert (tmp_path / "b" / "checkpoint-2" / "state.json").is_file()
    with open_catalogue() as cat:
        assert [s.name for s in cat.list_subjects()] == ["dog-a"]  # nothing registered by the interrupted run
    resumed = train_subject([photos], "dog", "dog-b", config=config, output_dir=tmp_path / "b", resume="latest")
    assert resumed.resumed_from == str(tmp_path / "b" / "checkpoint-2")
    _, a = _stored(whole.ref)
    _, b = _stored(resumed.ref)
    np.testing.assert_array_equal(a.residual, b.residual)
    assert a.metadata["training"]["loss"] == b.metadata["training"]["loss"]
    # a checkpoint from another run's settings is refused
    with pytest.raises(TrainingError, match="belongs to another run"):
        train_subject([photos], "dog", "dog-c", config=quick(steps=4, seed=5), output_dir=tmp_path / "b", resume="latest")


def test_checkpoint_limit_and_validation_images(photos: Path, tmp_path: Path) -> None:
    config = quick(steps=4, checkpoint_every=1, checkpoints_total_limit=2, validate_every=2, validation_steps=2)
    result = train_subject([photos], "dog", "dog-max", config=config, output_dir=tmp_path / "run")
    kept = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*"))
    assert kept == ["checkpoint-2", "checkpoint-3"]  # the finished step 4 is registered, not checkpointed
    assert not list((tmp_path / "run").glob(".checkpoint-*"))  # no temporary folders left
    assert [Path(p).name for p in result.validation_images] == ["step-000002.png", "step-000004.png"]
    with Image.open(result.validation_images[0]) as img:
        assert img.size == (RES, RES)


# ------------------------------------------------------------------ bad input, checked before training


def test_bad_inputs_refused_before_training(photos: Path, tmp_path: Path, demo_model_dir: Path) -> None:
    import shutil

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no training images"):
        train_subject([empty], "dog", "dog-max", config=quick())
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(TrainingError, match="corrupt.png"):
        train_subject([photos, corrupt], "dog", "dog-max", config=quick())
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes((photos / "img0.png").read_bytes()[:200])
    with pytest.raises(TrainingError, match="truncated.png: corrupt"):
        train_subject([truncated], "dog", "dog-max", config=quick())
    with pytest.raises(TrainingError, match="not an image"):
        train_subject([photos / "notes.txt"], "dog", "dog-max", config=quick())
    small = _picture(tmp_path / "small.png", 7, (48, 24))
    with pytest.raises(TrainingError, match="48x24 is smaller than the training resolution 32"):
        train_subject([small], "dog", "dog-max", config=quick())
    with pytest.raises(TokenLocationError, match="not whole tokens"):
        train_subject([photos], "<|endoftext|>", "dog-max", config=quick())
    with pytest.raises(TokenLocationError, match="not whole tokens"):
        train_subject([photos], "dog<|endoftext|>", "dog-max", config=quick())
    with pytest.raises(TokenLocationError, match="too long"):
        train_subject([photos], "dog" * 40, "dog-max", config=quick())
    no_encoder = tmp_path / "no-encoder"
    shutil.copytree(demo_model_dir, no_encoder, ignore=shutil.ignore_patterns("text_encoder"))
    with pytest.raises(BaseModelError, match="text_encoder"):
        train_subject([photos], "dog", "dog-max", base=no_encoder, config=quick())
    no_unet = tmp_path / "no-unet"
    shutil.copytree(demo_model_dir, no_unet, ignore=shutil.ignore_patterns("unet"))
    with pytest.raises(BaseModelError, match="no unet"):
        train_subject([photos], "dog", "dog-max", base=no_unet, config=quick())
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(UsageError, match="cannot write"):
        train_subject([photos], "dog", "dog-max", config=quick(), output_dir=blocker / "out")
    with pytest.raises(UsageError, match="cannot write"):
        train_subject([photos], "dog", "dog-max", config=quick(), keep_encoder=blocker / "enc")
    with pytest.raises(UsageError, match="resolution must be a multiple of 8"):
        quick(resolution=36)
    _nothing_registered()
    assert not (tmp_path / "cones2-home" / "training").exists()


def test_existing_name_with_other_base_or_word_refused(photos: Path, demo_model_dir: Path) -> None:
    from cones2.base_model import model_info
    from cones2.registry import open_catalogue
    from cones2.residual_file import make_residual

    fp = model_info(str(demo_model_dir)).fingerprint
    other = make_residual(np.ones((1, 32), "float32"), "dog", [643], "0" * 64)
    with open_catalogue() as cat:
        cat.add(other, "dog-max", check_base=False)
    with pytest.raises(BaseModelMismatchError, match="dog-max exists for base model 000000000000"):
        train_subject([photos], "dog", "dog-max", config=quick())
    with open_catalogue() as cat:
        cat.add(make_residual(np.ones((1, 32), "float32"), "dog", [643], fp), "cat-max")
    with pytest.raises(ConflictError, match="is a 'dog', not a 'cat'"):
        train_subject([photos], "cat", "cat-max", config=quick())
    with open_catalogue() as cat:
        assert [v.version for v in cat.list_versions("dog-max")] == [1]
        assert [v.version for v in cat.list_versions("cat-max")] == [1]


# ------------------------------------------------------------------ CLI


def test_cli_train_json_and_bad_input(photos: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    out = runner.invoke(main, ["train", str(photos), "--word", "dog", "--name", "dog-max", "--steps", "2",
                               "--resolution", str(RES), "--lr", "1e-3", "--keep-encoder", str(tmp_path / "enc"), "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["ref"] == "dog-max@1" and data["steps"] == 2 and data["encoder_dir"] == str(tmp_path / "enc")
    assert (tmp_path / "enc" / "config.json").is_file()
    bad = runner.invoke(main, ["train", str(photos), "--word", "dog", "--name", "dog-max", "--resolution", "64"])
    assert bad.exit_code == TrainingError.exit_code
    assert bad.stderr.startswith("Error: training image") and bad.stderr.count("\n") == 1
    fp16 = runner.invoke(main, ["train", str(photos), "--word", "dog", "--name", "dog-max", "--steps", "1", "--json",
                                "--resolution", str(RES), "--mixed-precision", "fp16", "--device", "cpu"])
    assert fp16.exit_code == 0, fp16.output  # another precision later in the same process (accelerate's state is reset)
    assert json.loads(runner.invoke(main, ["show", "dog-max@2", "--json"]).stdout)["version"]["metadata"]["training"]["mixed_precision"] == "fp16"
    missing = runner.invoke(main, ["train", str(photos), "--word", "dog", "--name", "dog-max", "--steps", "1",
                                   "--resolution", str(RES), "--resume", "checkpoint-9", "--output-dir", str(tmp_path / "run")])
    assert missing.exit_code == TrainingError.exit_code and missing.stderr.startswith("Error: checkpoint checkpoint-9: not found")


def test_cli_progress_bar_shows_step_and_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.progress import Progress

    from cones2.cli.train import _progress
    from cones2.train import TrainStep

    updates: list[dict] = []
    monkeypatch.setattr(Progress, "update", lambda self, task, **fields: updates.append(fields))
    with _progress(True, 3) as on_step:
        for step, loss in ((1, 0.51234), (2, 0.25)):
            on_step(TrainStep(step, 3, loss, loss, 0.0, 0.0, 0.1))
    assert updates == [{"completed": 1, "loss": "0.5123"}, {"completed": 2, "loss": "0.2500"}]
    with _progress(False, 3) as silent:  # --json, or stderr not a terminal: no bar
        assert silent is None


def test_gradient_checkpointing_gives_the_same_residual(photos: Path) -> None:
    plain = train_subject([photos], "dog", "dog-a", config=quick(steps=1))
    checkpointed = train_subject([photos], "dog", "dog-b", config=quick(steps=1, gradient_checkpointing=True))
    _, a = _stored(plain.ref)
    _, b = _stored(checkpointed.ref)
    np.testing.assert_allclose(a.residual, b.residual, atol=1e-6)
    assert b.metadata["training"]["loss"] == a.metadata["training"]["loss"]


def test_interrupt_inside_a_step_writes_no_checkpoint(photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cones2.train.loop import _Run

    real = _Run.train_step
    calls = []

    def cut_short(self):  # noqa: ANN001, ANN202 - a second Ctrl-C lands inside step 2
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(_Run, "train_step", cut_short)
    with pytest.raises(TrainingInterrupted, match="inside step 2 of 3; no checkpoint"):
        train_subject([photos], "dog", "dog-max", config=quick(steps=3), output_dir=tmp_path / "run")
    assert not list((tmp_path / "run").glob("*checkpoint-*"))
    _nothing_registered()


# ------------------------------------------------------------------ images, the latent cache, Ctrl-C from outside


def test_images_resized_centre_cropped_and_encoded_once(tmp_path: Path, demo_model_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch
    from diffusers import AutoencoderKL

    from cones2.train.data import encode_latents, load_images

    # the README's rule: the shorter side is resized to the resolution (Lanczos), then the centre square is cropped
    wide = _picture(tmp_path / "wide.png", 3, (50, 40))
    (picture,) = load_images([wide], RES)
    with Image.open(wide) as img:
        expected = np.asarray(img.convert("RGB").resize((40, 32), Image.Resampling.LANCZOS))[:, 4:36]
    np.testing.assert_array_equal(picture.pixels, expected)
    assert picture.sha256 == hashlib.sha256(wide.read_bytes()).hexdigest()

    vae = AutoencoderKL.from_pretrained(str(demo_model_dir), subfolder="vae").eval()
    pictures = load_images([wide, _picture(tmp_path / "tall.png", 4, (32, 45))], RES)
    cache = encode_latents(vae, pictures, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        pixels = torch.from_numpy(np.stack([p.pixels for p in pictures]).astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
        dist = vae.encode(pixels).latent_dist
    scale = vae.config.scaling_factor
    torch.testing.assert_close(cache.mean, dist.mean * scale)
    torch.testing.assert_close(cache.std, dist.std * scale)
    noise = torch.randn((2, *cache.mean.shape[1:]), generator=torch.Generator().manual_seed(0))
    drawn = cache.sample([1, 0], noise, [True, False])
    torch.testing.assert_close(drawn[0], (cache.mean[1] + cache.std[1] * noise[0]).flip(-1))  # mirrored
    torch.testing.assert_close(drawn[1], cache.mean[0] + cache.std[0] * noise[1])

    # a run encodes its images once (the reference re-encodes them every step)
    calls: list[int] = []
    real = AutoencoderKL.encode

    def counting(self, x, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        calls.append(int(x.shape[0]))
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(AutoencoderKL, "encode", counting)
    train_subject([wide, tmp_path / "tall.png"], "dog", "dog-max", config=quick(steps=3))
    assert calls == [2]


CHILD = """
import sys
from cones2.cli import main
from cones2.train import loop

real = loop._Run.train_step

def step(self):  # tells the parent, through stdout, that a step finished
    out = real(self)
    print("step", flush=True)
    return out

loop._Run.train_step = step
main(sys.argv[1:], prog_name="cones2")
"""


def test_ctrl_c_on_a_cli_run_leaves_a_resumable_checkpoint(photos: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "run"
    args = ["train", str(photos), "--word", "dog", "--name", "dog-max", "--steps", "8", "--resolution", str(RES),
            "--lr", "1e-3", "--flip", "--output-dir", str(out)]
    child = subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert child.stdout is not None and child.stdout.readline() == "step\n"
        child.send_signal(signal.SIGINT)  # Ctrl-C during or just after step 2's start: that step finishes
        stdout, stderr = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == TrainingInterrupted.exit_code == 130, stderr
    message = stderr.strip().splitlines()[-1]
    assert message.startswith("Error: training interrupted after step ") and "resume with --resume latest" in message
    done = int(message.split("after step ")[1].split()[0])
    assert 1 <= done < 8 and stdout.count("step\n") == done - 1
    assert (out / f"checkpoint-{done}" / "state.json").is_file()
    _nothing_registered()

    resumed = CliRunner().invoke(main, [*args, "--resume", "latest", "--json"])
    assert resumed.exit_code == 0, resumed.output
    data = json.loads(resumed.stdout)
    assert data["ref"] == "dog-max@1" and data["resumed_from"] == str(out / f"checkpoint-{done}") and data["steps"] == 8
    whole = train_subject([photos], "dog", "dog-whole", config=quick(steps=8, flip=True), output_dir=tmp_path / "whole")
    _, a = _stored(whole.ref)
    _, b = _stored("dog-max@1")
    np.testing.assert_allclose(a.residual, b.residual, atol=1e-6)
