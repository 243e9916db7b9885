"""Benchmark: one composition, N seeds, as N ``cones2 generate`` processes or one ``cones2 render``.

Both sides render the same images (same base-model folder, prompt, two subjects with box
layout, sampler settings, size, steps and seeds):

  separate  N processes ``cones2 generate ... --seed S``, one after another: each starts
            Python, imports torch/diffusers, loads the pipeline and renders one image
  render    one process ``cones2 render COMP.cones2.toml`` (writes the lock, loads the
            pipeline once, renders the N seeds in batches of ``--batch-size``)

Models (``--model``), saved once as a diffusers pipeline folder in a temporary folder so
both sides load it with ``from_pretrained`` (``--model FOLDER`` / ``base_model = FOLDER``):
  demo       the tiny built-in demo model (64 px)
  sd21-arch  SD 2.1's UNet, OpenCLIP ViT-H text encoder and VAE with random weights, built
             from their published configs (benchmarks/sampler_bench.py), no download

Also timed, to explain the ratio: ``load``, one process that starts, imports and loads the
pipeline (``cones2 base-model info`` plus ``Cones2Pipeline.from_pretrained``) and renders
nothing. The bench checks that every image of the render equals the separately generated
one (pixels), so both sides did the same work.

Every child process gets ``OMP_NUM_THREADS`` = ``--threads`` (default 1) and the same
environment; the bench runs the sides in turn (separate, render, load) ``--repeats`` times
and keeps each side's best time.

Usage:  python benchmarks/render_bench.py --model demo
        nice -n 10 python benchmarks/render_bench.py --model sd21-arch --size 384 --steps 2 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = "a dog and a mug on the beach"
BOXES = {"dog": (0.05, 0.3, 0.5, 0.95), "mug": (0.55, 0.5, 0.95, 0.95)}


def build_model(kind: str, folder: Path) -> Path:
    """A diffusers pipeline folder for ``kind`` (demo or sd21-arch)."""
    if kind == "demo":
        from cones2.demo_model import build_demo_model

        return build_demo_model(folder / "demo")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from diffusers import StableDiffusionPipeline
    from sampler_bench import sd21_components

    pipe = StableDiffusionPipeline(**sd21_components())
    path = folder / "sd21-arch"
    pipe.save_pretrained(path, safe_serialization=True)
    del pipe
    return path


def register_subjects(model: Path) -> None:
    """dog-max and mug-red (random residuals) for ``model`` in the bench's CONES2_HOME."""
    import torch

    from cones2.base_model import load_text_encoder, model_info
    from cones2.registry import open_catalogue
    from cones2.residual import word_token_ids
    from cones2.residual_file import make_residual

    info = model_info(str(model))
    tokenizer, encoder = load_text_encoder(info.path)
    hidden = encoder.config.hidden_size
    del encoder
    g = torch.Generator().manual_seed(0)
    with open_catalogue() as cat:
        for word, name in (("dog", "dog-max"), ("mug", "mug-red")):
            ids = word_token_ids(tokenizer, word)
            cat.add(make_residual(0.1 * torch.randn(len(ids), hidden, generator=g), word, ids, info.fingerprint), name, base=info)


def write_composition(folder: Path, model: Path, size: int, steps: int, seeds: list[int]) -> Path:
    from cones2.composition import Composition, LayoutSpec, SubjectSpec
    from cones2.sampler.presets import resolve_settings

    comp = Composition(
        prompt=PROMPT, base_model=str(model), name="bench", seeds=tuple(seeds), height=size, width=size,
        subjects=(SubjectSpec("dog", ref="dog-max"), SubjectSpec("mug", ref="mug-red")),
        layout=LayoutSpec(boxes=tuple(BOXES.items())), sampler=resolve_settings("cones2", steps=steps),
    )
    return comp.save(folder / "bench.cones2.toml")


def run(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} ... failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return elapsed


def cones2(*args: object) -> list[str]:
    return [sys.executable, "-m", "cones2", *(str(a) for a in args)]


