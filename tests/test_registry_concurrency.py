"""Real processes: concurrent adds get distinct versions; SIGKILL mid-add leaves no damage."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys

import pytest
from _postgres import postgres_server  # noqa: F401 - session fixture
from _registry_helpers import REPO, fingerprint_of, write_residual

from cones2.registry import open_catalogue

ADDER = """
import sys
from pathlib import Path
from cones2.registry import open_catalogue
url = sys.argv[1] or None
with open_catalogue(url=url) as cat:
    print("ready", flush=True)
    sys.stdin.readline()  # start line: both writers begin together
    for path in sys.argv[2:]:
        print(cat.add(path, "shared/dog").version, flush=True)
"""


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_processes_adding_get_distinct_versions(backend, request, tmp_path, demo_model_dir):
    url = request.getfixturevalue("postgres_server").create_database() if backend == "postgresql" else None
    fp = fingerprint_of(demo_model_dir)
    open_catalogue(url=url).close()  # create the schema once; both writers then race on adds
    batches = [[str(write_residual(tmp_path / f"p{p}-{i}.safetensors", fp, seed=100 * p + i)) for i in range(6)] for p in range(2)]
    procs = [
        subprocess.Popen([sys.executable, "-c", ADDER, url or "", *paths], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
        for paths in batches
    ]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    got = sorted(int(v) for out, _ in outputs for v in out.split())
    assert got == list(range(1, 13))
    with open_catalogue(url=url) as cat:
        records = cat.list_versions("shared/dog")
        assert [r.version for r in records] == list(range(1, 13))
        assert len({r.sha256 for r in records}) == 12
        assert cat.verify()["ok"]


KILLER = """
import os, signal, sys
from cones2.registry import catalogue, store
from cones2.registry import open_catalogue

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

point = sys.argv[1]
if point == "blob-write":       # temp file written, not yet renamed into place
    store.os.fsync = die
elif point == "before-commit":  # blob in place, version row inserted, transaction open
    catalogue.Catalogue._subject_search_text = staticmethod(die)
cat = open_catalogue()
cat.add(sys.argv[2], "dog")
print("not killed")
"""


@pytest.mark.parametrize("point", ["blob-write", "before-commit"])
def test_sigkill_mid_add_leaves_no_damage(point, tmp_path, demo_model_dir, cones2_home):
    fp = fingerprint_of(demo_model_dir)
    first = write_residual(tmp_path / "first.safetensors", fp, seed=1)
    second = write_residual(tmp_path / "second.safetensors", fp, seed=2)
    with open_catalogue() as cat:
        assert cat.add(first, "dog").version == 1
    proc = subprocess.run([sys.executable, "-c", KILLER, point, str(second)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    second_sha = hashlib.sha256(second.read_bytes()).hexdigest()
    with open_catalogue() as cat:
        versions = cat.list_versions("dog")
        assert [v.version for v in versions] == [1]  # no row for the interrupted add
        for v in versions:
            assert cat.read_blob(v.sha256)  # every row's blob is there and intact
        for digest in cat.store.iter_digests():  # no partial blob in the store
            assert hashlib.sha256(cat.blob_path(digest).read_bytes()).hexdigest() == digest
        assert cat.verify()["ok"]
        if point == "blob-write":
            assert not cat.blob_path(second_sha).exists()
            assert len(cat.store.temp_files()) == 1  # the leftover temp file, swept by gc
        else:
            assert cat.blob_path(second_sha).exists()  # unreferenced: gc removes it
        report = cat.gc(temp_grace_s=0)
        assert cat.store.temp_files() == []
        assert report["removed"] == ([] if point == "blob-write" else [second_sha])
        assert cat.add(second, "dog").version == 2  # the catalogue is not locked or damaged
    assert os.path.exists(cones2_home / "catalogue.db")
