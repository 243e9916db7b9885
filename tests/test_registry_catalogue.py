"""The catalogue API, run against SQLite and a real PostgreSQL server."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from _postgres import postgres_server  # noqa: F401 - session fixture
from _registry_helpers import fingerprint_of, write_residual

from cones2.errors import (
    BaseModelMismatchError,
    ConflictError,
    IntegrityError,
    InvalidNameError,
    InvalidResidualError,
    NotFoundError,
    UsageError,
)
from cones2.registry import open_catalogue
from cones2.residual_file import parse_residual

OTHER = "ab" * 32


@pytest.fixture(scope="session")
def fp(demo_model_dir: Path) -> str:
    return fingerprint_of(demo_model_dir)


@pytest.fixture(params=["sqlite", "postgresql"])
def cat(request: pytest.FixtureRequest, cones2_home: Path):
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_server").create_database()
    catalogue = open_catalogue(url=url)
    yield catalogue
    catalogue.close()


@pytest.fixture
def res(tmp_path: Path, fp: str):
    def make(seed: int = 0, **kwargs) -> Path:
        return write_residual(tmp_path / f"r{seed}-{kwargs.get('hidden', 32)}-{kwargs.get('word', 'dog')}.safetensors", kwargs.pop("fingerprint", fp), seed=seed, **kwargs)

    return make


def snapshot(cat) -> tuple:
    """Everything stored, to prove a refused operation changed nothing."""
    subjects = [(s.name, s.versions, s.latest, tuple(s.tags.items())) for s in cat.list_subjects()]
    versions = [(r.ref, r.sha256) for s in cat.list_subjects() for r in cat.list_versions(s.name)]
    blobs = sorted(cat.store.iter_digests())
    return subjects, versions, blobs


def test_add_records_everything(cat, res, fp):
    rec = cat.add(res(1, meta={"steps": 800}), "dog-max", description="Max, a corgi", metadata={"lr": 0.001})
    assert (rec.name, rec.version, rec.word, rec.token_ids, rec.shape, rec.dtype) == ("dog-max", 1, "dog", (643,), (1, 32), "float32")
    assert rec.base_fingerprint == fp and rec.base_model == os.environ["CONES2_BASE_MODEL"]
    assert rec.metadata == {"steps": 800, "lr": 0.001}
    assert rec.provenance == {"kind": "local"}
    assert rec.created_at.endswith("Z") and rec.tags == ()
    data = cat.read_blob(rec.sha256)
    assert len(data) == rec.size and cat.blob_path(rec.sha256).read_bytes() == data
    assert cat.list_subjects()[0].description == "Max, a corgi"
    assert cat.base_models()[0]["fingerprint"] == fp


def test_versions_increment_and_same_content_is_noop(cat, res):
    a, b = res(1), res(2)
    assert cat.add(a, "dog").version == 1
    assert cat.add(b, "dog").version == 2
    again = cat.add(a, "dog")
    assert again.version == 1  # same content: the existing version, nothing new
    assert [r.version for r in cat.list_versions("dog")] == [1, 2]
    assert len(list(cat.store.iter_digests())) == 2


def test_versions_are_immutable(cat, res):
    rec = cat.add(res(1), "dog", version=3)
    assert rec.version == 3
    before = snapshot(cat)
    with pytest.raises(ConflictError, match=r"dog@3 already exists with other content"):
        cat.add(res(2), "dog", version=3)
    assert snapshot(cat)[:2] == before[:2]
    assert cat.add(res(1), "dog", version=3).version == 3  # same content: no-op
    assert cat.add(res(2), "dog").version == 4  # next after the highest ever allocated
    with pytest.raises(UsageError):
        cat.add(res(5), "dog", version=0)


def test_removed_version_numbers_are_not_reused(cat, res):
    cat.add(res(1), "dog")
    cat.add(res(2), "dog")
    cat.remove("dog@2")
    assert cat.add(res(3), "dog").version == 3


def test_refs_resolve(cat, res):
    r1 = cat.add(res(1), "team/dog")
    r2 = cat.add(res(2), "team/dog")
    assert cat.resolve("team/dog").version == 2  # highest without a latest tag
    assert cat.resolve("team/dog@1").sha256 == r1.sha256
    assert cat.resolve(f"team/dog@sha256:{r1.sha256[:12]}").version == 1
    assert cat.resolve(f"team/dog@sha256:{r2.sha256}").version == 2
    cat.tag("team/dog@1", "latest")
    assert cat.resolve("team/dog").version == 1  # latest tag wins
    cat.tag("team/dog@2", "stable")
    assert cat.resolve("team/dog:stable").version == 2
    assert cat.resolve("team/dog:stable").tags == ("stable",)
    record, residual = cat.load("team/dog:stable")
    assert residual.word == "dog" and record.sha256 == r2.sha256


@pytest.mark.parametrize(
    "ref, error, message",
    [
        ("cat", NotFoundError, "unknown subject 'cat'"),
        ("dog@9", NotFoundError, "dog has no version 9"),
        ("dog:nope", NotFoundError, "no tag 'nope'"),
        ("dog@sha256:000000000000", NotFoundError, "no version of dog has that digest"),
        ("dog@sha256:abc", InvalidNameError, "12 to 64"),
        ("dog@x", InvalidNameError, "positive integer"),
        ("Dog", InvalidNameError, "invalid subject name"),
        ("../x", InvalidNameError, "invalid subject name"),
        ("", InvalidNameError, "empty"),
    ],
)
def test_bad_refs(cat, res, ref, error, message):
    cat.add(res(1), "dog")
    with pytest.raises(error, match=message):
        cat.resolve(ref)


def test_tags_move_with_history(cat, res):
    cat.add(res(1), "dog")
    cat.add(res(2), "dog")
    assert cat.tag("dog@1", "stable")["changed"] is True
    assert cat.tag("dog@1", "stable")["changed"] is False  # already there: no event
    moved = cat.tag("dog@2", "stable")
    assert moved["previous"] == 1 and moved["version"] == 2
    assert cat.untag("dog", "stable")["version"] == 2
    with pytest.raises(NotFoundError):
        cat.resolve("dog:stable")
    with pytest.raises(NotFoundError):
        cat.untag("dog", "stable")
    history = cat.show("dog")["tag_history"]
    assert [(e["tag"], e["action"], e["version"]) for e in history] == [
        ("stable", "set", 1), ("stable", "moved", 2), ("stable", "removed", 2)
    ]
    with pytest.raises(InvalidNameError):
        cat.tag("dog@1", "Bad Tag")
    with pytest.raises(InvalidNameError):
        cat.tag("dog@1", "12")


def test_remove_version_and_subject_then_gc(cat, res):
    r1 = cat.add(res(1), "dog")
    r2 = cat.add(res(2), "dog")
    cat.tag("dog@2", "stable")
    out = cat.remove("dog:stable")
    assert out["version"] == 2 and out["tags"] == ["stable"]
    assert [r.version for r in cat.list_versions("dog")] == [1]
    assert cat.blob_path(r2.sha256).exists()  # blobs stay until gc
    assert cat.show("dog")["tag_history"][-1]["action"] == "removed"
    dry = cat.gc(dry_run=True)
    assert dry["removed"] == [r2.sha256] and cat.blob_path(r2.sha256).exists()
    assert cat.gc()["removed"] == [r2.sha256]
    assert not cat.blob_path(r2.sha256).exists() and cat.blob_path(r1.sha256).exists()
    assert cat.remove("dog") == {"removed": "subject", "name": "dog", "versions": [1]}
    assert cat.list_subjects() == []
    assert cat.gc()["removed"] == [r1.sha256]


def test_search_name_word_description_metadata(cat, res):
    cat.add(res(1, meta={"trainer": "Alice"}), "dog-max", description="A corgi")
    cat.add(res(2, word="cat"), "whiskers")
    assert [s.name for s in cat.search("MAX")] == ["dog-max"]
    assert [s.name for s in cat.search("corgi")] == ["dog-max"]
    assert [s.name for s in cat.search("alice")] == ["dog-max"]
    assert [s.name for s in cat.search("cat")] == ["whiskers"]
    assert cat.search("100%") == []  # LIKE wildcards are literal
    with pytest.raises(UsageError, match="has no letter or digit"):  # '_' alone would match everything
        cat.search("_")
    assert [s.name for s in cat.list_subjects()] == ["dog-max", "whiskers"]
    assert [s.name for s in cat.list_subjects("whi")] == ["whiskers"]


def test_tampered_blob_is_caught_on_read_and_by_verify(cat, res):
    rec = cat.add(res(1), "dog")
    good = cat.add(res(2), "cat", word="dog")
    path = cat.blob_path(rec.sha256)
    os.chmod(path, 0o644)
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(IntegrityError, match="corrupt"):
        cat.load("dog")
    with pytest.raises(IntegrityError, match="corrupt"):
        cat.export("dog", Path(os.environ["CONES2_HOME"]) / "out.safetensors")
    assert not (Path(os.environ["CONES2_HOME"]) / "out.safetensors").exists()
    report = cat.verify()
    assert not report["ok"] and report["corrupt"] == [{"sha256": rec.sha256, "refs": ["dog@1"]}]
    cat.blob_path(good.sha256).unlink()
    report = cat.verify()
    assert report["missing"] == [{"sha256": good.sha256, "refs": ["cat@1"]}]
    with pytest.raises(IntegrityError, match="missing"):
        cat.read_blob(good.sha256)


def test_blob_check_does_not_parse_messages(tmp_path: Path):
    from cones2.registry.store import BlobStore, sha256_hex

    store = BlobStore(tmp_path / "missing" / "blobs")  # "missing" in the path: a corrupt blob is still corrupt
    digest = store.put(b"residual bytes")
    assert store.check(digest) == "ok"
    os.chmod(store.path(digest), 0o644)
    store.path(digest).write_bytes(b"other bytes")
    assert store.check(digest) == "corrupt"
    assert store.check(sha256_hex(b"never stored")) == "missing"


def test_base_model_compatibility(cat, res, fp):
    cat.add(res(1), "dog")
    with pytest.raises(BaseModelMismatchError) as info:
        cat.resolve("dog", base_fingerprint=OTHER, base_model="stabilityai/sd-1-5")
    msg = str(info.value)
    assert fp[:12] in msg and OTHER[:12] in msg and "stabilityai/sd-1-5" in msg
    assert os.environ["CONES2_BASE_MODEL"] in msg  # the model it came from
    assert cat.resolve("dog", base_fingerprint=fp).version == 1


def test_add_refuses_bad_input_and_keeps_catalogue(cat, res, tmp_path, fp):
    cat.add(res(1), "dog")
    before = snapshot(cat)
    bad = tmp_path / "bad.safetensors"
    cases = []
    bad.write_bytes(b"not a residual at all")
    cases.append((bad, InvalidResidualError, "not a safetensors"))
    good = res(2).read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(good[:-10])
    cases.append((trunc, InvalidResidualError, "truncated"))
    cases.append((tmp_path / "missing.safetensors", InvalidResidualError, "no such file"))
    cases.append((res(3, hidden=16), InvalidResidualError, "hidden size 16 does not fit"))
    cases.append((res(4, fingerprint=OTHER), BaseModelMismatchError, OTHER[:12]))
    cases.append((res(5, word="cat"), ConflictError, "is a 'dog'"))
    for path, error, message in cases:
        with pytest.raises(error, match=message):
            cat.add(path, "dog")
    for name in ("../x", "a/b/c", "UPPER", "", "x" * 200, "a..b", "/abs", "a/"):
        with pytest.raises(InvalidNameError):
            cat.add(res(6), name)
    with pytest.raises(InvalidResidualError, match="not 'cat'"):
        cat.add(res(7), "dog", word="cat")
    after = snapshot(cat)
    assert after[:2] == before[:2]
    assert set(before[2]) <= set(after[2])


def test_base_mismatch_names_both_models(cat, res, fp):
    with pytest.raises(BaseModelMismatchError) as info:
        cat.add(res(4, fingerprint=OTHER), "dog")
    msg = str(info.value)
    assert OTHER[:12] in msg and fp[:12] in msg and os.environ["CONES2_BASE_MODEL"] in msg


def test_add_bytes_with_remote_provenance(cat, res, fp):
    data = res(1).read_bytes()
    prov = {"kind": "remote", "remote": "hub", "repo": "team/subjects", "commit": "c0ffee" * 6 + "abcd"}
    rec = cat.add_bytes(data, "team/dog", provenance=prov)
    assert rec.provenance == prov and rec.sha256 == __import__("hashlib").sha256(data).hexdigest()
    assert cat.read_blob(rec.sha256) == data
    assert cat.add_bytes(data, "team/dog", provenance=prov).version == 1
    with pytest.raises(UsageError):
        cat.add_bytes(data, "team/dog2", provenance={"kind": "ftp"})
    # A pull for another base model: recorded without a local check.
    other = res(9, fingerprint=OTHER).read_bytes()
    assert cat.add_bytes(other, "team/other", check_base=False).base_fingerprint == OTHER


def test_add_residualfile_object_and_export(cat, res, tmp_path):
    from cones2.residual_file import read_residual

    residual = read_residual(res(1))
    rec = cat.add(residual, "dog")
    out = cat.export("dog", tmp_path)
    assert out.name == "dog@1.safetensors"
    assert parse_residual(out.read_bytes()).word == "dog"
    assert cat.export("dog@1", tmp_path / "x.safetensors").read_bytes() == cat.read_blob(rec.sha256)


def test_blob_store_dedupes_and_is_read_only(cat, res):
    a = cat.add(res(1), "dog")
    b = cat.add(res(1), "other-dog")
    assert a.sha256 == b.sha256
    assert list(cat.store.iter_digests()) == [a.sha256]
    mode = stat.S_IMODE(cat.blob_path(a.sha256).stat().st_mode)
    assert mode & 0o222 == 0
