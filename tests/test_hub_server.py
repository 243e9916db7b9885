"""Drive tests/hub_server.py with the real huggingface_hub client (never touches the internet)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hub_server import HubServer, card_tags, git_blob_sha1
from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    HfApi,
    hf_hub_download,
    snapshot_download,
)
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

TOKEN = "dummy"


@pytest.fixture
def api(hub_server: HubServer) -> HfApi:
    return HfApi(endpoint=hub_server.endpoint, token=TOKEN)


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client sleeps 1 s before resuming an interrupted download; skip that."""
    monkeypatch.setattr(time, "sleep", lambda _s: None)


def new_repo(api: HfApi, repo_type: str = "model", namespace: str = "subjects") -> str:
    repo_id = f"{namespace}/r-{uuid.uuid4().hex[:10]}"
    api.create_repo(repo_id, repo_type=repo_type)
    return repo_id


def add(path: str, data: bytes) -> CommitOperationAdd:
    return CommitOperationAdd(path_in_repo=path, path_or_fileobj=data)


def download(
    server: HubServer, repo_id: str, filename: str, cache: Path, **kwargs: object
) -> bytes:
    local = hf_hub_download(
        repo_id, filename, endpoint=server.endpoint, token=TOKEN, cache_dir=cache, **kwargs
    )
    return Path(local).read_bytes()


def test_create_repo_exist_ok(api: HfApi, hub_server: HubServer) -> None:
    url = api.create_repo("subjects/twice")
    assert url.repo_id == "subjects/twice"
    assert api.create_repo("subjects/twice", exist_ok=True).repo_id == "subjects/twice"
    assert api.create_repo("subjects/twice", exist_ok=True).repo_id == "subjects/twice"
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo("subjects/twice")
    assert err.value.response.status_code == 409
    ds = api.create_repo(
        "subjects/twice", repo_type="dataset"
    )  # other type, other namespace of names
    assert ds.repo_type == "dataset"
    assert api.repo_info("subjects/twice").sha == hub_server.head("subjects/twice")
    assert api.list_repo_files("subjects/twice") == [".gitattributes"]  # like the real Hub


def test_commits_tags_downloads(api: HfApi, hub_server: HubServer, tmp_path: Path) -> None:
    repo_id = new_repo(api)
    info1 = api.create_commit(
        repo_id,
        [add("a.txt", b"one"), add("dir/b.bin", b"\x00\x01" * 100), add("dir/sub/c.json", b"{}")],
        commit_message="first",
    )
    assert len(info1.oid) == 40 and info1.oid == info1.oid.lower()
    api.create_tag(repo_id, tag="v1")
    api.upload_file(path_or_fileobj=b"two", path_in_repo="a.txt", repo_id=repo_id)
    api.create_tag(repo_id, tag="v2")
    head = hub_server.head(repo_id)
    assert head != info1.oid

    refs = api.list_repo_refs(repo_id)
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", head)]
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": info1.oid, "v2": head}

    cache = tmp_path / "cache"
    assert download(hub_server, repo_id, "a.txt", cache, revision="v1") == b"one"
    assert download(hub_server, repo_id, "a.txt", cache, revision="v2") == b"two"
    assert download(hub_server, repo_id, "a.txt", cache) == b"two"
    assert download(hub_server, repo_id, "a.txt", cache, revision=info1.oid) == b"one"
    assert (
        cache / f"models--{repo_id.replace('/', '--')}" / "refs" / "v1"
    ).read_text() == info1.oid

    snap = Path(
        snapshot_download(
            repo_id, revision="v1", endpoint=hub_server.endpoint, token=TOKEN, cache_dir=cache
        )
    )
    got = sorted(str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file())
    assert got == [".gitattributes", "a.txt", "dir/b.bin", "dir/sub/c.json"]
    assert (snap / "dir/b.bin").read_bytes() == b"\x00\x01" * 100
    assert api.repo_info(repo_id, revision="v1").sha == info1.oid

    top = {(type(e).__name__, e.path) for e in api.list_repo_tree(repo_id)}
    assert top == {("RepoFile", ".gitattributes"), ("RepoFile", "a.txt"), ("RepoFolder", "dir")}
    nested = {e.path: e for e in api.list_repo_tree(repo_id, path_in_repo="dir", recursive=True)}
    assert sorted(nested) == ["dir/b.bin", "dir/sub", "dir/sub/c.json"]
    assert nested["dir/b.bin"].size == 200 and nested["dir/b.bin"].blob_id == git_blob_sha1(
        b"\x00\x01" * 100
    )
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo_id, path_in_repo="nope"))

    api.delete_tag(repo_id, tag="v1")
    assert [t.name for t in api.list_repo_refs(repo_id).tags] == ["v2"]
    with pytest.raises(RevisionNotFoundError):
        api.delete_tag(repo_id, tag="v1")
    with pytest.raises(HfHubHTTPError) as err:
        api.create_tag(repo_id, tag="v2")
    assert err.value.response.status_code == 409


