"""Benchmark of the Cones 2 sampler against stock diffusers and the reference's execution scheme.

One process, one model, the same prompt, seed, scheduler, size and steps for every config:

  (a) stock diffusers ``StableDiffusionPipeline``
  (b) ``Cones2Pipeline``, two subjects + box layout, guided, self-recurrence off
  (c) the same, self-recurrence on
  (d) the reference's execution scheme re-created for measurement: eager matmul-softmax
      attention in every layer, separate conditional and unconditional UNet calls,
      self-recurrence on (same maths as (c))

Models (``--model``):
  demo       the tiny built-in demo model (64 px)
  sd21-arch  SD 2.1's UNet, OpenCLIP ViT-H text encoder (as CLIPTextModel) and VAE built
             from their published configs with random weights (no download)

Time: wall-clock of one full pipeline call (prompt encoding, denoising, VAE decode), best
of ``--repeats`` rounds that run the configs in turn (a b c d a b c d ...), after one warm-up
call of (a) at the same settings.
On a GPU (``--device cuda``) every timing ends with ``torch.cuda.synchronize()``, the UNet
hooks synchronise too, each config gets one untimed warm-up call, and peak memory is
``torch.cuda.max_memory_allocated()`` above the allocation at the config's start.
On the CPU, peak memory is the Linux peak resident set size. Before each config the process's peak RSS is
reset (``echo 5 > /proc/self/clear_refs``) and the current RSS read, after ``gc.collect()`` and
glibc ``malloc_trim(0)`` (so memory freed by the previous config is not silently reused); the config's peak is
``VmHWM`` after the run minus that RSS (the models themselves are loaded before and
excluded). Where clear_refs is unavailable, tracemalloc-free RSS sampling is used instead
(a 5 ms sampler thread).

Consistency: (c) and (d) compute the same maths in two execution schemes, so the bench
also prints the largest pixel difference between their images (a scheme that got the
maths wrong shows up here, not only in the tests).

Usage:  python benchmarks/sampler_bench.py --model demo
        python benchmarks/sampler_bench.py --model sd21-arch --size 384 --steps 2
        python benchmarks/sampler_bench.py --model sd21-arch --size 768 --steps 4 --device cuda --dtype fp16
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

PROMPT = "a dog and a mug on the beach"
BOXES = {"dog": (0.05, 0.3, 0.5, 0.95), "mug": (0.55, 0.5, 0.95, 0.95)}


# ----------------------------------------------------------------------------- memory


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(field)


def _malloc_trim() -> None:
    """Hand freed heap pages back to the OS, so one config's leftovers do not hide the next one's peak."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakCUDA:
    """Peak CUDA allocation above the allocation at entry, in MiB."""

    method = "torch.cuda.max_memory_allocated"

    def __enter__(self) -> PeakCUDA:
        import torch

        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()
        return self

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.cuda.synchronize()
        self.peak_mib = max(torch.cuda.max_memory_allocated() - self.base, 0) / 2**20


