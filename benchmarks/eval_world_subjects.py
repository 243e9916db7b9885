"""Harness parts (c)/(d) on a world model: learn the subject variants, then measure them.

    python benchmarks/eval_world_subjects.py --model WORLD_PIPELINE_DIR [--train-steps 150]
        [--scenes 8] [--steps 20] [--eta 0.08] [--json]

Each variant (cones2.world.scenes.VARIANTS) is learned from ``--images`` renders with
``cones2.train.train_subject`` on ``--model`` (an exported world pipeline folder, e.g. a
checkpoint's ``pipeline/``) and registered in $CONES2_HOME; pass ``--refs`` (JSON
``{variant: ref}``) to measure subjects learned before. Then (c) each variant alone and
(d) 2, 3 and 4 of them together are rendered through compositions, unguided and guided
(the scene's boxes at ``--eta``), and scored by cones2.world.subjects (fidelity, leakage,
baseline without the subject).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="world pipeline folder")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--refs", help="JSON {variant: registry ref}: skip training")
    parser.add_argument("--scenes", type=int, default=8, help="scenes per case")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps")
    parser.add_argument("--eta", type=float, default=0.08, help="layout guidance weight of the guided runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)

    import torch

    from cones2.world import subjects
    from cones2.world.scenes import VARIANTS

    torch.set_num_threads(args.threads)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    names = list(VARIANTS)
    t0, c0 = time.perf_counter(), time.process_time()
    if args.refs:
        refs = json.loads(args.refs)
    else:
        refs = subjects.train_variants(args.model, names, steps=args.train_steps, lr=args.lr, images=args.images,
                                       on_done=lambda n, r: say(f"trained {n}: {r.name}@{r.version}, loss {r.metadata['loss']}"))
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    cases = [[n] for n in names] + [names[:2], names[:3], names[:4]]
    t1, c1 = time.perf_counter(), time.process_time()
    results = subjects.measure(args.model, refs, cases, args.scenes,
                               settings=subjects.harness_settings(steps=args.steps, guidance_weight=args.eta))
    out = {
        "model": str(args.model), "refs": refs, "train_steps": args.train_steps, "lr": args.lr, "images": args.images,
        "scenes_per_case": args.scenes, "sampling_steps": args.steps, "eta": args.eta,
        "train_seconds": round(train_s, 1), "train_cpu_seconds": round(train_cpu, 1),
        "measure_seconds": round(time.perf_counter() - t1, 1), "measure_cpu_seconds": round(time.process_time() - c1, 1),
        "hardware": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {args.threads} thread(s)",
        "load_average": os.getloadavg(),
        "results": [r.summary() for r in results],
        "detector_ceiling": [{"subjects": c, "fidelity": f} for c, f in zip(cases, subjects.pattern_ceiling(cases, 50), strict=True)],
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{'subjects':60s} {'guided':6s} {'fidelity':>8s} {'leakage':>8s} {'baseline':>8s}")
        for r in results:
            for v in r.subjects:
                print(f"{'+'.join(r.subjects) + ' : ' + v:60s} {str(r.guided):6s} {r.fidelity[v]:8.2f} "
                      f"{r.leakage[v]:8.2f} {r.baseline[v]:8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