def test_unchanged_upload_makes_no_commit(api: HfApi, hub_server: HubServer) -> None:
    repo_id = new_repo(api)
    api.upload_file(path_or_fileobj=b"same", path_in_repo="x.txt", repo_id=repo_id)
    head = hub_server.head(repo_id)
    api.upload_file(path_or_fileobj=b"same", path_in_repo="x.txt", repo_id=repo_id)
    assert hub_server.head(repo_id) == head  # preupload oid matched: client skipped the commit


def test_delete_operations(api: HfApi, hub_server: HubServer) -> None:
    repo_id = new_repo(api)
    api.create_commit(
        repo_id, [add("k.txt", b"k"), add("d/1", b"1"), add("d/e/2", b"2")], commit_message="m"
    )
    api.create_commit(
        repo_id, [CommitOperationDelete("d/"), CommitOperationDelete("k.txt")], commit_message="rm"
    )
    assert set(hub_server.files(repo_id)) == {".gitattributes"}
    with pytest.raises(EntryNotFoundError):
        api.delete_file("k.txt", repo_id)


def test_parent_commit_conflict(api: HfApi, hub_server: HubServer) -> None:
    repo_id = new_repo(api)
    base = hub_server.head(repo_id)
    api.create_commit(repo_id, [add("a", b"1")], commit_message="c1", parent_commit=base)
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(repo_id, [add("a", b"2")], commit_message="c2", parent_commit=base)
    assert err.value.response.status_code == 412
    assert "A commit has happened since" in str(err.value)
    assert hub_server.files(repo_id)["a"] == b"1"


def test_parent_commit_check_is_atomic(api: HfApi, hub_server: HubServer) -> None:
    repo_id = new_repo(api)
    base = hub_server.head(repo_id)

    def attempt(i: int) -> int:
        try:
            api.create_commit(
                repo_id, [add("race", b"%d" % i)], commit_message=f"{i}", parent_commit=base
            )
            return 200
        except HfHubHTTPError as e:
            return e.response.status_code

    with ThreadPoolExecutor(8) as pool:
        codes = sorted(pool.map(attempt, range(8)))
    assert codes == [200] + [412] * 7


def test_list_models(api: HfApi, hub_server: HubServer) -> None:
    ns = f"lm-{uuid.uuid4().hex[:8]}"
    card = b"---\nlibrary_name: cones2\ntags:\n- subject\n- 'dog'\nlicense: mit\n---\n# Card\n"
    for name, readme in [
        ("alpha", card),
        ("beta", b"---\ntags: [subject, cat]\n---\n"),
        ("gamma", None),
    ]:
        api.create_repo(f"{ns}/{name}")
        if readme:
            api.upload_file(
                path_or_fileobj=readme, path_in_repo="README.md", repo_id=f"{ns}/{name}"
            )
    api.create_repo(f"{ns}/delta", repo_type="dataset")

    assert sorted(m.id for m in api.list_models(author=ns)) == [
        f"{ns}/alpha",
        f"{ns}/beta",
        f"{ns}/gamma",
    ]
    assert [m.id for m in api.list_models(author=ns, filter="subject", search="alp")] == [
        f"{ns}/alpha"
    ]
    assert sorted(m.id for m in api.list_models(author=ns, filter="subject")) == [
        f"{ns}/alpha",
        f"{ns}/beta",
    ]
    assert [m.id for m in api.list_models(author=ns, filter=["subject", "cat"])] == [f"{ns}/beta"]
    assert len(list(api.list_models(author=ns, limit=2))) == 2
    alpha = next(iter(api.list_models(author=ns, search="alpha")))
    assert alpha.tags == ["cones2", "subject", "dog"]
    assert alpha.sha == hub_server.head(f"{ns}/alpha") and alpha.last_modified is not None
    assert [d.id for d in api.list_datasets(author=ns)] == [f"{ns}/delta"]
    assert card_tags(b"no front matter") == []


