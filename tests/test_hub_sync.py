"""Push to and pull from a Hub-compatible server with the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest
from _hub_helpers import add_local, fingerprint, new_namespace, residual, use_home
from click.testing import CliRunner

from cones2.cli import main
from cones2.errors import (
    BaseModelMismatchError,
    ConflictError,
    IntegrityError,
    NotFoundError,
    RemoteError,
)


@pytest.fixture
def hub(hub_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HF_TOKEN", "dummy")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    hub_server.reset_stats()
    return hub_server


@pytest.fixture
def ns(hub) -> str:
    from cones2.registry.hub import add_remote

    namespace = new_namespace()
    add_remote("team", namespace, hub.endpoint, default=True)
    return namespace


@pytest.fixture
def fp(demo_model_dir: Path) -> str:
    return fingerprint(demo_model_dir)


def second_home(monkeypatch, tmp_path: Path, hub, namespace: str) -> Path:
    from cones2.registry.hub import add_remote

    home = use_home(monkeypatch, tmp_path / "home-b")
    add_remote("team", namespace, hub.endpoint, default=True)
    return home


def blobs(home: Path) -> list[Path]:
    root = home / "blobs"
    return [p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] != "tmp"]


def subjects(home: Path) -> list[str]:
    from cones2.registry import open_catalogue

    with open_catalogue(home) as cat:
        return [s.name for s in cat.list_subjects()]


def run(*args: str) -> object:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


# ------------------------------------------------------------------ round trip


def test_push_then_pull_into_second_home_is_bit_identical(hub, ns, fp, monkeypatch, tmp_path, cones2_home):
    from cones2.registry import open_catalogue
    from cones2.registry.hub import pull, push

    add_local("dog-max", fp, seed=1, description="Max the corgi")
    add_local("dog-max", fp, seed=2)
    pushed = push("dog-max")
    assert [(r.version, r.status) for r in pushed] == [(1, "pushed"), (2, "pushed")]
    repo = f"{ns}/dog-max"
    files = hub.files(repo, "v1")
    assert set(files) >= {"residual.safetensors", "cones2.json", "README.md"}
    manifest = json.loads(files["cones2.json"])
    assert manifest["version"] == 1 and manifest["base_fingerprint"] == fp
    assert manifest["sha256"] == hashlib.sha256(files["residual.safetensors"]).hexdigest()
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: cones2\n") and '- "cones2-subject"' in card and f"pull {repo}@1" in card
    with open_catalogue(cones2_home) as cat:
        original = cat.read_blob(cat.resolve("dog-max@1").sha256)
    assert files["residual.safetensors"] == original

    home_b = second_home(monkeypatch, tmp_path, hub, ns)
    got = pull("dog-max@1")
    assert got.status == "pulled" and got.version == 1
    with open_catalogue(home_b) as cat:
        rec = cat.resolve("dog-max@1")
        assert cat.read_blob(rec.sha256) == original
        assert rec.provenance == {"kind": "remote", "remote": "team", "repo": repo, "commit": got.commit}
        assert got.commit == hub._repos[("model", repo)].tags["v1"]
        assert cat.show("dog-max@1")["subject"]["description"] == "Max the corgi"
    # bare name: the highest version
    assert pull("dog-max").version == 2


def test_cli_pull_dog_max_end_to_end(hub, ns, fp, monkeypatch, tmp_path):
    add_local("dog-max", fp, seed=3)
    res = run("push", "dog-max", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["status"] == "pushed"

    use_home(monkeypatch, tmp_path / "home-b")
    assert run("remote", "add", "team", ns, "--endpoint", hub.endpoint).exit_code == 0
    res = run("pull", "dog-max")
    assert res.exit_code == 0, res.output
    assert res.output.startswith("Pulled dog-max@1")
    res = run("pull", "dog-max", "--json")
    assert json.loads(res.output)["status"] == "present"
    res = run("show", "dog-max", "--json")
    assert res.exit_code == 0 and json.loads(res.output)["version"]["provenance"]["repo"] == f"{ns}/dog-max"


def test_pins_by_version_and_tag(hub, ns, fp, monkeypatch, tmp_path):
    from cones2.registry import open_catalogue
    from cones2.registry.hub import pull, push

    for seed in (1, 2, 3):
        add_local("cat-tom", fp, seed=seed)
    push("cat-tom")
    push("cat-tom@2", tags=("stable",))
    assert hub._repos[("model", f"{ns}/cat-tom")].tags["stable"] == hub._repos[("model", f"{ns}/cat-tom")].tags["v2"]

    home_b = second_home(monkeypatch, tmp_path, hub, ns)
    assert pull(f"{ns}/cat-tom@1").version == 1  # namespace given explicitly
    assert pull("cat-tom:v3").version == 3  # name:vN is name@N
    stable = pull("cat-tom:stable")
    assert (stable.version, stable.tag) == (2, "stable")
    with open_catalogue(home_b) as cat:
        assert cat.resolve("cat-tom:stable").version == 2  # the Hub label is mirrored locally
        assert [v.version for v in cat.list_versions("cat-tom")] == [1, 2, 3]
    # label tags move (version tags never do)
    push("cat-tom@3", tags=("stable",))
    assert pull("cat-tom:stable").version == 3
    with pytest.raises(NotFoundError):
        pull("cat-tom@9")
    with pytest.raises(NotFoundError):
        pull("no-such-subject")
    with pytest.raises(Exception, match="reserved for versions"):
        push("cat-tom@1", tags=("v7",))


def test_pull_as_other_name_and_conflicting_local_version(hub, ns, fp, monkeypatch, tmp_path):
    from cones2.registry.hub import pull, push

    add_local("dog-max", fp, seed=1)
    push("dog-max")
    home_b = second_home(monkeypatch, tmp_path, hub, ns)
    add_local("dog-max", fp, seed=99)  # a local dog-max@1 with other content
    with pytest.raises(ConflictError, match="--as"):
        pull("dog-max@1")
    got = pull("dog-max@1", local_name=f"{ns}/dog-max")
    assert got.name == f"{ns}/dog-max" and got.status == "pulled"
    assert sorted(subjects(home_b)) == sorted(["dog-max", f"{ns}/dog-max"])


# ------------------------------------------------------------------ libraries


def test_pull_all_and_search_remote(hub, ns, fp, monkeypatch, tmp_path):
    from cones2.registry import open_catalogue
    from cones2.registry.hub import push

    add_local("dog-max", fp, seed=1)
    add_local("dog-max", fp, seed=2)
    add_local("cat-tom", fp, seed=3)
    with open_catalogue() as cat:  # a subject made for another base model
        cat.add(residual("ab" * 32, seed=4, word="teapot"), "teapot", check_base=False)
    for name in ("dog-max", "cat-tom", "teapot"):
        push(name)

    res = run("search", "--remote", "team", "dog", "--json")
    assert res.exit_code == 0, res.output
    assert [s["repo"] for s in json.loads(res.output)] == [f"{ns}/dog-max"]
    found = {s["name"]: s for s in json.loads(run("search", "--remote", "team", "--json").output)}
    assert set(found) == {"dog-max", "cat-tom", "teapot"}
    assert found["dog-max"]["compatible"] is True and found["teapot"]["compatible"] is False
    res = run("search", "--remote", "cat")  # no NAME: TEXT on the default remote
    assert res.exit_code == 0 and f"{ns}/cat-tom" in res.output and "dog-max" not in res.output

    home_b = second_home(monkeypatch, tmp_path, hub, ns)
    hub.reset_stats()
    res = run("pull", "--all", ns, "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["counts"] == {"pulled": 3, "skipped": 1}
    skipped = [r for r in out["results"] if r["status"] == "skipped"]
    assert skipped[0]["repo"] == f"{ns}/teapot" and "base model" in skipped[0]["reason"]
    assert sorted(subjects(home_b)) == ["cat-tom", "dog-max"]

    hub.reset_stats()
    res = run("pull", "--all", ns, "--json")
    assert json.loads(res.output)["counts"] == {"present": 3, "skipped": 1}
    assert hub.bytes_served == 0
    assert not [p for m, p in hub.requests if p.endswith("residual.safetensors")]


# ------------------------------------------------------------------ concurrency and refusals


def test_concurrent_pushers_of_different_versions_both_land(hub, ns, fp, monkeypatch, tmp_path, cones2_home):
    from cones2.registry import open_catalogue
    from cones2.registry.hub import push
    from cones2.registry.hub.client import HubClient

    add_local("dog-max", fp, seed=1)
    push("dog-max")
    home_b = tmp_path / "home-b"
    with open_catalogue(home_b) as cat:
        cat.add(residual(fp, seed=1), "dog-max", version=1)
        cat.add(residual(fp, seed=3), "dog-max", version=3)
    add_local("dog-max", fp, seed=2)  # home A: version 2

    barrier = threading.Barrier(2, timeout=10)
    real_commit = HubClient.commit
    first = threading.local()

    def racing_commit(self, *args, **kwargs):  # both read the same head, then both commit
        if not getattr(first, "done", False):
            first.done = True
            barrier.wait()
        return real_commit(self, *args, **kwargs)

    monkeypatch.setattr(HubClient, "commit", racing_commit)
    results: dict[str, object] = {}

    def pusher(label: str, home: Path) -> None:
        try:
            results[label] = push("dog-max", home=home)
        except Exception as exc:  # pragma: no cover - reported below
            results[label] = exc

    threads = [threading.Thread(target=pusher, args=("a", cones2_home)), threading.Thread(target=pusher, args=("b", home_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    a, b = results["a"], results["b"]
    assert not isinstance(a, Exception) and not isinstance(b, Exception), results
    pushed = {r.version: r for r in [*a, *b] if r.status == "pushed"}
    assert set(pushed) == {2, 3}
    assert max(r.attempts for r in pushed.values()) >= 2  # one of them hit the stale parent and retried
    repo = hub._repos[("model", f"{ns}/dog-max")]
    assert {"v1", "v2", "v3"} <= set(repo.tags)
    assert len({repo.tags["v1"], repo.tags["v2"], repo.tags["v3"]}) == 3
    for v in (1, 2, 3):
        data = hub.files(f"{ns}/dog-max", f"v{v}")
        assert json.loads(data["cones2.json"])["version"] == v
        assert hashlib.sha256(data["residual.safetensors"]).hexdigest() == json.loads(data["cones2.json"])["sha256"]


def test_concurrent_pushers_of_the_same_version_one_is_refused(hub, ns, fp, tmp_path, cones2_home):
    from cones2.registry import open_catalogue
    from cones2.registry.hub import push

    add_local("dog-max", fp, seed=1)
    home_b = tmp_path / "home-b"
    with open_catalogue(home_b) as cat:
        cat.add(residual(fp, seed=7), "dog-max")
    results: dict[str, object] = {}

    def pusher(label: str, home: Path) -> None:
        try:
            results[label] = push("dog-max", home=home)
        except Exception as exc:
            results[label] = exc

    threads = [threading.Thread(target=pusher, args=(k, h)) for k, h in (("a", cones2_home), ("b", home_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    errors = [r for r in results.values() if isinstance(r, Exception)]
    assert len(errors) == 1 and isinstance(errors[0], ConflictError), results
    winner = next(r for r in results.values() if not isinstance(r, Exception))[0]
    data = hub.files(f"{ns}/dog-max", "v1")
    assert hashlib.sha256(data["residual.safetensors"]).hexdigest() == winner.sha256


def test_push_of_existing_version_with_other_content_is_refused(hub, ns, fp, monkeypatch, tmp_path):
    from cones2.registry.hub import push

    add_local("dog-max", fp, seed=1)
    first = push("dog-max")[0]
    assert push("dog-max")[0].status == "present"  # same content again: nothing to do
    head = hub.head(f"{ns}/dog-max")
    use_home(monkeypatch, tmp_path / "home-b")
    from cones2.registry.hub import add_remote

    add_remote("team", ns, hub.endpoint)
    add_local("dog-max", fp, seed=5)
    with pytest.raises(ConflictError, match="immutable"):
        push("dog-max@1")
    res = run("push", "dog-max")
    assert res.exit_code == ConflictError.exit_code and res.output.count("\n") == 1
    assert hub.head(f"{ns}/dog-max") == head
    assert hashlib.sha256(hub.files(f"{ns}/dog-max", "v1")["residual.safetensors"]).hexdigest() == first.sha256


# ------------------------------------------------------------------ bytes, interruptions, bad remotes


def test_repeated_pull_transfers_no_residual_bytes(hub, ns, fp, monkeypatch, tmp_path):
    from cones2.registry.hub import pull, push

    add_local("dog-max", fp, seed=1)
    push("dog-max")
    second_home(monkeypatch, tmp_path, hub, ns)
    hub.reset_stats()
    pull("dog-max@1")
    assert hub.bytes_served >= len(hub.files(f"{ns}/dog-max", "v1")["residual.safetensors"])
    hub.reset_stats()
    assert pull("dog-max@1").status == "present"
    assert pull("dog-max").status == "present"
    assert hub.bytes_served == 0
    # a wiped Hub cache: the manifest is fetched again, the residual is not
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "other-cache"))
    hub.reset_stats()
    assert pull("dog-max@1").status == "present"
    assert not [p for _, p in hub.requests if p.endswith("residual.safetensors")]
    assert hub.bytes_served == len(hub.files(f"{ns}/dog-max", "v1")["cones2.json"])  # the manifest only


def test_interrupted_pull_leaves_nothing_and_next_pull_completes(hub, ns, fp, monkeypatch, tmp_path):
    import time

    from cones2.registry.hub import HubClient, pull, push

    add_local("dog-max", fp, seed=1)
    push("dog-max")
    home_b = second_home(monkeypatch, tmp_path, hub, ns)
    HubClient(hub.endpoint).download(f"{ns}/dog-max", "cones2.json", "v1")  # so the cut hits the residual
    monkeypatch.setattr(time, "sleep", lambda s: None)
    hub.fail_after_bytes(40, times=6)
    with pytest.raises(RemoteError):
        pull("dog-max@1")
    assert subjects(home_b) == [] and blobs(home_b) == []
    hub.fail_after_bytes(0, times=0)
    got = pull("dog-max@1")
    assert got.status == "pulled" and subjects(home_b) == ["dog-max"] and len(blobs(home_b)) == 1


def test_tampered_remote_file_is_refused(hub, ns, fp, monkeypatch, tmp_path):
    from cones2.registry.hub import pull, push

    add_local("dog-max", fp, seed=1)
    push("dog-max")
    hub.tamper(f"{ns}/dog-max", "residual.safetensors", residual(fp, seed=666).to_bytes())
    home_b = second_home(monkeypatch, tmp_path, hub, ns)
    with pytest.raises(IntegrityError, match="manifest says"):
        pull("dog-max@1")
    assert subjects(home_b) == [] and blobs(home_b) == []
    res = run("pull", "dog-max")
    assert res.exit_code == IntegrityError.exit_code and "refused" in res.output


def test_manifest_for_another_base_model_is_refused(hub, ns, fp, monkeypatch, tmp_path):
    from cones2.registry import open_catalogue
    from cones2.registry.hub import pull, push

    with open_catalogue() as cat:
        cat.add(residual("cd" * 32, seed=1), "dog-max", check_base=False)
    push("dog-max")
    home_b = second_home(monkeypatch, tmp_path, hub, ns)
    hub.reset_stats()
    with pytest.raises(BaseModelMismatchError, match="cdcdcdcdcdcd"):
        pull("dog-max")
    assert subjects(home_b) == [] and blobs(home_b) == []
    assert not [p for _, p in hub.requests if p.endswith("residual.safetensors")]
    res = run("pull", "dog-max")
    assert res.exit_code == BaseModelMismatchError.exit_code
    assert "not for the local base model" in res.output


def test_unreachable_remote_and_missing_repo_are_one_line_errors(hub, ns, monkeypatch, tmp_path):
    import time

    monkeypatch.setattr(time, "sleep", lambda s: None)  # the client backs off 1+2+4+8+8 s on refused connections
    res = run("pull", "nothing-here")
    assert res.exit_code == NotFoundError.exit_code and res.output.count("\n") == 1
    run("remote", "add", "dead", "someone", "--endpoint", "http://127.0.0.1:9")
    res = run("search", "--remote", "dead", "x")
    assert res.exit_code == RemoteError.exit_code and res.output.startswith("Error: ") and res.output.count("\n") == 1
