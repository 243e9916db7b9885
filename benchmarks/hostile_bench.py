"""Hostile-input benchmark (issue 14): every probe is a real ``cones2`` process, timed and measured.

Each probe runs one CLI command in a fresh home (or a prepared one) and counts as *held*
when it ends as it must: the expected exit code, at most one ``Error:`` line on stderr,
no traceback, no retry chatter, and whatever check the probe adds (blobs kept, nothing
stored). Time and peak memory are taken per process (``/usr/bin/time``); a probe over the
limits (default 5 s, 500 MB) is *broken* too.

    python benchmarks/hostile_bench.py [--limit-s 5] [--limit-mb 500] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

CLI = str(Path(sys.executable).parent / "cones2")


@dataclass
class Probe:
    name: str
    args: list[str]
    exit_code: int
    check: Callable[[Path, str, str], bool] = lambda home, out, err: True
    env: dict[str, str] = field(default_factory=dict)
    setup: Callable[[Path], None] = lambda home: None
    command: list[str] | None = None  # instead of ``cones2 *args`` (e.g. a shell running several at once)


def run_probe(probe: Probe, work: Path, base_env: dict[str, str]) -> dict:
    home = work / probe.name.replace(" ", "_").replace("/", "_")
    home.mkdir(parents=True)
    env = {**base_env, "CONES2_HOME": str(home), **probe.env}
    probe.setup(home)
    start = time.monotonic()
    # /usr/bin/time measures the probe from a small parent: a child forked from this process
    # (numpy, torch) would count this process's pages in its own peak.
    rss_file = home / "peak-rss-kb"
    proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", str(rss_file), *(probe.command or [CLI, *probe.args])], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - start
    group = took
    walls = [float(p.read_text().split()[-1]) for p in home.glob("wall-*")]  # a probe of several processes at once
    if walls:
        took = max(walls)  # the limit is per process; the group's wall time is reported beside it
    try:
        peak_mb = round(int(rss_file.read_text().split()[-1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        peak_mb = float("nan")
    lines = [line for line in err.splitlines() if line.strip()]
    one_line = not lines or (len(lines) == 1 and lines[0].startswith("Error: "))
    ok = (
        proc.returncode == probe.exit_code and one_line and "Traceback" not in err and "Retrying" not in err
        and probe.check(home, out, err)
    )
    return {"probe": probe.name, "cause": cause_of(probe.name), "held": ok, "exit": proc.returncode, "s": round(took, 2), "group_s": round(group, 2), "mb": peak_mb, "stderr": err.strip()[:160]}


# The 11 causes, each with its probes (by the probe's name).
CAUSES = {
    1: ("damaged catalogue loses data", ("empty catalogue",)),
    2: ("hang on a silent server", ("silent server",)),
    3: ("Hub errors not one line", ("HTTP ", "reset:", "server down")),
    4: ("deeply nested JSON", ("deep json",)),
    5: ("huge or broken residual read whole", ("huge declared", "2 GB zero", "truncated", "random bytes", "NaN")),
    6: ("token ids not spelling the word", ("token ids",)),
    7: ("legacy .pt Parameter / sparse / payload", (".pt ",)),
    8: ("version overflow", ("version ",)),
    9: ("40000x40000 layout images", ("mask 40000", "layout image 40000")),
    10: ("one colour for two words", ("one colour",)),
    11: ("concurrency, --meta, unpushable names, search, refs", ("concurrent", "meta given", "name ", "search ", "ref ")),
}


def cause_of(name: str) -> int:
    return next(n for n, (_, prefixes) in CAUSES.items() if name.startswith(prefixes))


# ---------------------------------------------------------------- inputs


def residual_bytes(fp: str, meta: dict | None = None, ids: tuple[int, ...] = (643,)) -> bytes:
    from cones2.residual_file import make_residual

    return make_residual(np.full((len(ids), 32), 0.1, "float32"), "dog", list(ids), fp, meta).to_bytes()


def with_header(good: bytes, edit: Callable[[dict], None]) -> bytes:
    (n,) = struct.unpack("<Q", good[:8])
    header = json.loads(good[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + good[8 + n :]


def png_claiming(path: Path, width: int, height: int) -> Path:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


def blob_count(home: Path) -> int:
    objects = home / "blobs" / "sha256"
    return len(list(objects.iterdir())) if objects.is_dir() else 0


def add_first(files: Path, fp: str) -> Callable[[Path], None]:
    def setup(home: Path) -> None:
        path = files / "seed.safetensors"
        if not path.exists():
            path.write_bytes(residual_bytes(fp))
        subprocess.run([CLI, "add", str(path), "--name", "dog"], env={**os.environ, "CONES2_HOME": str(home)}, check=True,
                       capture_output=True)

    return setup


def empty_catalogue(files: Path, fp: str) -> Callable[[Path], None]:
    seed = add_first(files, fp)

    def setup(home: Path) -> None:
        seed(home)
        for extra in ("-wal", "-shm"):
            (home / f"catalogue.db{extra}").unlink(missing_ok=True)
        (home / "catalogue.db").write_bytes(b"")

    return setup


# ---------------------------------------------------------------- servers


class _Silent:
    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return


def _answering(status: int, body: bytes = b"") -> int:
    """A server answering every request with ``status`` (0: resets the connection) and ``body``."""

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            if status == 0:
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        do_GET = do_HEAD = do_POST = _any

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd.server_address[1]


def remote_setup(port: int) -> Callable[[Path], None]:
    def setup(home: Path) -> None:
        subprocess.run([CLI, "remote", "add", "r", "r-ns", "--endpoint", f"http://127.0.0.1:{port}"],
                       env={**os.environ, "CONES2_HOME": str(home)}, check=True, capture_output=True)

    return setup


# ---------------------------------------------------------------- the set


def probes(files: Path, fp: str) -> list[Probe]:
    import torch

    good = residual_bytes(fp)
    deep = "[" * 100000 + "]" * 100000

    def put(name: str, data: bytes) -> str:
        (files / name).write_bytes(data)
        return str(files / name)

    huge = put("huge.safetensors", with_header(good, lambda h: h["residual"].update(shape=[1, 536870912], data_offsets=[0, 1 << 31])))
    os.truncate(huge, 2 << 30)
    zeros = put("zeros.safetensors", b"")
    os.truncate(zeros, 2 << 30)
    torch.save(torch.nn.Parameter(torch.randn(32)), files / "param.pt")
    torch.save(torch.randn(1, 32).to_sparse(), files / "sparse.pt")
    torch.save({"not": "a tensor"}, files / "dict.pt")
    (files / "pickle.pt").write_bytes(b"\x80\x04cos\nsystem\n(S'echo pwned'\ntR.")
    big_png = str(png_claiming(files / "big.png", 40000, 40000))
    from PIL import Image

    Image.new("RGB", (16, 16), (255, 0, 0)).save(files / "red.png")
    red = str(files / "red.png")
    kept = lambda home, out, err: blob_count(home) == 1  # noqa: E731
    nothing = lambda home, out, err: blob_count(home) <= 1  # noqa: E731
    silent = _Silent()
    hub_env = {"CONES2_HUB_READ_TIMEOUT": "1", "CONES2_HUB_CONNECT_TIMEOUT": "1", "CONES2_HUB_TRIES": "2",
               "HF_TOKEN": "dummy", "HF_HUB_DISABLE_TELEMETRY": "1"}
    down = socket.socket()
    down.bind(("127.0.0.1", 0))
    down_port = down.getsockname()[1]
    down.close()
    out: list[Probe] = [
        Probe("empty catalogue: verify", ["verify"], 7, kept, setup=empty_catalogue(files, fp)),
        Probe("empty catalogue: gc", ["gc"], 7, kept, setup=empty_catalogue(files, fp)),
        Probe("empty catalogue: doctor", ["doctor"], 0, lambda h, o, e: "Recovered" in o or "Restored" in o, setup=empty_catalogue(files, fp)),
        Probe("deep json header", ["add", put("deep1.safetensors", struct.pack("<Q", len(deep)) + deep.encode()), "--name", "x"], 3, nothing),
        Probe("deep json meta", ["add", put("deep2.safetensors", with_header(good, lambda h: h["__metadata__"].update(meta=deep))), "--name", "x"], 3, nothing),
        Probe("deep json token_ids", ["add", put("deep3.safetensors", with_header(good, lambda h: h["__metadata__"].update(token_ids=deep))), "--name", "x"], 3, nothing),
        Probe("huge declared tensor (2 GB sparse)", ["add", huge, "--name", "x"], 3, nothing),
        Probe("2 GB zero file", ["add", zeros, "--name", "x"], 3, nothing),
        Probe("truncated residual", ["add", put("trunc.safetensors", good[: len(good) // 2]), "--name", "x"], 3, nothing),
        Probe("random bytes", ["add", put("random.safetensors", os.urandom(4096)), "--name", "x"], 3, nothing),
        Probe("NaN residual", ["add", put("nan.safetensors", good[:-4] + struct.pack("<f", float("nan"))), "--name", "x"], 3, nothing),
        Probe(".pt Parameter", ["add", str(files / "param.pt"), "--name", "x", "--word", "dog"], 0),
        Probe(".pt sparse", ["add", str(files / "sparse.pt"), "--name", "x", "--word", "dog"], 3, nothing),
        Probe(".pt dict", ["add", str(files / "dict.pt"), "--name", "x", "--word", "dog"], 3, nothing),
        Probe(".pt pickle payload", ["add", str(files / "pickle.pt"), "--name", "x", "--word", "dog"], 3, nothing),
        Probe("version overflow", ["add", put("v2.safetensors", residual_bytes(fp, {"v": 2})), "--name", "dog"], 2, kept,
              setup=lambda home: subprocess.run([CLI, "add", put("v1.safetensors", good), "--name", "dog", "--version", "999999999"],
                                                env={**os.environ, "CONES2_HOME": str(home)}, check=True, capture_output=True)),
        Probe("token ids not spelling the word", ["add", put("ids.safetensors", residual_bytes(fp, ids=(644,))), "--name", "x"], 3,
              nothing),
        Probe("meta given with stored content", ["add", put("seed2.safetensors", good), "--name", "dog", "--meta", "owner=ann"], 0,
              lambda home, out, err: "--meta ignored" in out, setup=lambda home: subprocess.run(
                  [CLI, "add", str(files / "seed2.safetensors"), "--name", "dog"], env={**os.environ, "CONES2_HOME": str(home)},
                  check=True, capture_output=True)),
        Probe("concurrent adds of the same content (8 processes)", [], 0,
              lambda home, out, err: out.count('"created": true') == 1 and out.count('"created": false') == 7 and blob_count(home) == 1,
              command=["sh", "-c", f"cd \"$CONES2_HOME\"; for i in 1 2 3 4 5 6 7 8; do /usr/bin/time -f %e -o wall-$i {CLI} add "
                       f"{put('same.safetensors', good)} --name dog --json > out$i & done; wait; cat out*"]),
        Probe("version 0", ["add", put("v0.safetensors", good), "--name", "x", "--version", "0"], 2, nothing),
        Probe("name dog.", ["add", put("n1.safetensors", good), "--name", "dog."], 2, nothing),
        Probe("name dog-", ["add", put("n2.safetensors", good), "--name", "dog-"], 2, nothing),
        Probe("name a--b", ["add", put("n3.safetensors", good), "--name", "a--b"], 2, nothing),
        Probe("name ../x", ["add", put("n4.safetensors", good), "--name", "../x"], 2, nothing),
        Probe("search quote", ["search", '"'], 2, setup=add_first(files, fp)),
        Probe("search percent", ["search", "%"], 2, setup=add_first(files, fp)),
        Probe("ref garbage", ["show", "dog@@@1"], 2, setup=add_first(files, fp)),
        Probe("mask 40000x40000", ["generate", "a dog", "--mask", f"dog={big_png}", "--steps", "1", "--height", "64", "--width", "64",
                                   "--output", str(files / "o1")], 6),
        Probe("layout image 40000x40000", ["generate", "a dog", "--layout-image", big_png, "--colour", "255,0,0=dog", "--steps", "1",
                                           "--height", "64", "--width", "64", "--output", str(files / "o2")], 6),
        Probe("one colour two words", ["generate", "a dog and a mug", "--layout-image", red, "--colour", "255,0,0=dog", "--colour",
                                       "255,0,0=mug", "--output", str(files / "o3")], 6),
        Probe("silent server: search", ["search", "--remote", "r", "dog"], 12, env=hub_env, setup=remote_setup(silent.port)),
        Probe("silent server: pull", ["pull", "r-ns/dog", "--remote", "r"], 12, env=hub_env, setup=remote_setup(silent.port)),
        Probe("silent server: push", ["push", "dog", "--remote", "r"], 12, env=hub_env,
              setup=lambda home: (add_first(files, fp)(home), remote_setup(silent.port)(home))),
    ]
    for status in (500, 503, 0):
        port = _answering(status)
        label = f"HTTP {status}" if status else "reset"
        out.append(Probe(f"{label}: search", ["search", "--remote", "r", "dog"], 12, env=hub_env, setup=remote_setup(port)))
        out.append(Probe(f"{label}: pull", ["pull", "r-ns/dog", "--remote", "r"], 12, env=hub_env, setup=remote_setup(port)))
    deep_port = _answering(200, deep.encode())  # every answer, manifests and listings included, is nested JSON
    out.append(Probe("deep json from the Hub: search", ["search", "--remote", "r", "dog"], 12, env=hub_env, setup=remote_setup(deep_port)))
    out.append(Probe("deep json from the Hub: pull", ["pull", "r-ns/dog", "--remote", "r"], 12, nothing, env=hub_env,
                     setup=remote_setup(deep_port)))
    out.append(Probe("server down: pull", ["pull", "r-ns/dog", "--remote", "r"], 12, env=hub_env, setup=remote_setup(down_port)))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-s", type=float, default=5.0)
    parser.add_argument("--limit-mb", type=float, default=500.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from cones2.base_model import model_info
    from cones2.demo_model import build_demo_model

    with tempfile.TemporaryDirectory(prefix="cones2-hostile-") as tmp:
        work = Path(tmp)
        model = build_demo_model(work / "demo-model")
        fp = model_info(str(model)).fingerprint
        files = work / "files"
        files.mkdir()
        env = {**os.environ, "CONES2_BASE_MODEL": str(model), "HF_HUB_CACHE": str(work / "hf-cache")}
        env.pop("HF_HUB_OFFLINE", None)
        results = []
        for probe in probes(files, fp):
            result = run_probe(probe, work / "homes", env)
            result["held"] = result["held"] and result["s"] <= args.limit_s and not result["mb"] > args.limit_mb
            results.append(result)
            if not args.json:
                mark = "held  " if result["held"] else "BROKEN"
                print(f"{mark} {result['s']:5.2f} s {result['mb']:7.1f} MB  {probe.name}: exit {result['exit']}  {result['stderr'][:100]}")
    held = sum(r["held"] for r in results)
    summary = {"tried": len(results), "held": held, "broken": len(results) - held,
               "max_s": max(r["s"] for r in results), "max_mb": max(r["mb"] for r in results),
               "load_average": os.getloadavg()}
    by_cause = {n: [r for r in results if r["cause"] == n] for n in CAUSES}
    if args.json:
        print(json.dumps({"summary": summary, "probes": results}, indent=2))
        return 0 if held == len(results) else 1
    print(f"\ntried {summary['tried']} / held {held} / broken {summary['broken']}  "
          f"(slowest {summary['max_s']:.2f} s, peak memory {summary['max_mb']:.0f} MB; "
          f"load average {' '.join(f'{x:.2f}' for x in summary['load_average'])})")
    print("\n| # | cause | probes | held | slowest s | peak MB |\n|---|---|---|---|---|---|")
    for n, (label, _) in CAUSES.items():
        rows = by_cause[n]
        print(f"| {n} | {label} | {len(rows)} | {sum(r['held'] for r in rows)} | "
              f"{max(r['s'] for r in rows):.2f} | {max(r['mb'] for r in rows):.0f} |")
    print("\nslowest probes:")
    for r in sorted(results, key=lambda r: -r["s"])[:5]:
        print(f"  {r['s']:5.2f} s {r['mb']:6.1f} MB  {r['probe']}{'' if r['held'] else '  (BROKEN)'}")
    return 0 if held == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
