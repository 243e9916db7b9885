"""Checks that run before any training, and the one place foreign errors become cones2's.

Each check raises one typed, one-line error; nothing is registered or left behind.
"""

from __future__ import annotations

import contextlib
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import (
    BaseModelError,
    BaseModelMismatchError,
    Cones2Error,
    ConflictError,
    NotFoundError,
    TokenLocationError,
    TrainingError,
)

_SD_PARTS = ("unet", "vae", "scheduler")


def check_base_folder(path: str | Path, source: str) -> None:
    """A Stable Diffusion folder with the parts training needs (the text encoder is checked by model_info)."""
    root = Path(path)
    missing = [part for part in _SD_PARTS if not (root / part).is_dir()]
    if missing:
        raise BaseModelError(f"base model {source}: cannot train on it, it has no {', '.join(missing)} (needs a full Stable Diffusion folder)")


def check_word(tokenizer: Any, word: str, templates: Sequence[str]) -> list[int]:
    """The word's token ids, if it is whole tokens of the vocabulary and fits every prompt used."""
    if not isinstance(word, str) or not word.strip():
        raise TokenLocationError("the class word is empty (give --word, e.g. --word dog)")
    if word != word.strip() or any(ch.isspace() and ch != " " for ch in word):
        raise TokenLocationError(f"class word {word!r}: leading/trailing spaces or control whitespace")
    ids = list(tokenizer(word, add_special_tokens=False).input_ids)
    special = set(getattr(tokenizer, "all_special_ids", []))
    unk = getattr(tokenizer, "unk_token_id", None)
    pieces = tokenizer.convert_ids_to_tokens(ids)
    # the tokens must spell the word (spaces aside: CLIP splits at punctuation and spaces)
    rebuilt = "".join(str(tokenizer.convert_tokens_to_string(pieces)).replace("</w>", "").split()) if ids else ""
    expected = "".join(unicodedata.normalize("NFC", word).lower().split())
    if not ids or any(i in special or i == unk for i in ids) or rebuilt != expected:
        shown = " ".join(str(p) for p in pieces) or "nothing"
        raise TokenLocationError(
            f"class word {word!r} is not whole tokens of the base model's vocabulary (it tokenizes to {shown}); "
            "use a plain lowercase word such as 'dog'"
        )
    limit = int(getattr(tokenizer, "model_max_length", 77))
    longest = max((len(tokenizer(t.format(word), add_special_tokens=True).input_ids) for t in templates), default=len(ids) + 2)
    if longest > limit:
        raise TokenLocationError(
            f"class word {word!r} is too long: {len(ids)} tokens, and the residual's template prompts need "
            f"{longest} of the {limit}-token limit"
        )
    return ids


def check_catalogue(name: str, word: str, fingerprint: str, source: str) -> None:
    """Refuse a NAME that exists for another base model or another word (before training, not after)."""
    from ..registry import open_catalogue

    with open_catalogue() as catalogue:
        try:
            versions = catalogue.list_versions(name)
        except NotFoundError:
            return
    for record in versions:
        if record.base_fingerprint != fingerprint:
            raise BaseModelMismatchError(
                f"subject {name} exists for base model {record.base_fingerprint[:12]} "
                f"({record.base_model or 'unknown id'}), not {fingerprint[:12]} ({source}); train it under another name"
            )
        if record.word and record.word != word:
            raise ConflictError(f"subject {name} is a {record.word!r}, not a {word!r}; train it under another name")


@contextlib.contextmanager
def foreign_errors(stage: str) -> Iterator[None]:
    """Turn errors of PIL, accelerate, torch and the filesystem into one TrainingError line."""
    try:
        yield
    except (Cones2Error, KeyboardInterrupt):
        raise
    except MemoryError:
        raise TrainingError(f"{stage}: out of memory (try --batch-size 1, --gradient-checkpointing or a lower --resolution)") from None
    except (OSError, ValueError, RuntimeError, ImportError) as exc:
        text = " ".join(str(exc).split()) or type(exc).__name__
        if "out of memory" in text.lower():
            raise TrainingError(f"{stage}: out of memory (try --batch-size 1, --gradient-checkpointing or a lower --resolution)") from None
        raise TrainingError(f"{stage}: {type(exc).__name__}: {text[:300]}") from None
