"""compute_residual / apply_residuals (METHOD.md sections 1-2) and automatic token location."""

from __future__ import annotations

import copy

import pytest
import torch

from cones2.errors import TokenLocationError
from cones2.residual import (
    TEMPLATES,
    SubjectKey,
    apply_residuals,
    compute_residual,
    locate_word,
    word_token_ids,
)
from cones2.residual_file import make_residual


@pytest.fixture(scope="module")
def tok_enc(demo_text_encoder):
    return demo_text_encoder


def _ids(tokenizer, prompts):
    return tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


class ShiftedEncoder(torch.nn.Module):
    """Base encoder whose output is moved by ``shift`` wherever ``word_ids`` appear in sequence."""

    def __init__(self, base, word_ids, shift):
        super().__init__()
        self.base, self.word_ids, self.shift = base, list(word_ids), shift

    def forward(self, input_ids):
        out = self.base(input_ids)[0].clone()
        n = len(self.word_ids)
        for b, row in enumerate(input_ids.tolist()):
            for i in range(len(row) - n + 1):
                if row[i : i + n] == self.word_ids:
                    out[b, i : i + n] += self.shift
                    break
        return (out,)


def test_templates_are_many_and_have_one_slot() -> None:
    assert len(TEMPLATES) >= 30
    assert all(t.count("{}") == 1 for t in TEMPLATES)


def test_residual_of_encoder_against_itself_is_exactly_zero(tok_enc) -> None:
    tokenizer, encoder = tok_enc
    r = compute_residual(encoder, encoder, tokenizer, "dog")
    assert r.shape == (1, 32)
    assert torch.count_nonzero(r) == 0


@pytest.mark.parametrize("word", ["dog", "teapot"])
def test_residual_recovers_known_shift(tok_enc, word: str) -> None:
    tokenizer, encoder = tok_enc
    ids = word_token_ids(tokenizer, word)
    shift = torch.randn(len(ids), 32, generator=torch.Generator().manual_seed(3))
    tuned = ShiftedEncoder(encoder, ids, shift)
    r = compute_residual(encoder, tuned, tokenizer, word, batch_size=7)
    assert r.shape == (len(ids), 32)
    assert (r - shift).abs().max() <= 1e-6


def test_residual_of_a_really_changed_encoder_is_nonzero(tok_enc) -> None:
    tokenizer, encoder = tok_enc
    tuned = copy.deepcopy(encoder)
    with torch.no_grad():
        tuned.get_input_embeddings().weight[word_token_ids(tokenizer, "dog")] += torch.randn(32)  # not a constant: LayerNorm would erase it
    r = compute_residual(encoder, tuned, tokenizer, "dog", templates=TEMPLATES[:4])
    assert r.abs().max() > 1e-3


def test_apply_changes_only_subject_positions(tok_enc) -> None:
    tokenizer, encoder = tok_enc
    prompts = ["a dog and a mug on the beach", "a photo of a mug with my dog"]
    ids = _ids(tokenizer, prompts)
    with torch.no_grad():
        base = encoder(ids)[0]
    dog = torch.randn(1, 32)
    mug = make_residual(torch.randn(1, 32), "mug", word_token_ids(tokenizer, "mug"), "ab" * 32)
    out = apply_residuals(base, ids, {"dog": dog, "mug": mug}, tokenizer=tokenizer)
    assert out is not base and torch.equal(base, encoder(ids)[0].detach())
    changed = (out - base).abs().sum(-1) > 0
    dog_pos = [locate_word(tokenizer, p, "dog") for p in prompts]
    mug_pos = [locate_word(tokenizer, p, "mug") for p in prompts]
    assert dog_pos == [[2], [8]] and mug_pos == [[5], [5]]
    for b in range(2):
        assert changed[b].nonzero().flatten().tolist() == sorted(dog_pos[b] + mug_pos[b])
        assert torch.allclose(out[b, dog_pos[b][0]] - base[b, dog_pos[b][0]], dog[0], atol=1e-6)
        assert torch.allclose(out[b, mug_pos[b][0]] - base[b, mug_pos[b][0]], mug.as_torch()[0], atol=1e-6)


def test_apply_multi_token_word_and_tuple_form(tok_enc) -> None:
    tokenizer, _ = tok_enc
    ids_word = word_token_ids(tokenizer, "teapot")
    assert len(ids_word) > 1
    ids = _ids(tokenizer, ["a red teapot on the table"])
    base = torch.zeros(1, 77, 32)
    delta = torch.arange(len(ids_word) * 32, dtype=torch.float32).reshape(len(ids_word), 32)
    out = apply_residuals(base, ids, {"teapot": (delta, ids_word)})
    pos = locate_word(tokenizer, "a red teapot on the table", "teapot")
    assert pos == list(range(3, 3 + len(ids_word)))
    assert torch.equal(out[0, pos], delta)
    assert out[0].abs().sum() == delta.abs().sum()