LOAD_ONLY = (
    "import sys, time; t = time.perf_counter(); "
    "from cones2.base_model import model_info; from cones2.sampler import Cones2Pipeline; "
    "info = model_info(sys.argv[1]); Cones2Pipeline.from_pretrained(info.path)"
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["demo", "sd21-arch"], default="demo")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (demo: 64, sd21-arch: 384)")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=8, help="images (seeds 0..N-1)")
    parser.add_argument("--batch-size", type=int, default=None, help="render --batch-size (default: cones2's)")
    parser.add_argument("--repeats", type=int, default=None, help="rounds, best kept (demo: 3, sd21-arch: 1)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of every child process")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    size = args.size or (64 if args.model == "demo" else 384)
    repeats = args.repeats or (3 if args.model == "demo" else 1)
    seeds = list(range(args.seeds))

    tmp = Path(tempfile.mkdtemp(prefix="cones2-render-bench-"))
    try:
        env = {**os.environ, "CONES2_HOME": str(tmp / "home"), "OMP_NUM_THREADS": str(args.threads),
               "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
        env.pop("CONES2_BASE_MODEL", None)
        os.environ.update(CONES2_HOME=env["CONES2_HOME"])
        import torch

        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        model = build_model(args.model, tmp)
        register_subjects(model)
        comp = write_composition(tmp, model, size, args.steps, seeds)
        print(f"model {args.model} at {model} ({time.perf_counter() - t0:.0f} s to build and register), "
              f"{size} px, {args.steps} steps, {len(seeds)} seeds, OMP_NUM_THREADS={args.threads}", file=sys.stderr)
        # a first load outside the timings: the base-model fingerprint is cached, files are in the page cache
        run(cones2("base-model", "info", model), env)

        best = {"separate": float("inf"), "render": float("inf"), "load": float("inf")}
        for r in range(repeats):
            sep_dir, ren_dir = tmp / f"separate-{r}", tmp / f"render-{r}"
            total = 0.0
            for s in seeds:
                cmd = cones2("generate", PROMPT, "--model", model, "--subject", "dog=dog-max", "--subject", "mug=mug-red",
                             *[x for w, b in BOXES.items() for x in ("--box", f"{w}={','.join(map(str, b))}")],
                             "--preset", "cones2", "--steps", args.steps, "--height", size, "--width", size,
                             "--seed", s, "-o", sep_dir / f"bench-{s}.png")
                total += run(cmd, env)
            best["separate"] = min(best["separate"], total)
            lock = Path(str(comp) + ".lock")
            lock.unlink(missing_ok=True)  # every round writes the lock again
            extra = ["--batch-size", args.batch_size] if args.batch_size else []
            best["render"] = min(best["render"], run(cones2("render", comp, "-o", ren_dir, "--no-contact-sheet", *extra), env))
            best["load"] = min(best["load"], run([sys.executable, "-c", LOAD_ONLY, str(model)], env))
            check_same(sep_dir, ren_dir, seeds)
            print(f"round {r + 1}/{repeats}: separate {total:.2f} s, render {best['render']:.2f} s (best so far)", file=sys.stderr)

        ratio = best["render"] / best["separate"]
        n = len(seeds)
        per_image_separate = best["separate"] / n
        per_image_render = (best["render"] - best["load"]) / n
        figures = {
            "model": args.model, "size": size, "steps": args.steps, "seeds": n, "threads": args.threads,
            "separate_s": round(best["separate"], 3), "render_s": round(best["render"], 3), "load_s": round(best["load"], 3),
            "ratio": round(ratio, 3), "separate_per_image_s": round(per_image_separate, 3),
            "render_per_image_after_load_s": round(per_image_render, 3), "identical": True,
            "load_avg": os.getloadavg()[0],
        }
        if args.json:
            print(json.dumps(figures, indent=2))
        else:
            print(f"| model | size | steps | images | {n} x generate (s) | render (s) | render / separate | "
                  "one process: start + load (s) | per image, separate (s) | per image in render, after load (s) |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            print(f"| {args.model} | {size} px | {args.steps} | {n} | {best['separate']:.2f} | {best['render']:.2f} | "
                  f"**{ratio:.2f}x** | {best['load']:.2f} | {per_image_separate:.2f} | {per_image_render:.2f} |")
            print(f"images identical (pixels): yes; load average at the end: {os.getloadavg()[0]:.2f}")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def check_same(separate: Path, render: Path, seeds: list[int]) -> None:
    import numpy as np
    from PIL import Image

    for s in seeds:
        a = np.asarray(Image.open(separate / f"bench-{s}.png"))
        b = np.asarray(Image.open(render / f"bench-{s}.png"))
        if not np.array_equal(a, b):
            raise SystemExit(f"seed {s}: the render's image differs from the separate generate's")


if __name__ == "__main__":
    raise SystemExit(main())
