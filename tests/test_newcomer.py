"""A newcomer's first hour (issue 9): true causes in errors, quiet output, labels, exit codes."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from cones2.cli import main
from cones2.errors import TokenLocationError
from cones2.residual import apply_residuals, locate_word


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
