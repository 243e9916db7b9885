"""The residual maths of Cones 2 (METHOD.md sections 1 and 2) and token location.

* :func:`compute_residual` – mean over prompt templates of ``E_tuned - E_base`` at the
  subject word's tokens.
* :func:`apply_residuals` – add each subject's residual to prompt embeddings at the
  positions of its word in that prompt.

Token positions are found from the tokenizer, never given by hand: the word's token
sequence is searched in the tokenized prompt at word boundaries (so ``pot`` does not
match inside ``teapot``). A subject key ``"dog#2"`` picks the second occurrence of
``dog``; a bare ``"dog"`` takes the first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import TokenLocationError

if TYPE_CHECKING:  # pragma: no cover
    import torch


# Prompt templates the residual is averaged over: varied framing, style and article so
# the mean keeps what is specific to the subject and averages context away.
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
    "a painting of a {}",
    "a {} in the garden",
    "a {} on the street",
)

# Named template sets: "reference" is the reference implementation's 27 templates (the
# first 27 above, in its order; the default), "extended" all 30.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {"reference": TEMPLATES[:27], "extended": TEMPLATES}
DEFAULT_TEMPLATE_SET = "reference"


def template_set(templates: str | Sequence[str]) -> tuple[str, ...]:
    """The templates of a named set, or the given templates themselves."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            from .errors import UsageError

            raise UsageError(f"unknown template set {templates!r} (one of {', '.join(TEMPLATE_SETS)})")
        return TEMPLATE_SETS[templates]
    return tuple(templates)


@dataclass(frozen=True)
class SubjectKey:
    """A subject word and which of its occurrences in the prompt it binds to (1-based)."""

    word: str
    occurrence: int | None = None

    @classmethod
    def parse(cls, key: str) -> SubjectKey:
        word, sep, nth = key.strip().partition("#")
        word = word.strip()
        if not word:
            raise TokenLocationError(f"empty subject word in {key!r}")
        if not sep:
            return cls(word)
        if not (nth.isascii() and nth.isdigit()) or int(nth) < 1:  # isdigit() alone accepts "²"
            raise TokenLocationError(f"bad occurrence in {key!r}: use WORD#N with N >= 1")
        return cls(word, int(nth))

    def __str__(self) -> str:
        return self.word if self.occurrence is None else f"{self.word}#{self.occurrence}"


def word_token_ids(tokenizer: Any, word: str) -> list[int]:
    """The token ids of ``word`` alone, without BOS/EOS."""
    ids = list(tokenizer(word, add_special_tokens=False).input_ids)
    if not ids:
        raise TokenLocationError(f"subject word {word!r} tokenizes to nothing")
    return ids


