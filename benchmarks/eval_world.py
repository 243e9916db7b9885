"""Evaluation harness of the measurable world (issue 12): what the world model draws, and where.

Over a fixed prompt set at fixed seeds, with the classical detector of cones2.world.detect:

  (a) caption accuracy of the base model (exactly the asked objects, right colour and shape),
      per object count;
  (b) layout accuracy: mean IoU of each object's detected box with its asked box and hit rate
      (IoU >= 0.5), without guidance and with it at the reference's settings (guidance on all
      steps, self-recurrence on), the guidance weight swept over --weights (default 0.04 0.08 0.16);
  (c)/(d) subject fidelity and leakage, alone and in compositions of 2-4 subjects, need subjects
      learned with ``cones2 train``: benchmarks/eval_world_subjects.py learns and measures them.
  (0) the detector's ceiling: caption accuracy on the ground-truth renders.

Usage:
  python benchmarks/eval_world.py --model DIR                       # a world model folder
  python benchmarks/eval_world.py --run /work/world-runs/phrase-b32 # its newest checkpoint
  python benchmarks/eval_world.py --model DIR --prompts 8 --steps 4 --grid grid.png --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def detector_ceiling(n: int) -> dict[str, Any]:
    from cones2.world.detect import detect, match_caption
    from cones2.world.evaluate import fixed_scenes

    per: dict[int, list[bool]] = {}
    for scene in fixed_scenes(n):
        m = match_caption(detect(scene.render()), [(o.colour, o.shape) for o in scene.objects])
        per.setdefault(len(scene.objects), []).append(bool(m["correct"]))
    every = [v for vals in per.values() for v in vals]
    return {"n": n, "accuracy": float(np.mean(every)), "by_count": {k: float(np.mean(v)) for k, v in sorted(per.items())}}


def newest_pipeline(run: Path) -> Path:
    from cones2.world.train import checkpoints

    found = checkpoints(run)
    if not found:
        raise SystemExit(f"error: {run} holds no checkpoint")
    return found[-1] / "pipeline"


def write_grid(path: Path, scenes: list, guided: list[np.ndarray], unguided: list[np.ndarray], scale: int = 4) -> None:
    """One row per scene: its prompt, its layout (each object's box in its colour), unguided, guided."""
    import textwrap

    from PIL import Image, ImageDraw

    from cones2.world.scenes import BACKGROUND, COLOURS

    cell, text_w, head = 32 * scale, 260, 18
    grid = Image.new("RGB", (text_w + 3 * (cell + 4), head + len(scenes) * (cell + 4)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, label in enumerate(("layout", "unguided", "guided (eta 0.08)")):
        draw.text((text_w + i * (cell + 4) + 2, 3), label, fill=(0, 0, 0))
    draw.text((4, 3), "prompt", fill=(0, 0, 0))
    for row, (scene, u, g) in enumerate(zip(scenes, unguided, guided, strict=False)):
        y = head + row * (cell + 4)
        draw.multiline_text((4, y + 4), "\n".join(textwrap.wrap(scene.caption, 40)), fill=(0, 0, 0))
        layout = Image.new("RGB", (cell, cell), BACKGROUND)
        boxes = ImageDraw.Draw(layout)
        for obj, box in zip(scene.objects, scene.boxes(), strict=True):
            boxes.rectangle([v * scale for v in box], outline=COLOURS[obj.colour], width=3)
        grid.paste(layout, (text_w, y))
        for k, img in enumerate((u, g), start=1):
            grid.paste(Image.fromarray(img).resize((cell, cell), Image.NEAREST), (text_w + k * (cell + 4), y))
    grid.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="world model folder")
    src.add_argument("--run", type=Path, help="training run folder: use its newest checkpoint")
    parser.add_argument("--prompts", type=int, default=64, help="prompts for (a) (default 64)")
    parser.add_argument("--layout-prompts", type=int, default=32, help="scenes for (b) (default 32)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument("--weights", type=float, nargs="*", default=[0.04, 0.08, 0.16])
    parser.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    parser.add_argument("--caption-scales", type=float, nargs="*", default=[],
                        help="also measure (a) at these classifier-free guidance scales")
    parser.add_argument("--scheduler", default="default",
                        help="sampler scheduler: default (the model's own DDIM, v-prediction; default) or reference (LMS order 1)")
    parser.add_argument("--ceiling", type=int, default=200, help="ground-truth scenes for the detector ceiling (default 200)")
    parser.add_argument("--grid", type=Path, help="write a sample grid PNG (layout, unguided, guided)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)

    import torch

    from cones2.world import evaluate as ev
    from cones2.world.model import load_world_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.model if args.model else newest_pipeline(args.run)
    pipe = load_world_pipeline(folder)
    started = time.perf_counter()
    results: dict[str, Any] = {"model": str(folder), "steps": args.steps, "scheduler": args.scheduler,
                               "guidance_scale": args.guidance_scale}
    sample = {"steps": args.steps, "guidance_scale": args.guidance_scale, "scheduler": args.scheduler}
    marker = folder / "cones2_world.json"
    if marker.is_file():
        results["model_info"] = json.loads(marker.read_text())
    results["detector_ceiling"] = detector_ceiling(args.ceiling)
    results["caption"] = ev.caption_accuracy(pipe, args.prompts, **sample).summary()
    results["caption_by_scale"] = {
        scale: ev.caption_accuracy(pipe, args.prompts, **{**sample, "guidance_scale": scale}).summary()
        for scale in args.caption_scales
    }
    scenes = ev.fixed_scenes(args.layout_prompts, seed=1)
    unguided = ev.layout_accuracy(pipe, scenes, guidance_weight=None, keep_images=True, **sample)
    layout = [unguided.summary()]
    guided_imgs = None
    for w in args.weights:
        r = ev.layout_accuracy(pipe, scenes, guidance_weight=w, keep_images=True, **sample)
        layout.append(r.summary())
        if guided_imgs is None or w == 0.08:
            guided_imgs = r.images
    results["layout"] = layout
    if args.grid and guided_imgs is not None:
        write_grid(args.grid, scenes[:8], guided_imgs[:8], unguided.images[:8])
    results["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"model {folder}  ({results.get('model_info', {})})  steps {args.steps}, scheduler {args.scheduler}, "
          f"guidance scale {args.guidance_scale}  {results['seconds']} s")
    c, ceiling = results["caption"], results["detector_ceiling"]
    print("\n(a) caption accuracy        all    " + "  ".join(f"{k} obj" for k in c["by_count"]))
    print(f"  detector on ground truth  {ceiling['accuracy']:.2f}   " + "  ".join(f"{v:.2f} " for v in ceiling["by_count"].values()))
    print(f"  model ({c['n']} prompts)      {c['accuracy']:.2f}   " + "  ".join(f"{v:.2f} " for v in c["by_count"].values())
          + f"   colours {c['colours']:.2f}, exact count {c['exact_count']:.2f}")
    for scale, r in results["caption_by_scale"].items():
        print(f"  model, guidance scale {scale:<4} {r['accuracy']:.2f}   " + "  ".join(f"{v:.2f} " for v in r["by_count"].values())
              + f"   colours {r['colours']:.2f}, exact count {r['exact_count']:.2f}")
    print("\n(b) layout                  objects  mean IoU  hit rate  " + "  ".join(f"hit {k} obj" for k in layout[0]["hit_by_count"]))
    for r in layout:
        name = "unguided" if r["guidance_weight"] is None else f"guided, weight {r['guidance_weight']}"
        print(f"  {name:<25} {r['objects']:>7}  {r['mean_iou']:8.2f}  {r['hit_rate']:8.2f}  "
              + "  ".join(f"{v:9.2f}" for v in r["hit_by_count"].values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
