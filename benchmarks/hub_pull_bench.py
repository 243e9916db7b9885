"""Hub pull benchmark: mirror a library of N subjects from the local Hub-compatible server.

Starts tests/hub_server.py on 127.0.0.1, pushes N one-version subjects (demo model,
hidden size 32) from one CONES2_HOME with ``cones2.registry.hub.push``, then times
``pull_all`` (the code behind ``cones2 pull --all NAMESPACE``) into:

1. a fresh home with an empty Hub cache (everything over HTTP);
2. the same home again (nothing new: bytes transferred should be 0);
3. a fresh home sharing the warm Hub cache (no residual bytes either);
4. ``pull`` of one pinned subject that is already present (bytes should be 0).

Prints one JSON object (seconds, requests, file body bytes served by GET /resolve).

    python benchmarks/hub_pull_bench.py [--subjects 100] [--workers 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=100)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cones2-hub-bench-"))
    os.environ.update(
        HF_TOKEN="dummy",
        HF_HUB_CACHE=str(tmp / "hf-cache"),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        TRANSFORMERS_VERBOSITY="error",
        CONES2_HOME=str(tmp / "home-a"),
    )
    os.environ.pop("HF_HUB_OFFLINE", None)
    sys.path.insert(0, str(ROOT / "tests"))
    import logging

    import numpy as np
    from hub_server import start_hub_server

    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    from cones2.base_model import model_info
    from cones2.demo_model import build_demo_model
    from cones2.registry import open_catalogue
    from cones2.registry.hub import add_remote, pull, pull_all, push
    from cones2.residual_file import make_residual

    model = build_demo_model(tmp / "demo")
    os.environ["CONES2_BASE_MODEL"] = str(model)
    fp = model_info(str(model)).fingerprint
    server = start_hub_server()
    ns = "bench-library"
    try:
        add_remote("team", ns, server.endpoint)
        rng = np.random.default_rng(0)
        names = [f"subject-{i:03d}" for i in range(args.subjects)]
        with open_catalogue() as cat:
            for name in names:
                cat.add(make_residual(rng.standard_normal((1, 32)).astype("float32"), "dog", [643], fp), name)
        t0 = time.perf_counter()
        for name in names:
            push(name)
        push_s = time.perf_counter() - t0
        residual_bytes = sum(len(server.files(f"{ns}/{n}", "v1")["residual.safetensors"]) for n in names)

        def timed(label: str, home: Path, cache: Path, fn) -> dict[str, object]:
            os.environ["CONES2_HOME"], os.environ["HF_HUB_CACHE"] = str(home), str(cache)
            if not (home / "remotes.json").exists():
                add_remote("team", ns, server.endpoint)
            server.reset_stats()
            t = time.perf_counter()
            results = fn()
            seconds = time.perf_counter() - t
            statuses: dict[str, int] = {}
            for r in results if isinstance(results, list) else [results]:
                statuses[r.status] = statuses.get(r.status, 0) + 1
            return {"case": label, "seconds": round(seconds, 3), "requests": len(server.requests),
                    "bytes_served": server.bytes_served, "statuses": statuses}

        every = lambda: pull_all(ns, workers=args.workers)  # noqa: E731
        rows = [
            timed("pull --all, fresh home, empty Hub cache", tmp / "home-b", tmp / "cache-b", every),
            timed("pull --all again (all present)", tmp / "home-b", tmp / "cache-b", every),
            timed("pull --all, fresh home, warm Hub cache", tmp / "home-c", tmp / "cache-b", every),
            timed("pull subject-000@1 again (present)", tmp / "home-b", tmp / "cache-b", lambda: pull("subject-000@1")),
        ]
        summary = {
            "subjects": args.subjects, "workers": args.workers, "push_all_seconds": round(push_s, 3),
            "residual_bytes_per_subject": residual_bytes // max(1, args.subjects), "runs": rows,
        }
        if args.json:
            print(json.dumps(summary, indent=2))
            return
        print(f"{args.subjects} subjects pushed in {push_s:.2f} s; {summary['residual_bytes_per_subject']} residual bytes each")
        print("| case | time (s) | requests | body bytes served | statuses |")
        print("|---|---:|---:|---:|---|")
        for row in rows:
            statuses = ", ".join(f"{k} {v}" for k, v in row["statuses"].items())
            print(f"| {row['case']} | {row['seconds']:.3f} | {row['requests']} | {row['bytes_served']:,} | {statuses} |")
        base = rows[0]["seconds"]
        print(f"repeat pull / fresh pull time   {rows[1]['seconds'] / base:.3f}   (bytes on repeat: {rows[1]['bytes_served']})")
        print(f"warm-cache pull / fresh pull     {rows[2]['seconds'] / base:.3f}   (bytes: {rows[2]['bytes_served']})")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