def test_errors_are_typed(api: HfApi, hub_server: HubServer, tmp_path: Path) -> None:
    repo_id = new_repo(api)
    with pytest.raises(RepositoryNotFoundError):
        download(hub_server, "subjects/missing", "a.txt", tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("subjects/missing")
    with pytest.raises(RevisionNotFoundError):
        download(hub_server, repo_id, ".gitattributes", tmp_path, revision="v9")
    with pytest.raises(EntryNotFoundError):
        download(hub_server, repo_id, "missing.txt", tmp_path)


def test_dataset_repo_roundtrip(api: HfApi, hub_server: HubServer, tmp_path: Path) -> None:
    repo_id = new_repo(api, repo_type="dataset")
    api.upload_file(
        path_or_fileobj=b"rows", path_in_repo="data/x.csv", repo_id=repo_id, repo_type="dataset"
    )
    api.create_tag(repo_id, tag="v1", repo_type="dataset")
    got = download(hub_server, repo_id, "data/x.csv", tmp_path, revision="v1", repo_type="dataset")
    assert got == b"rows"
    assert ("HEAD", f"/datasets/{repo_id}/resolve/v1/data/x.csv") in hub_server.requests
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info(repo_id)  # forgot repo_type -> asks /api/models/...


def test_bytes_served_and_tamper(api: HfApi, hub_server: HubServer, tmp_path: Path) -> None:
    repo_id = new_repo(api)
    api.upload_file(path_or_fileobj=b"x" * 1000, path_in_repo="w.bin", repo_id=repo_id)
    api.create_tag(repo_id, tag="v1")
    hub_server.reset_stats()
    assert download(hub_server, repo_id, "w.bin", tmp_path / "c1", revision="v1") == b"x" * 1000
    assert hub_server.bytes_served == 1000
    assert download(hub_server, repo_id, "w.bin", tmp_path / "c1", revision="v1") == b"x" * 1000
    assert hub_server.bytes_served == 1000  # cached: only a HEAD went out
    assert [m for m, p in hub_server.requests if p.endswith("/w.bin")] == ["HEAD", "GET", "HEAD"]

    hub_server.tamper(repo_id, "w.bin", b"evil")
    assert download(hub_server, repo_id, "w.bin", tmp_path / "c2", revision="v1") == b"evil"
    assert download(hub_server, repo_id, "w.bin", tmp_path / "c2") == b"evil"
    assert hub_server.bytes_served == 1004  # main -> same commit and ETag: blob already cached
    with pytest.raises(KeyError):
        hub_server.tamper(repo_id, "absent", b"")


def test_interrupted_download_is_retried(
    api: HfApi, hub_server: HubServer, tmp_path: Path, no_sleep: None
) -> None:
    repo_id = new_repo(api)
    payload = bytes(range(256)) * 40
    api.upload_file(path_or_fileobj=payload, path_in_repo="big.bin", repo_id=repo_id)
    hub_server.reset_stats()
    hub_server.fail_after_bytes(1000)  # one-shot; the client retries by itself
    assert download(hub_server, repo_id, "big.bin", tmp_path) == payload
    # The client only keeps whole 10 MiB chunks, so a small file is fetched again from byte 0.
    assert hub_server.bytes_served == 1000 + len(payload)
    assert [m for m, _ in hub_server.requests] == ["HEAD", "GET", "GET"]


def test_resolve_http_details(api: HfApi, hub_server: HubServer) -> None:
    repo_id = new_repo(api)
    commit = api.upload_file(
        path_or_fileobj=b"0123456789", path_in_repo="d/f.txt", repo_id=repo_id
    ).oid
    url = f"{hub_server.endpoint}/{repo_id}/resolve/main/d%2Ff.txt"
    with urllib.request.urlopen(urllib.request.Request(url, method="HEAD")) as r:
        assert r.headers["X-Repo-Commit"] == commit
        assert r.headers["ETag"] == f'"{git_blob_sha1(b"0123456789")}"'
        assert r.headers["Content-Length"] == "10"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=4-"})) as r:
        assert (r.status, r.headers["Content-Range"], r.read()) == (206, "bytes 4-9/10", b"456789")
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=-3"})) as r:
        assert (r.status, r.headers["Content-Length"], r.read()) == (206, "3", b"789")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{hub_server.endpoint}/{repo_id}/resolve/main/nope")
    assert err.value.code == 404 and err.value.headers["X-Error-Code"] == "EntryNotFound"


def test_failed_download_then_success(
    api: HfApi, hub_server: HubServer, tmp_path: Path, no_sleep: None
) -> None:
    repo_id = new_repo(api)
    api.upload_file(path_or_fileobj=b"data" * 100, path_in_repo="f.bin", repo_id=repo_id)
    hub_server.fail_after_bytes(0, times=6)  # first GET + the client's 5 resume attempts all break
    # httpx2.RemoteProtocolError with huggingface_hub 2.4 (the client gives up after 5 resumes)
    with pytest.raises(Exception, match="peer closed connection"):
        download(hub_server, repo_id, "f.bin", tmp_path)
    assert download(hub_server, repo_id, "f.bin", tmp_path) == b"data" * 100