@pytest.mark.parametrize(
    ("prompt", "word", "expected"),
    [
        ("a photo of a dog", "dog", [5]),
        ("A DOG on the beach", "dog", [2]),
        ("a photo of a Dog", "DOG", [5]),
        ("my dog, a mug and a cat.", "dog", [2]),
        ("(dog) on the grass", "dog", [2]),
        ("a cat next to a dog!", "dog", [6]),
    ],
)
def test_locate_word_cases_and_punctuation(tok_enc, prompt: str, word: str, expected: list[int]) -> None:
    tokenizer, _ = tok_enc
    assert locate_word(tokenizer, prompt, word) == expected


def test_locate_respects_word_boundaries(tok_enc) -> None:
    tokenizer, _ = tok_enc
    # "pot" is a suffix of "teapot"'s tokens but not a word of this prompt.
    assert tokenizer.convert_ids_to_tokens(word_token_ids(tokenizer, "pot"))[-1].endswith("</w>")
    with pytest.raises(TokenLocationError, match="does not occur"):
        locate_word(tokenizer, "a teapot", "pot")


def test_choose_occurrence(tok_enc) -> None:
    tokenizer, _ = tok_enc
    prompt = "a dog and a dog on the beach"
    assert locate_word(tokenizer, prompt, "dog") == [2]
    assert locate_word(tokenizer, prompt, "dog", occurrence=2) == [5]
    with pytest.raises(TokenLocationError, match="only 2 occurrence"):
        locate_word(tokenizer, prompt, "dog", occurrence=3)
    ids = _ids(tokenizer, [prompt])
    out = apply_residuals(torch.zeros(1, 77, 32), ids, {"dog": torch.ones(1, 32), "dog#2": 2 * torch.ones(1, 32)}, tokenizer=tokenizer)
    assert out[0, 2, 0] == 1 and out[0, 5, 0] == 2
    assert SubjectKey.parse("dog#2") == SubjectKey("dog", 2)
    for bad in ("dog#0", "dog#x", "dog#²", "#2", ""):
        with pytest.raises(TokenLocationError):
            SubjectKey.parse(bad)


def test_missing_word_is_an_error(tok_enc) -> None:
    tokenizer, _ = tok_enc
    with pytest.raises(TokenLocationError, match="subject word 'cat' does not occur in prompt 'a dog'"):
        locate_word(tokenizer, "a dog", "cat")
    ids = _ids(tokenizer, ["a dog", "a cat"])
    with pytest.raises(TokenLocationError, match="'dog' does not occur"):
        apply_residuals(torch.zeros(2, 77, 32), ids, {"dog": torch.ones(1, 32)}, tokenizer=tokenizer)


def test_word_cut_off_by_token_limit(tok_enc) -> None:
    tokenizer, _ = tok_enc
    filler = " ".join(["a"] * 74)
    prompt = f"{filler} red teapot"
    with pytest.raises(TokenLocationError, match="cut off by the 77-token limit"):
        locate_word(tokenizer, prompt, "teapot")
    long_prompt = " ".join(["a"] * 80) + " dog"
    with pytest.raises(TokenLocationError, match="cut off by the 77-token limit"):
        locate_word(tokenizer, long_prompt, "dog")
    # Without the prompt text, a partial match at the end of a full row is still caught.
    ids = _ids(tokenizer, [" ".join(["a"] * 72) + " red teapot"])
    with pytest.raises(TokenLocationError, match="cut off by the 77-token limit"):
        apply_residuals(torch.zeros(1, 77, 32), ids, {"teapot": torch.ones(len(word_token_ids(tokenizer, "teapot")), 32)}, tokenizer=tokenizer)
    ids = _ids(tokenizer, [prompt])
    with pytest.raises(TokenLocationError, match="fills the 77-token limit"):
        apply_residuals(torch.zeros(1, 77, 32), ids, {"teapot": torch.ones(len(word_token_ids(tokenizer, "teapot")), 32)}, tokenizer=tokenizer)


def test_two_subjects_claiming_the_same_tokens(tok_enc) -> None:
    tokenizer, _ = tok_enc
    ids = _ids(tokenizer, ["a dog on the beach"])
    with pytest.raises(TokenLocationError, match="claim the same token"):
        apply_residuals(torch.zeros(1, 77, 32), ids, {"dog": torch.ones(1, 32), "dog#1": torch.ones(1, 32)}, tokenizer=tokenizer)


def test_shape_mismatches(tok_enc) -> None:
    tokenizer, _ = tok_enc
    ids = _ids(tokenizer, ["a dog"])
    with pytest.raises(TokenLocationError, match="does not fit 1 token"):
        apply_residuals(torch.zeros(1, 77, 32), ids, {"dog": torch.ones(1, 16)}, tokenizer=tokenizer)
    with pytest.raises(TokenLocationError, match="do not match"):
        apply_residuals(torch.zeros(2, 77, 32), ids, {"dog": torch.ones(1, 32)}, tokenizer=tokenizer)
    with pytest.raises(TokenLocationError, match="needs the tokenizer"):
        apply_residuals(torch.zeros(1, 77, 32), ids, {"dog": torch.ones(1, 32)})
