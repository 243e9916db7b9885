"""Remotes config, reference parsing, manifest and model card (no server needed)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cones2.cli import main
from cones2.errors import InvalidNameError, NotFoundError, RemoteError, UsageError


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_remote_add_list_rm_cli(cones2_home, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    assert run("remote", "list").output.startswith("No remotes")
    res = run("remote", "add", "team", "acme-vision", "--endpoint", "http://127.0.0.1:1234/", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == {
        "name": "team", "namespace": "acme-vision", "endpoint": "http://127.0.0.1:1234", "default": True,
        "url": "http://127.0.0.1:1234",
    }
    monkeypatch.setenv("HF_ENDPOINT", "http://hub.example")
    assert run("remote", "add", "mirror", "acme").exit_code == 0
    listed = {r["name"]: r for r in json.loads(run("remote", "list", "--json").output)}
    assert listed["team"]["default"] and not listed["mirror"]["default"]
    assert listed["mirror"]["url"] == "http://hub.example" and listed["mirror"]["endpoint"] is None
    assert run("remote", "add", "mirror", "x").exit_code == UsageError.exit_code  # exists
    assert run("remote", "add", "mirror", "acme2", "--replace", "--default").exit_code == 0
    assert [r["name"] for r in json.loads(run("remote", "list", "--json").output) if r["default"]] == ["mirror"]
    stored = (cones2_home / "remotes.json").read_text()
    assert "hf_secret_value" not in stored and "token" not in stored
    assert run("remote", "rm", "mirror").exit_code == 0
    res = run("remote", "rm", "mirror")
    assert res.exit_code == NotFoundError.exit_code and res.output.count("\n") == 1
    for bad in (["Bad Name", "ns"], ["ok", "bad/ns"], ["ok", "ns", "--endpoint", "ftp://x"]):
        assert run("remote", "add", *bad).exit_code == UsageError.exit_code


def test_default_remote_rules(cones2_home):
    from cones2.registry.hub import add_remote, get_remote, remove_remote

    with pytest.raises(NotFoundError, match="remote add"):
        get_remote()
    add_remote("a", "ns-a")
    add_remote("b", "ns-b")
    assert get_remote().name == "a"  # the first one added
    remove_remote("a")
    assert get_remote().name == "b"  # the only one left
    add_remote("c", "ns-c")
    assert get_remote().name == "b"  # an implicit default stays the default
    remotes = {"x": {"namespace": "ns-x"}, "y": {"namespace": "ns-y"}}
    (cones2_home / "remotes.json").write_text(json.dumps({"remotes": remotes}))
    with pytest.raises(NotFoundError, match="no default remote"):
        get_remote()
    (cones2_home / "config.toml").write_text('default_remote = "y"\n')
    assert get_remote().name == "y"


def test_reference_targets(cones2_home, monkeypatch):
    from cones2.registry.hub import add_remote, parse_target

    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    add_remote("team", "acme", "http://127.0.0.1:1", default=True)
    add_remote("other", "Globex", "http://127.0.0.1:2")
    t = parse_target("dog-max")
    assert (t.repo_id, t.version, t.tag, t.label, t.endpoint) == ("acme/dog-max", None, None, None, "http://127.0.0.1:1")
    t = parse_target("Globex/dog-max@3")
    assert (t.repo_id, t.label, t.remote.name, t.endpoint) == ("Globex/dog-max", "v3", "other", "http://127.0.0.1:2")
    t = parse_target("other/dog-max:stable")  # a remote's name works as the prefix too
    assert (t.repo_id, t.label) == ("Globex/dog-max", "stable")
    t = parse_target("someone/cat:v2")
    assert (t.repo_id, t.version, t.remote, t.endpoint) == ("someone/cat", 2, None, "http://127.0.0.1:1")
    assert parse_target("dog-max", remote="other").repo_id == "Globex/dog-max"
    for bad in ("dog-max@sha256:0123456789abcdef", "a/b/c", "Dog", "dog@0"):
        with pytest.raises((UsageError, InvalidNameError)):
            parse_target(bad)


def test_manifest_round_trip_and_card(demo_model_dir):
    from cones2.registry.hub.manifest import Manifest, model_card, parse_manifest, public_base_model

    m = Manifest("dog-max", 3, "a" * 64, 440, "float32", (1, 32), "dog", (643,), "b" * 64,
                 "stabilityai/stable-diffusion-2-1-base", "Max", {"k": 1}, "2026-11-25T00:00:00Z")
    assert parse_manifest(m.to_bytes(), "x") == m
    card = model_card(m, "acme/dog-max").decode()
    front = card.split("---")[1]
    assert "library_name: cones2" in front and '"cones2-subject"' in front and '"dog"' in front
    assert 'base_model: "stabilityai/stable-diffusion-2-1-base"' in front
    assert "cones2 pull acme/dog-max@3" in card
    assert public_base_model(str(demo_model_dir)) == demo_model_dir.name  # no local paths published
    for broken in (b"{", b"[]", json.dumps({**m.to_dict(), "format_version": 2}).encode(),
                   json.dumps({**m.to_dict(), "sha256": "xyz"}).encode(),
                   json.dumps({**m.to_dict(), "file": "../evil"}).encode()):
        with pytest.raises(RemoteError):
            parse_manifest(broken, "acme/dog-max@v3")