def _is_word_level(tokenizer: Any) -> bool:
    """True for a fast tokenizer whose model is word level (the world model's)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return backend is not None and type(backend.model).__name__ == "WordLevel"


def _word_starts(tokenizer: Any | None, ids: Sequence[int]) -> list[bool]:
    """For each position, whether a word may start there (previous token ends a word)."""
    if tokenizer is None:
        return [True] * len(ids)
    if _is_word_level(tokenizer):
        return [True] * len(ids)  # every token is a whole word
    tokens = tokenizer.convert_ids_to_tokens(list(ids))
    special = set(getattr(tokenizer, "all_special_ids", []))
    starts = [True]
    for prev_id, prev in zip(ids, tokens, strict=False):
        starts.append(prev_id in special or str(prev).endswith("</w>"))
    return starts[: len(ids)]


def find_occurrences(ids: Sequence[int], pattern: Sequence[int], tokenizer: Any | None = None) -> list[int]:
    """Start positions of ``pattern`` in ``ids`` (at word boundaries when a tokenizer is given)."""
    ids, pattern = list(ids), list(pattern)
    n = len(pattern)
    starts = _word_starts(tokenizer, ids)
    return [i for i in range(len(ids) - n + 1) if ids[i : i + n] == pattern and starts[i]]


def _is_full(row: Sequence[int], eos_id: int | None, limit: int | None) -> bool:
    """A row of ``limit`` tokens whose one EOS is its last token was filled to the limit (maybe cut).

    Every unpadded tokenisation ends in EOS, so the length decides: a shorter row is whole.
    """
    return (
        eos_id is not None and limit is not None and len(row) >= limit
        and row[-1] == eos_id and row.count(eos_id) == 1
    )


def locate_in_ids(
    row: Sequence[int],
    word_ids: Sequence[int],
    key: SubjectKey,
    *,
    tokenizer: Any | None = None,
    prompt: str | None = None,
) -> list[int]:
    """Positions of the chosen occurrence of a word in one tokenized prompt."""
    row = [int(t) for t in row]
    found = find_occurrences(row, word_ids, tokenizer)
    wanted = key.occurrence or 1
    where = f"prompt {prompt!r}" if prompt is not None else "the prompt"
    if len(found) >= wanted:
        start = found[wanted - 1]
        return list(range(start, start + len(word_ids)))
    eos_id = getattr(tokenizer, "eos_token_id", None)
    limit = getattr(tokenizer, "model_max_length", None)
    limit = limit if isinstance(limit, int) and limit < 100_000 else None
    if tokenizer is not None and prompt is not None:
        full = list(tokenizer(prompt, add_special_tokens=True, truncation=False).input_ids)
        if len(find_occurrences(full, word_ids, tokenizer)) >= wanted:
            raise TokenLocationError(f"subject {str(key)!r} is cut off by the {limit or len(row)}-token limit in {where}")
        truncated = limit is not None and len(full) > limit
    elif _is_full(row, eos_id, limit):
        content = row[:-1]
        for cut in range(len(word_ids) - 1, 0, -1):
            if content[-cut:] == list(word_ids[:cut]):
                raise TokenLocationError(f"subject {str(key)!r} is cut off by the {len(row)}-token limit in {where}")
    if found:
        raise TokenLocationError(f"subject {str(key)!r}: {where} has only {len(found)} occurrence(s) of {key.word!r}")
    if tokenizer is None or prompt is None:
        truncated = _is_full(row, eos_id, limit)
    if truncated:
        raise TokenLocationError(
            f"subject word {key.word!r} does not occur in {where}, which fills the {len(row)}-token limit: it may be cut off"
        )
    raise TokenLocationError(f"subject word {key.word!r} does not occur in {where}")


def locate_word(tokenizer: Any, prompt: str, word: str, occurrence: int | None = None) -> list[int]:
    """Token positions of ``word`` in ``prompt`` as the text encoder will see it (BOS included)."""
    key = SubjectKey(word, occurrence)
    max_length = getattr(tokenizer, "model_max_length", 77)
    row = tokenizer(prompt, truncation=True, max_length=max_length).input_ids
    return locate_in_ids(row, word_token_ids(tokenizer, word), key, tokenizer=tokenizer, prompt=prompt)


def _as_tensor_and_ids(value: Any, word: str, tokenizer: Any | None) -> tuple[torch.Tensor, list[int]]:
    import torch

    from .residual_file import ResidualFile

    if isinstance(value, ResidualFile):
        return value.as_torch(), list(value.token_ids)
    if isinstance(value, tuple) and len(value) == 2:
        tensor, ids = value
        return torch.as_tensor(tensor), [int(i) for i in ids]
    if tokenizer is None:
        raise TokenLocationError(f"subject {word!r}: a bare tensor needs the tokenizer to find its tokens")
    return torch.as_tensor(value), word_token_ids(tokenizer, word)


def subject_positions(
    input_ids: torch.Tensor | Sequence[Sequence[int]],
    subjects: Mapping[str, Sequence[int]],
    *,
    tokenizer: Any | None = None,
    prompts: Sequence[str] | None = None,
) -> list[dict[str, list[int]]]:
    """For every prompt row, the token positions of every subject key; overlaps refused."""
    rows = input_ids.tolist() if hasattr(input_ids, "tolist") else [list(r) for r in input_ids]
    result: list[dict[str, list[int]]] = []
    for b, row in enumerate(rows):
        claimed: dict[int, str] = {}
        per_row: dict[str, list[int]] = {}
        for raw_key, word_ids in subjects.items():
            key = SubjectKey.parse(raw_key)
            prompt = prompts[b] if prompts is not None and b < len(prompts) else None
            positions = locate_in_ids(row, word_ids, key, tokenizer=tokenizer, prompt=prompt)
            for p in positions:
                if p in claimed:
                    raise TokenLocationError(
                        f"subjects {claimed[p]!r} and {raw_key!r} claim the same token (position {p})"
                    )
                claimed[p] = raw_key
            per_row[raw_key] = positions
        result.append(per_row)
    return result


def apply_residuals(
    prompt_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    residuals: Mapping[str, Any],
    *,
    tokenizer: Any | None = None,
    prompts: Sequence[str] | None = None,
    scale: float = 1.0,
) -> torch.Tensor:
    """Add each subject's residual at its word's tokens; returns a new tensor.

    ``residuals`` maps a subject key (``"dog"`` or ``"dog#2"``) to a
    :class:`~cones2.residual_file.ResidualFile`, a ``(tensor, token_ids)`` pair, or a bare
    tensor (then ``tokenizer`` finds the word's tokens). ``prompt_embeds`` is
    ``(batch, tokens, hidden)`` and ``input_ids`` ``(batch, tokens)``; every row must
    contain every subject. Nothing but the subject positions changes.
    """
    if prompt_embeds.ndim != 3 or input_ids.ndim != 2 or prompt_embeds.shape[:2] != input_ids.shape:
        raise TokenLocationError(
            f"prompt_embeds {tuple(prompt_embeds.shape)} and input_ids {tuple(input_ids.shape)} do not match"
        )
    hidden = prompt_embeds.shape[-1]
    tensors: dict[str, torch.Tensor] = {}
    ids_by_key: dict[str, list[int]] = {}
    for key, value in residuals.items():
        word = SubjectKey.parse(key).word
        tensor, ids = _as_tensor_and_ids(value, word, tokenizer)
        if tensor.ndim == 1:
            tensor = tensor[None, :]
        if tensor.shape != (len(ids), hidden):
            raise TokenLocationError(
                f"subject {key!r}: residual shape {tuple(tensor.shape)} does not fit {len(ids)} token(s) x hidden size {hidden}"
            )
        tensors[key] = tensor
        ids_by_key[key] = ids
    positions = subject_positions(input_ids, ids_by_key, tokenizer=tokenizer, prompts=prompts)
    out = prompt_embeds.clone()
    for b, per_row in enumerate(positions):
        for key, pos in per_row.items():
            delta = tensors[key].to(device=out.device, dtype=out.dtype)
            out[b, pos] = out[b, pos] + scale * delta
    return out


def encode(encoder: Any, input_ids: torch.Tensor) -> torch.Tensor:
    """Last hidden state of a CLIP text encoder, as Stable Diffusion conditions on it."""
    return encoder(input_ids)[0]


def compute_residual(
    base_encoder: Any,
    tuned_encoder: Any,
    tokenizer: Any,
    word: str,
    templates: str | Sequence[str] = DEFAULT_TEMPLATE_SET,
    batch_size: int = 16,
) -> torch.Tensor:
    """Mean over ``templates`` of ``tuned(t)[word tokens] - base(t)[word tokens]``.

    ``templates``: a set name (``"reference"``, the default: the reference's 27;
    ``"extended"``: 30) or the templates themselves. Returns a float32 tensor of shape
    ``(tokens of word, hidden size)``.
    """
    import torch

    templates = template_set(templates)
    if not templates:
        raise TokenLocationError("compute_residual needs at least one template")
    prompts = [t.format(word) for t in templates]
    word_ids = word_token_ids(tokenizer, word)
    max_length = getattr(tokenizer, "model_max_length", 77)
    device = next(base_encoder.parameters()).device
    total: torch.Tensor | None = None
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start : start + batch_size]
            ids = tokenizer(chunk, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt").input_ids
            where = subject_positions(ids, {word: word_ids}, tokenizer=tokenizer, prompts=chunk)
            ids = ids.to(device)
            diff = (encode(tuned_encoder, ids).float() - encode(base_encoder, ids).float()).cpu()
            picked = torch.stack([diff[b, row[word]] for b, row in enumerate(where)])
            part = picked.sum(dim=0)
            total = part if total is None else total + part
    assert total is not None
    return total / len(prompts)
