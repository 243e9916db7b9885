"""A newcomer's first hour (issue 9): true causes in errors, quiet output, labels, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cones2.cli import main
from cones2.errors import TokenLocationError
from cones2.residual import apply_residuals, locate_word

REPO = Path(__file__).resolve().parent.parent


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args))


# --------------------------------------------------------------------------- the true cause


def test_a_word_missing_from_a_short_prompt_is_not_called_cut_off(demo_text_encoder) -> None:
    tokenizer, _ = demo_text_encoder
    with pytest.raises(TokenLocationError) as exc:
        locate_word(tokenizer, "a cat", "dog")
    assert str(exc.value) == "subject word 'dog' does not occur in prompt 'a cat'"
    # unpadded ids (every unpadded tokenisation ends in EOS) are not a full row either
    ids = torch.tensor(tokenizer(["a cat"]).input_ids)
    with pytest.raises(TokenLocationError) as exc:
        apply_residuals(torch.zeros(1, ids.shape[1], 32), ids, {"dog": torch.ones(1, 32)}, tokenizer=tokenizer)
    assert "does not occur" in str(exc.value) and "limit" not in str(exc.value)
    # a prompt that really is cut off still says so
    with pytest.raises(TokenLocationError, match="fills the 77-token limit: it may be cut off"):
        locate_word(tokenizer, " ".join(["a"] * 80), "dog")


def test_layout_preview_and_generate_name_a_missing_word(tmp_path) -> None:
    preview = _invoke("layout", "preview", "--box", "dog=0.1,0.1,0.5,0.5", "--prompt", "a cat", "-o", str(tmp_path / "l.png"))
    assert preview.exit_code == 6, preview.output
    assert "'dog' does not occur in prompt 'a cat'" in preview.output
    assert "limit" not in preview.output and "cut off" not in preview.output
    generate = _invoke("generate", "a cat on the beach", "--box", "dog=0.1,0.1,0.5,0.5", "--steps", "1",
                       "-o", str(tmp_path / "g.png"))
    assert generate.exit_code in (4, 6), generate.output
    assert "'dog' does not occur in prompt 'a cat on the beach'" in generate.output
    assert "limit" not in generate.output and "cut off" not in generate.output
    assert not (tmp_path / "g.png").exists()


# --------------------------------------------------------------------------- no writes outside


def test_fingerprint_cache_keeps_one_entry_per_existing_folder(demo_model_dir, tmp_path, cones2_home) -> None:
    import shutil

    from cones2.base_model import fingerprint

    copies = [shutil.copytree(demo_model_dir, tmp_path / f"copy{i}") for i in range(3)]
    for folder in copies:
        fingerprint(folder)
    cache_file = cones2_home / "cache" / "fingerprints.json"
    assert len(json.loads(cache_file.read_text())) == 3
    shutil.rmtree(copies[0])
    shutil.rmtree(copies[1])
    (copies[2] / "text_encoder" / "config.json").touch()  # changed: recomputed, still one entry
    fingerprint(copies[2])
    fingerprint(demo_model_dir)
    assert set(json.loads(cache_file.read_text())) == {str(copies[2].resolve()), str(demo_model_dir.resolve())}


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_nothing_is_written_outside_cones2_home_and_tmp(tmp_path) -> None:
    """Tests with session/module fixtures and key commands, in a subprocess whose HOME and
    XDG folders are empty and read-only: they must stay empty."""
    outside = {name: tmp_path / name for name in ("home", "data", "cache", "config")}
    for folder in outside.values():
        folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONES2_", "HF_", "XDG_"))}
    env.update(
        HOME=str(outside["home"]), XDG_DATA_HOME=str(outside["data"]), XDG_CACHE_HOME=str(outside["cache"]),
        XDG_CONFIG_HOME=str(outside["config"]), TMPDIR=str(tmp_path), PYTHONDONTWRITEBYTECODE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    for folder in outside.values():
        folder.chmod(0o555)  # root may still write: emptiness is what is checked
    try:
        tests = [
            f"{REPO}/tests/test_registry_cli.py::test_read_only_home",  # module fixture: fingerprints
            f"{REPO}/tests/test_registry_catalogue.py::test_add_records_everything[sqlite]",  # session fixture
            f"{REPO}/tests/test_fingerprint.py::test_fingerprint_is_stable_and_cached",
        ]
        run = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--basetemp={tmp_path / 'inner'}",
             f"--rootdir={REPO}", *tests],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
        )
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert "3 passed" in run.stdout
        # key commands, with an explicit home (the demo model is built there on first use)
        home = tmp_path / "cones2-home"
        cli = [sys.executable, "-m", "cones2", "--home", str(home)]
        for args in (["quickstart", "--out", str(tmp_path / "qs"), "--no-render"], ["list"], ["base-model", "info"]):
            done = subprocess.run(cli + args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr
    finally:
        for folder in outside.values():
            folder.chmod(0o755)
    assert {name: _tree(folder) for name, folder in outside.items()} == {name: [] for name in outside}


# --------------------------------------------------------------------------- quiet


def _quiet_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRANSFORMERS_", "DIFFUSERS_", "HF_HUB_DISABLE_PROGRESS"))}
    return {**env, **extra}


def test_library_import_and_demo_model_build_print_nothing(tmp_path) -> None:
    code = (
        "import sys\n"
        "import cones2.sampler.pipeline\n"
        "from cones2.base_model import load_text_encoder\n"
        "from cones2.demo_model import build_demo_model\n"
        "load_text_encoder(build_demo_model(sys.argv[1]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "demo")], env=_quiet_env(),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "" and done.stdout == ""


def test_first_add_in_a_fresh_home_shows_no_shard_bar(tmp_path, demo_model_dir, demo_text_encoder) -> None:
    from cones2.base_model import model_info
    from cones2.residual import word_token_ids
    from cones2.residual_file import make_residual

    fp = model_info(str(demo_model_dir)).fingerprint
    path = make_residual(torch.ones(1, 32), "dog", word_token_ids(demo_text_encoder[0], "dog"), fp).save(tmp_path / "d.safetensors")
    env = _quiet_env(CONES2_HOME=str(tmp_path / "fresh-home"))
    env.pop("CONES2_BASE_MODEL")  # the demo model is built on first use, in the home
    done = subprocess.run([sys.executable, "-m", "cones2", "add", str(path), "--name", "dog-max"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Added dog-max@1")
    assert done.stderr == ""
    assert (tmp_path / "fresh-home" / "models").is_dir()


# --------------------------------------------------------------------------- exit codes, tags, labels


def test_adding_a_missing_file_is_not_found(tmp_path) -> None:
    for name in ("missing.safetensors", "missing.pt"):
        result = _invoke("add", str(tmp_path / name), "--name", "dog-max", "--word", "dog")
        assert result.exit_code == 8, result.output
        assert result.output.strip() == f"Error: {tmp_path / name}: no such file"


def test_push_with_a_label_tag_shows_it_locally(hub_server, monkeypatch, tmp_path, demo_model_dir) -> None:
    from _hub_helpers import add_local, fingerprint, new_namespace

    from cones2.registry.hub import add_remote

    monkeypatch.setenv("HF_TOKEN", "dummy")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    add_remote("team", new_namespace(), hub_server.endpoint, default=True)
    add_local("dog-max", fingerprint(demo_model_dir))
    pushed = _invoke("push", "dog-max", "--tag", "stable")
    assert pushed.exit_code == 0, pushed.output
    shown = _invoke("show", "dog-max", "--json")
    assert json.loads(shown.stdout)["tags"] == {"stable": 1}
    assert "stable->1" in _invoke("show", "dog-max:stable").output


def test_base_model_is_labelled_the_same_by_quickstart_and_add(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("CONES2_BASE_MODEL")  # nothing configured: the demo model, built in the home
    quick = _invoke("quickstart", "--out", str(tmp_path / "qs"), "--no-render")
    assert quick.exit_code == 0, quick.output
    added = _invoke("add", str(tmp_path / "qs" / "dog-max.safetensors"), "--name", "other-dog")
    assert added.exit_code == 0, added.output
    for ref in ("dog-max", "other-dog"):
        data = json.loads(_invoke("show", ref, "--json").stdout)
        assert data["version"]["base_model"] == "demo"
        assert data["base_models"] == ["demo"]
        assert "(demo)" in _invoke("show", ref).output


# --------------------------------------------------------------------------- help and --json


def _walk(command, path=("cones2",)):
    import click

    yield path, command
    if isinstance(command, click.Group):
        for name, sub in sorted(command.commands.items()):
            yield from _walk(sub, (*path, name))


def test_every_option_of_every_command_has_help() -> None:
    import click

    missing = [
        f"{' '.join(path)} {param.opts[0]}"
        for path, command in _walk(main)
        for param in command.params
        if isinstance(param, click.Option) and not param.hidden and not (param.help or "").strip()
    ]
    assert missing == []


def test_command_summaries_are_whole_sentences() -> None:
    import click

    from cones2.cli import summary

    for path, command in _walk(main):
        if len(path) == 1:
            continue
        short = command.get_short_help_str()
        assert short == summary(command.help), path  # the whole first paragraph, not cut at 45 characters
        assert short.endswith(".") and short[0].isupper() and "..." not in short, (path, short)
    for group_path, group in _walk(main):
        if not isinstance(group, click.Group):
            continue
        text = CliRunner().invoke(main, [*group_path[1:], "--help"], terminal_width=80).output
        listed = " ".join(text.split("Commands:", 1)[1].split())
        assert "..." not in listed
        for name, sub in group.commands.items():
            assert f"{name} {sub.get_short_help_str()}" in listed, (group_path, name)


def test_global_json_flag_works_like_the_command_flag(tmp_path) -> None:
    from _hub_helpers import add_local, fingerprint

    from cones2.config import load_config

    add_local("dog-max", fingerprint(load_config().base_model))
    for args in (["--json", "list"], ["list", "--json"]):
        result = _invoke(*args)
        assert result.exit_code == 0, result.output
        assert [s["name"] for s in json.loads(result.stdout)] == ["dog-max"]
    shown = _invoke("--json", "show", "dog-max")
    assert json.loads(shown.stdout)["ref"] == "dog-max@1"
    assert not _invoke("list").output.lstrip().startswith("[")  # without it: text for people


# --------------------------------------------------------------------------- labelled output


def test_generate_output_is_labelled(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from cones2.sampler.attention_maps import (
        CAPTION_HEIGHT,
        COLOUR_BAR_WIDTH,
        SCALE_WIDTH,
        _colormap,
    )

    maps = tmp_path / "maps"
    args = ["generate", "a dog and a mug", "--box", "dog=0.05,0.3,0.5,0.95", "--box", "mug=0.55,0.5,0.95,0.95",
            "--steps", "1", "-o", str(tmp_path / "out.png"), "--attention-maps", str(maps)]
    result = _invoke(*args, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["layout_preview"] == str(maps / "layout.png")
    assert str(maps / "layout.png") not in data["attention_maps"]
    human = _invoke(*args)
    assert f"layout preview {maps / 'layout.png'}" in human.output
    assert "attention map" in human.output and f"attention map {maps / 'layout.png'}" not in human.output

    # a heat map carries its colour scale: the ramp from the max (top) to the min (bottom)
    heat = np.asarray(Image.open(maps / "out-0-attention-dog.png").convert("RGB")).astype(int)
    side = 256  # the 64 px demo image, enlarged for viewing
    assert heat.shape[:2] == (side, side + SCALE_WIDTH)
    bar = heat[:, side + 2 : side + 2 + COLOUR_BAR_WIDTH]
    assert np.abs(bar[0, 0] - _colormap(np.array(1.0))).max() <= 2
    assert np.abs(bar[-1, 0] - _colormap(np.array(0.0))).max() <= 2
    assert (heat[:, side + 2 + COLOUR_BAR_WIDTH :] < 128).any()  # the two values are written beside it

    # every panel of the strip has a caption: dark text in the band under each panel
    strip = np.asarray(Image.open(maps / "out-0-attention.png").convert("L")).astype(int)
    assert strip.shape[0] == side + CAPTION_HEIGHT
    band = strip[side:]
    starts = [0, side + 4, 2 * (side + 4), 3 * (side + 4) + SCALE_WIDTH]  # layout, image, dog, mug
    for x in starts:
        assert (band[:, x : x + 60] < 128).any(), x


def test_layout_preview_says_what_its_numbers_are() -> None:
    from cones2.sampler import Layout
    from cones2.sampler.preview import region_label

    layout = Layout.from_boxes({"dog": (0.1, 0.1, 0.5, 0.5)}).with_weights({"dog": 3.0})
    assert region_label(layout.regions[0]) == "dog: inside +3"
    assert region_label(Layout.from_boxes({"dog": (0.1, 0.1, 0.5, 0.5)}).regions[0]) == "dog: inside +2.5"
