"""Base-model fingerprint: stable across round trips and processes, sensitive to what matters."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cones2.base_model import compute_fingerprint, fingerprint, model_info
from cones2.errors import BaseModelError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_fingerprint_is_stable_and_cached(demo_model_dir: Path, tmp_path: Path) -> None:
    first = fingerprint(demo_model_dir)
    assert len(first) == 64 and int(first, 16) >= 0
    assert compute_fingerprint(demo_model_dir) == first
    cache = json.loads((tmp_path / "cones2-home" / "cache" / "fingerprints.json").read_text())
    assert cache[str(demo_model_dir.resolve())]["fingerprint"] == first
    # A second call hits the cache: much faster than hashing the weights.
    t0 = time.perf_counter()
    assert fingerprint(demo_model_dir) == first
    assert time.perf_counter() - t0 < 0.05


def test_fingerprint_same_in_another_process(demo_model_dir: Path) -> None:
    code = "import sys; from cones2.base_model import compute_fingerprint; print(compute_fingerprint(sys.argv[1]))"
    out = subprocess.run([sys.executable, "-c", code, str(demo_model_dir)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == compute_fingerprint(demo_model_dir)


def test_fingerprint_survives_save_load_round_trip(demo_model_dir: Path, tmp_path: Path) -> None:
    from transformers import CLIPTextModel, CLIPTokenizer

    dst = _copy(demo_model_dir, tmp_path / "copy")
    encoder = CLIPTextModel.from_pretrained(demo_model_dir / "text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(demo_model_dir / "tokenizer")
    shutil.rmtree(dst / "text_encoder")
    shutil.rmtree(dst / "tokenizer")
    encoder.save_pretrained(dst / "text_encoder")
    tokenizer.save_pretrained(dst / "tokenizer")
    assert compute_fingerprint(dst) == compute_fingerprint(demo_model_dir)


def test_fingerprint_independent_of_sharding_bin_and_legacy_prefix(demo_model_dir: Path, tmp_path: Path) -> None:
    reference = compute_fingerprint(demo_model_dir)
    state = load_file(demo_model_dir / "text_encoder" / "model.safetensors")
    names = sorted(state)
    # Sharded safetensors with the legacy "text_model." prefix and a position_ids buffer.
    sharded = _copy(demo_model_dir, tmp_path / "sharded")
    (sharded / "text_encoder" / "model.safetensors").unlink()
    half = len(names) // 2
    for i, part in enumerate((names[:half], names[half:])):
        shard = {f"text_model.{n}": state[n].clone() for n in part}
        if i == 0:
            shard["text_model.embeddings.position_ids"] = torch.arange(77)[None]
        save_file(shard, sharded / "text_encoder" / f"model-0000{i + 1}-of-00002.safetensors")
    assert compute_fingerprint(sharded) == reference
    # Legacy pickle-free torch .bin.
    legacy = _copy(demo_model_dir, tmp_path / "legacy")
    (legacy / "text_encoder" / "model.safetensors").unlink()
    torch.save({f"text_model.{n}": t for n, t in state.items()}, legacy / "text_encoder" / "pytorch_model.bin")
    assert compute_fingerprint(legacy) == reference
    # vocab.json + merges.txt instead of tokenizer.json
    from cones2.demo_model import tokenizer_files

    split = _copy(demo_model_dir, tmp_path / "split")
    (split / "tokenizer" / "tokenizer.json").unlink()
    for name, src in tokenizer_files().items():
        shutil.copyfile(src, split / "tokenizer" / name)
    assert compute_fingerprint(split) == reference


def test_fingerprint_changes_with_any_weight_or_vocab(demo_model_dir: Path, tmp_path: Path) -> None:
    reference = compute_fingerprint(demo_model_dir)
    weights = _copy(demo_model_dir, tmp_path / "w")
    path = weights / "text_encoder" / "model.safetensors"
    state = load_file(path)
    name = sorted(state)[len(state) // 2]
    state[name] = state[name].clone()
    state[name].view(-1)[0] += 1e-3
    save_file(state, path)
    assert compute_fingerprint(weights) != reference

    vocab = _copy(demo_model_dir, tmp_path / "v")
    tok = json.loads((vocab / "tokenizer" / "tokenizer.json").read_text())
    v = tok["model"]["vocab"]
    a, b = "dog</w>", "cat</w>"
    v[a], v[b] = v[b], v[a]
    (vocab / "tokenizer" / "tokenizer.json").write_text(json.dumps(tok))
    assert compute_fingerprint(vocab) != reference


def test_fingerprint_differs_between_seeds(tmp_path: Path, demo_model_dir: Path) -> None:
    from cones2.demo_model import build_demo_model

    other = build_demo_model(tmp_path / "seed1", seed=1)
    same = build_demo_model(tmp_path / "seed0", seed=0)
    assert compute_fingerprint(other) != compute_fingerprint(demo_model_dir)
    assert compute_fingerprint(same) == compute_fingerprint(demo_model_dir)


def test_model_info(demo_model_dir: Path) -> None:
    info = model_info(str(demo_model_dir))
    assert info.hidden_size == 32
    assert info.vocab_size == 845
    assert info.max_length == 77
    assert info.is_demo
    # None falls back to the configured base model (CONES2_BASE_MODEL in tests).
    assert model_info(None).fingerprint == info.fingerprint


def test_not_a_model_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="not a Stable Diffusion folder"):
        model_info(str(tmp_path / "empty"))
    with pytest.raises(BaseModelError, match="not a model folder"):
        model_info(str(tmp_path / "missing" / "deeper" / "x"))


@pytest.mark.parametrize(
    "file, content, message",
    [
        ("tokenizer/tokenizer_config.json", "{bad", "tokenizer_config.json: missing or unreadable"),
        ("tokenizer/tokenizer.json", "[1]", "no BPE model with a vocabulary"),
        ("text_encoder/config.json", "{}", "no valid hidden_size"),
    ],
)
def test_malformed_model_files_are_one_line_errors(demo_model_dir: Path, tmp_path: Path, file, content, message) -> None:
    folder = tmp_path / "model"
    shutil.copytree(demo_model_dir, folder)
    (folder / file).write_text(content)
    with pytest.raises(BaseModelError, match=message):
        model_info(str(folder))