class PeakRSS:
    """Peak RSS above the level at entry, in MiB (see the module docstring)."""

    def __enter__(self) -> PeakRSS:
        gc.collect()
        _malloc_trim()
        self.sampler = None
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self.method = "VmHWM after clear_refs"
        except OSError:
            self.method = "sampled VmRSS"
            self.samples = [0]
            self.stop = threading.Event()

            def sample() -> None:
                while not self.stop.is_set():
                    self.samples.append(_status_kb("VmRSS"))
                    time.sleep(0.005)

            self.sampler = threading.Thread(target=sample, daemon=True)
            self.sampler.start()
        self.base = _status_kb("VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.sampler is not None:
            self.stop.set()
            self.sampler.join()
            peak = max(self.samples)
        else:
            peak = _status_kb("VmHWM")
        self.peak_mib = max(peak - self.base, 0) / 1024


# ----------------------------------------------------------------------------- models


def sd21_components(seed: int = 0) -> dict:
    """SD 2.1 (768-v) architecture with random weights; tokenizer = the demo model's BPE files."""
    import torch
    from diffusers import AutoencoderKL, LMSDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from cones2.demo_model import tokenizer_files

    with tempfile.TemporaryDirectory() as tmp:
        import shutil

        for name, src in tokenizer_files().items():
            shutil.copyfile(src, Path(tmp) / name)
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77, pad_token="!")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=96,
        in_channels=4,
        out_channels=4,
        center_input_sample=False,
        flip_sin_to_cos=True,
        freq_shift=0,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        downsample_padding=1,
        mid_block_scale_factor=1,
        act_fn="silu",
        norm_num_groups=32,
        norm_eps=1e-5,
        cross_attention_dim=1024,
        attention_head_dim=(5, 10, 20, 20),
        use_linear_projection=True,
        upcast_attention=True,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=23,
            num_attention_heads=16,
            max_position_embeddings=77,
            projection_dim=512,
            hidden_act="gelu",
            layer_norm_eps=1e-5,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        act_fn="silu",
        latent_channels=4,
        norm_num_groups=32,
        sample_size=768,
        scaling_factor=0.18215,
    )
    scheduler = LMSDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, prediction_type="v_prediction"
    )
    for m in (unet, text_encoder, vae):
        m.eval()
    return {
        "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "unet": unet, "scheduler": scheduler,
        "safety_checker": None, "feature_extractor": None, "requires_safety_checker": False,
    }


def demo_components() -> dict:
    from diffusers import LMSDiscreteScheduler, StableDiffusionPipeline

    from cones2.demo_model import build_demo_model

    folder = Path(tempfile.mkdtemp(prefix="cones2-bench-")) / "demo"
    build_demo_model(folder)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = LMSDiscreteScheduler.from_config(pipe.scheduler.config)
    return dict(pipe.components)


