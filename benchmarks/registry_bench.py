"""Registry benchmark: a catalogue of 100,000 versions of 10,000 subjects.

Fills a fresh SQLite catalogue (schema made by the real migrations, rows bulk-inserted
with sqlite3 for speed), then times the Python API in-process (resolve, list, search,
show; p50 and p99) and the cold start of ``cones2 list`` as a whole process (median of
several runs). Targets: resolve p99 <= 5 ms, search p99 <= 50 ms, list cold start <= 0.3 s.

    python benchmarks/registry_bench.py [--subjects 10000] [--versions 10] [--home DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

WORDS = ["dog", "cat", "teapot", "backpack", "sloth", "robot", "vase", "duck", "car", "chair"]


def fill(home: Path, subjects: int, per_subject: int) -> None:
    from cones2.registry import open_catalogue
    from cones2.registry.database import DB_FILE, sqlite_timestamp

    open_catalogue(home=home, url=f"sqlite:///{home / DB_FILE}").close()  # schema via Alembic
    rng = random.Random(0)
    now = sqlite_timestamp(datetime.now(timezone.utc))
    fp = "ee" * 32
    conn = sqlite3.connect(home / DB_FILE, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO base_models (fingerprint, hidden_size, first_seen) VALUES (?, 1024, ?)", (fp, now))
    conn.execute("INSERT INTO base_model_ids (fingerprint, model_id, first_seen) VALUES (?, 'stabilityai/stable-diffusion-2-1', ?)", (fp, now))
    subject_rows, version_rows, tag_rows = [], [], []
    vid = 0
    for sid in range(1, subjects + 1):
        word = WORDS[sid % len(WORDS)]
        name = f"team{sid % 50}/{word}-{sid:05d}"
        desc = f"{word} number {sid} from the benchmark"
        metas = []
        for n in range(1, per_subject + 1):
            vid += 1
            meta = json.dumps({"steps": 1000 + n, "trainer": f"user{rng.randrange(500)}", "lr": 5e-5}, sort_keys=True, separators=(",", ":"))
            metas.append(meta)
            sha = f"{rng.getrandbits(256):064x}"
            version_rows.append((vid, sid, n, sha, 4440, "float32", "[1,1024]", word, "[1929]", fp, "stabilityai/stable-diffusion-2-1", meta, "local", now))
        if sid % 3 == 0:
            tag_rows.append((sid, "stable", vid - 1, now))
        subject_rows.append((sid, name, word, desc, now, per_subject, "\n".join([name, word, desc, *metas]).lower()))
    conn.executemany("INSERT INTO subjects (id, name, word, description, created_at, last_version, search_text) VALUES (?,?,?,?,?,?,?)", subject_rows)
    conn.executemany(
        "INSERT INTO versions (id, subject_id, version, sha256, size, dtype, shape, word, token_ids, base_fingerprint, base_model, metadata_json, provenance_kind, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        version_rows,
    )
    conn.executemany("INSERT INTO tags (subject_id, name, version_id, updated_at) VALUES (?,?,?,?)", tag_rows)
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def timed(fn, args_list) -> list[float]:
    out = []
    for args in args_list:
        t = time.perf_counter()
        fn(*args)
        out.append((time.perf_counter() - t) * 1000)
    return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=10_000)
    parser.add_argument("--versions", type=int, default=10, help="versions per subject")
    parser.add_argument("--home", default=None)
    parser.add_argument("--cold-runs", type=int, default=7)
    args = parser.parse_args()
    home = Path(args.home or tempfile.mkdtemp(prefix="cones2-bench-"))
    os.environ["CONES2_HOME"] = str(home)
    os.environ.pop("CONES2_DATABASE_URL", None)
    t = time.perf_counter()
    fill(home, args.subjects, args.versions)
    print(f"filled {args.subjects:,} subjects x {args.versions} = {args.subjects * args.versions:,} versions in {time.perf_counter() - t:.1f} s ({home})")

    from cones2.registry import open_catalogue

    rng = random.Random(1)
    cat = open_catalogue(home=home)
    names = [s.name for s in cat.list_subjects()]
    sha_rows = dict(cat.db.query("SELECT s.name, v.sha256 FROM versions v JOIN subjects s ON s.id = v.subject_id WHERE v.version = 5"))
    tagged = {r[0] for r in cat.db.query("SELECT s.name FROM tags t JOIN subjects s ON s.id = t.subject_id")}
    refs = []
    for i in range(4000):
        name = rng.choice(names)
        kind = i % 4
        refs.append(((name, f"{name}@{rng.randint(1, args.versions)}", f"{name}:stable" if name in tagged else name, f"{name}@sha256:{sha_rows[name][:16]}")[kind],))
    results = {
        "resolve": timed(cat.resolve, refs),
        "show": timed(cat.show, [(rng.choice(names),) for _ in range(1000)]),
        "search": timed(cat.search, [(q,) for q in (rng.choice(["corgi", "user42", "teapot-0", "number 123", "steps\":1003", "zzz", "team7/"]) for _ in range(300))]),
        "list (10k subjects)": timed(cat.list_subjects, [() for _ in range(15)]),
        "list versions of one": timed(cat.list_versions, [(rng.choice(names),) for _ in range(500)]),
    }
    cat.close()
    exe = str(Path(sys.executable).parent / "cones2")
    # An installed copy has its bytecode compiled (pip does it at install time); an editable
    # checkout under PYTHONDONTWRITEBYTECODE=1 never gets any and would compile every module
    # on every start. Compile the package once so the cold start measures what users run.
    import compileall

    import cones2

    compileall.compile_dir(str(Path(cones2.__file__).parent), quiet=1)
    cold = []
    for _ in range(args.cold_runs):
        t = time.perf_counter()
        subprocess.run([exe, "list"], stdout=subprocess.DEVNULL, check=True)
        cold.append(time.perf_counter() - t)
    cold_empty = []
    empty = Path(tempfile.mkdtemp(prefix="cones2-bench-empty-"))
    subprocess.run([exe, "--home", str(empty), "list"], stdout=subprocess.DEVNULL, check=True)
    for _ in range(args.cold_runs):
        t = time.perf_counter()
        subprocess.run([exe, "--home", str(empty), "list"], stdout=subprocess.DEVNULL, check=True)
        cold_empty.append(time.perf_counter() - t)

    targets = {"resolve": 5.0, "search": 50.0}
    print(f"\n{'operation':<24}{'n':>6}{'p50 ms':>10}{'p99 ms':>10}  target")
    for op, values in results.items():
        target = f"p99 <= {targets[op]:g} ms: {'OK' if pct(values, 0.99) <= targets[op] else 'MISSED'}" if op in targets else ""
        print(f"{op:<24}{len(values):>6}{pct(values, 0.5):>10.2f}{pct(values, 0.99):>10.2f}  {target}")
    med = statistics.median(cold)
    print(f"{'cones2 list cold start':<24}{len(cold):>6}{med * 1000:>10.0f}{max(cold) * 1000:>10.0f}  median <= 300 ms: {'OK' if med <= 0.3 else 'MISSED'} (10k lines printed)")
    print(f"{'  same, empty catalogue':<24}{len(cold_empty):>6}{statistics.median(cold_empty) * 1000:>10.0f}{max(cold_empty) * 1000:>10.0f}  (p99 column = max)")


if __name__ == "__main__":
    main()
