"""Benchmark of cones2's training step against the reference's training scheme.

One process, one set of models, the same images, word, learning rate, resolution and
batch size (1) for both:

  cones2     the step of ``cones2.train`` (``_Run.train_step``): latents of the training
             images encoded once and cached (a latent is sampled from the cached
             distribution each step), the prompt encoded once per step for the batch,
             per-sample loss terms, the VAE released after caching.
  reference  the reference's scheme re-created for measurement: every step encodes the
             image through the VAE, then the same diffusion + preservation loss on the
             squeezed batch-1 tensors, everything fp32.

Both use AdamW with the same settings on the whole text encoder (UNet and VAE frozen).

Models (``--model``):
  demo       the tiny built-in demo model (64 px)
  sd21-arch  SD 2.1's UNet, OpenCLIP ViT-H text encoder and VAE from their published
             configs with random weights (no download); use a reduced ``--size`` on a CPU

Time: wall-clock per step, median of ``--steps`` timed steps after one untimed warm-up
step, per scheme; the schemes run one after the other (each starts from a fresh copy of
the base text encoder and its own optimizer, the other scheme's state freed first).
Peak memory: above the level after the models were built, over the scheme's whole run
(cones2's one-time latent caching included): peak RSS on the CPU (method of
sampler_bench.py), ``torch.cuda.max_memory_allocated`` on a GPU.

Usage:  python benchmarks/train_bench.py --model demo
        nice -n 19 python benchmarks/train_bench.py --model sd21-arch --size 256 --steps 2
        python benchmarks/train_bench.py --model sd21-arch --size 768 --device cuda --mixed-precision fp16
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sampler_bench import PeakCUDA, PeakRSS, demo_components, sd21_components  # noqa: E402

WORD = "dog"


def _images(folder: Path, size: int, count: int = 2) -> list[Path]:
    import numpy as np
    from PIL import Image

    paths = []
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def _cones2(components: dict, paths: list[Path], args: argparse.Namespace) -> tuple[list[float], float, float]:
    from cones2.residual import word_token_ids
    from cones2.train import TrainConfig
    from cones2.train.data import load_images
    from cones2.train.loop import _Run

    config = TrainConfig(steps=args.steps + 1, lr=5e-6, resolution=args.size, batch_size=1, seed=0,
                         mixed_precision=args.mixed_precision, gradient_checkpointing=args.gradient_checkpointing)
    tokenizer = components["tokenizer"]
    pictures = load_images(paths, args.size)
    info = SimpleNamespace(path="-", fingerprint="bench", source="bench")
    parts = {"unet": components["unet"], "vae": components["vae"], "scheduler": components["scheduler"],
             "text_encoder": copy.deepcopy(components["text_encoder"])}
    run = _Run(config, info, tokenizer, WORD, word_token_ids(tokenizer, WORD), pictures, Path(tempfile.mkdtemp()),
               {}, "cpu" if args.device == "cpu" else None)
    meter = PeakCUDA() if args.device == "cuda" else PeakRSS()
    times: list[float] = []
    with meter:
        run.setup(None, parts)
        del parts
        first = run.train_step()["loss"]  # warm-up
        for _ in range(args.steps):
            _sync(args.device)
            start = time.perf_counter()
            run.train_step()
            _sync(args.device)
            times.append(time.perf_counter() - start)
    del run
    gc.collect()
    return times, meter.peak_mib, first


def _reference(components: dict, paths: list[Path], args: argparse.Namespace) -> tuple[list[float], float, float]:
    import torch
    from diffusers import DDPMScheduler

    from cones2.train.data import load_images, to_tensor

    device = args.device
    tokenizer, unet, vae = components["tokenizer"], components["unet"], components["vae"]
    scheduler = DDPMScheduler.from_config(components["scheduler"].config)
    for frozen in (unet, vae):
        frozen.requires_grad_(False)
        frozen.to(device, dtype=torch.float32)
    pixels = to_tensor(load_images(paths, args.size))
    ids = tokenizer(WORD, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids.to(device)
    n = len(tokenizer(WORD, add_special_tokens=False).input_ids)
    gen = torch.Generator().manual_seed(0)
    scale = float(vae.config.scaling_factor)

    meter = PeakCUDA() if device == "cuda" else PeakRSS()
    times: list[float] = []
    with meter:
        encoder = copy.deepcopy(components["text_encoder"]).to(device)
        encoder.requires_grad_(True)
        encoder.train()
        if args.gradient_checkpointing:
            encoder.gradient_checkpointing_enable()
            unet.enable_gradient_checkpointing()
        with torch.no_grad():
            base = encoder(ids)[0].detach()  # E0 taken at step 0, as the reference does
        optimizer = torch.optim.AdamW(encoder.parameters(), lr=5e-6, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)

        def step(i: int, encoder=encoder, optimizer=optimizer) -> float:  # noqa: ANN001
            image = pixels[i % len(pixels) : i % len(pixels) + 1].to(device)
            with torch.no_grad():
                latents = vae.encode(image).latent_dist.sample(generator=None) * scale  # every step
            noise = torch.randn(latents.shape, generator=gen).to(device)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=gen).to(device)
            noisy = scheduler.add_noise(latents, noise, t)
            embeds = encoder(ids)[0]
            pred = unet(noisy, t, encoder_hidden_states=embeds).sample
            target = noise if scheduler.config.prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, t)
            flat, flat0 = embeds.squeeze(), base.squeeze()  # the reference's batch-1-only slicing
            loss = (torch.nn.functional.mse_loss(pred.float(), target.float())
                    + 1e-2 * (flat[0] - flat0[0]).norm() + 1e-3 * (flat[1 + n :] - flat0[1 + n :]).norm())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(encoder.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return float(loss.detach())

        first = step(0)
        for i in range(args.steps):
            _sync(device)
            start = time.perf_counter()
            step(i + 1)
            _sync(device)
            times.append(time.perf_counter() - start)
        del encoder, optimizer
    gc.collect()
    return times, meter.peak_mib, first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["demo", "sd21-arch"], default="demo")
    parser.add_argument("--size", type=int, default=None, help="training resolution (demo: 64, sd21-arch: 256)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per scheme (demo: 10, sd21-arch: 2)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no",
                        help="cones2's setting (the reference scheme is always fp32)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="both schemes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    demo = args.model == "demo"
    args.size = args.size or (64 if demo else 256)
    args.steps = args.steps or (10 if demo else 2)

    import torch

    torch.manual_seed(0)
    built = time.perf_counter()
    components = demo_components() if demo else sd21_components()
    built = time.perf_counter() - built
    folder = Path(tempfile.mkdtemp(prefix="cones2-train-bench-"))
    paths = _images(folder, args.size)
    rows = {}
    for name, fn in (("reference", _reference), ("cones2", _cones2)):
        times, peak, first = fn(components, paths, args)
        median = statistics.median(times)
        rows[name] = {"s_per_step": median, "steps_per_s": 1 / median, "peak_mib": peak, "first_loss": first, "times": times}
    ratio = rows["cones2"]["steps_per_s"] / rows["reference"]["steps_per_s"]
    result = {"model": args.model, "size": args.size, "steps": args.steps, "device": args.device,
              "mixed_precision": args.mixed_precision, "gradient_checkpointing": args.gradient_checkpointing,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "build_s": built, "rows": rows,
              "speedup": ratio, "peak_ratio": rows["cones2"]["peak_mib"] / max(rows["reference"]["peak_mib"], 1e-9)}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"model {args.model}, {args.size} px, batch 1, {args.steps} timed steps, {args.device}, "
          f"cones2 mixed precision {args.mixed_precision}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'scheme':<10} {'s/step':>9} {'steps/s':>9} {'peak MiB':>9}")
    for name, row in rows.items():
        print(f"{name:<10} {row['s_per_step']:>9.3f} {row['steps_per_s']:>9.3f} {row['peak_mib']:>9.0f}")
    print(f"cones2 / reference: {ratio:.2f}x steps/s, {result['peak_ratio']:.2f}x peak memory")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