# ----------------------------------------------------------------------------- run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["demo", "sd21-arch"], default="demo")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (demo: 64, sd21-arch: 384)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (demo: 6, sd21-arch: 2)")
    parser.add_argument("--repeats", type=int, default=None, help="runs per config, best kept (demo: 3, sd21-arch: 1)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = parser.parse_args(argv)

    import torch

    from cones2.sampler import Cones2Pipeline, Layout

    if args.threads:
        torch.set_num_threads(args.threads)
    demo = args.model == "demo"
    size = args.size or (64 if demo else 384)
    steps = args.steps or (6 if demo else 2)
    repeats = args.repeats or (3 if demo else 1)

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    components = demo_components() if demo else sd21_components()
    build_s = time.perf_counter() - t0
    from diffusers import StableDiffusionPipeline

    stock = StableDiffusionPipeline(**components)
    stock.to(args.device, dtype)  # the components are shared: this moves Cones2's too
    cones = Cones2Pipeline(**components)
    for p in (stock, cones):
        p.set_progress_bar_config(disable=True)
    hidden = components["text_encoder"].config.hidden_size
    gen = torch.Generator().manual_seed(1)
    subjects = {w: torch.randn(1, hidden, generator=gen) * 0.1 for w in BOXES}
    layout = Layout.from_boxes(BOXES)
    common = dict(num_inference_steps=steps, guidance_scale=7.5, height=size, width=size, output_type="np")
    ours = dict(common, scheduler="default")  # the pipeline's LMS, as the stock run (not the preset's)

    configs = {
        "a": ("stock StableDiffusionPipeline", lambda: stock(PROMPT, generator=torch.Generator().manual_seed(0), **common)),
        "b": ("Cones2 guided, self-recurrence off", lambda: cones(PROMPT, subjects, layout, seed=0, self_recurrence=False, **ours)),
        "c": ("Cones2 guided, self-recurrence on", lambda: cones(PROMPT, subjects, layout, seed=0, self_recurrence=True, **ours)),
        "d": ("reference scheme (eager, split CFG, SR on)", lambda: cones(
            PROMPT, subjects, layout, seed=0, self_recurrence=True, separate_cfg=True, eager_attention=True, **ours)),
    }
    where = torch.cuda.get_device_name(args.device) if cuda else f"cpu, threads {torch.get_num_threads()}"
    print(f"model {args.model}  size {size}px  steps {steps}  repeats {repeats}  {args.dtype}  {where}  "
          f"build {build_s:.1f}s  torch {torch.__version__}", flush=True)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    Peak = PeakCUDA if cuda else PeakRSS
    # time inside UNet forward calls (the part attention changes), via hooks on the shared UNet
    unet_time = {"total": 0.0, "start": 0.0, "calls": 0}

    def before(*_: object) -> None:
        sync()
        unet_time["start"] = time.perf_counter()

    def after(*_: object) -> None:
        sync()
        unet_time["total"] += time.perf_counter() - unet_time["start"]
        unet_time["calls"] += 1

    components["unet"].register_forward_pre_hook(before)
    components["unet"].register_forward_hook(after)

    # untimed warm-up: (a) on the CPU; on a GPU every config (kernel selection, allocator growth)
    for _, fn in configs.values() if cuda else [configs["a"]]:
        fn()
    # rounds interleave the configs (a b c d a b c d ...), so a drift in clocks or load
    # hits every config alike instead of the one that happened to run then
    runs: dict[str, dict[str, list[float]]] = {k: {"time": [], "unet": [], "peak": []} for k in configs}
    images: dict[str, object] = {}
    calls: dict[str, int] = {}
    method = ""
    for _ in range(repeats):
        for key, (_, fn) in configs.items():
            unet_time.update(total=0.0, calls=0)
            with Peak() as mem:
                sync()
                t = time.perf_counter()
                images[key] = fn().images
                sync()
                runs[key]["time"].append(time.perf_counter() - t)
            runs[key]["peak"].append(mem.peak_mib)
            runs[key]["unet"].append(unet_time["total"])
            calls[key] = unet_time["calls"]
            method = mem.method
    results: dict[str, dict[str, float]] = {}
    for key, (label, _) in configs.items():
        r = runs[key]
        results[key] = {"time_s": min(r["time"]), "unet_s": min(r["unet"]), "unet_calls": calls[key], "peak_mib": max(r["peak"])}
        print(f"  ({key}) {label:<44} {min(r['time']):8.2f} s  (UNet {min(r['unet']):7.2f} s in {calls[key]} calls)  "
              f"{max(r['peak']):9.1f} MiB", flush=True)

    print()
    print("| config | what | time (s) | UNet time (s) | UNet calls | peak RSS above start (MiB) |")
    print("|---|---|---:|---:|---:|---:|")
    for key, (label, _) in configs.items():
        r = results[key]
        print(f"| ({key}) | {label} | {r['time_s']:.2f} | {r['unet_s']:.2f} | {r['unet_calls']} | {r['peak_mib']:.1f} |")
    ratios = {
        "b/a time": results["b"]["time_s"] / results["a"]["time_s"],
        "b/a memory": results["b"]["peak_mib"] / max(results["a"]["peak_mib"], 1e-9),
        "d/c time": results["d"]["time_s"] / results["c"]["time_s"],
        "d/c UNet time": results["d"]["unet_s"] / results["c"]["unet_s"],
    }
    print()
    print(f"(b)/(a) time        {ratios['b/a time']:.3f}   (target <= 1.10)")
    print(f"(b)/(a) memory      {ratios['b/a memory']:.3f}   (target <= 1.10)")
    print(f"(d)/(c) time        {ratios['d/c time']:.3f}   (target >= 2.0 at 384 px and above)")
    print(f"(d)/(c) UNet time   {ratios['d/c UNet time']:.3f}   (denoising only: no prompt encoding, no VAE decode)")
    import numpy as np

    diff_cd = float(np.abs(np.asarray(images["c"], dtype=np.float64) - np.asarray(images["d"], dtype=np.float64)).max())
    print(f"max |image(c) - image(d)|  {diff_cd:.2e}   (same maths, two execution schemes; pixels in [0, 1])")
    print(f"memory method: {method}")
    if args.json:
        print(json.dumps({"model": args.model, "size": size, "steps": steps, "device": where, "dtype": args.dtype,
                          "results": results, "ratios": ratios, "max_image_diff_c_d": diff_cd}, indent=2))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    sys.exit(main())
