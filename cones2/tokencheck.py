"""Do a residual's token ids spell its word in the base model's tokenizer? (no transformers import)

CLIP's tokenizer is a byte-level BPE: each id names a vocabulary entry made of
byte-to-unicode symbols, and ``</w>`` ends a word. Decoding the ids with the model's own
``tokenizer/vocab.json`` or ``tokenizer.json`` (plain JSON, read once per process) must give back the word;
ids that decode to something else were made for another tokenizer or were edited. A
model folder without ``vocab.json`` is not checked (nothing to check against).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from .errors import InvalidResidualError, TokenLocationError


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    # The GPT-2/CLIP byte <-> printable-unicode table: printable bytes map to themselves,
    # the others to 256 + n in order.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table: dict[str, int] = {}
    extra = 0
    for byte in range(256):
        if byte in printable:
            table[chr(byte)] = byte
        else:
            table[chr(256 + extra)] = byte
            extra += 1
    return table


@lru_cache(maxsize=4)
def _id_to_token(vocab_file: str, mtime_ns: int) -> dict[int, str]:
    with open(vocab_file, encoding="utf-8") as fh:
        data = json.load(fh)
    vocab = data["model"]["vocab"] if vocab_file.endswith("tokenizer.json") else data
    return {int(i): tok for tok, i in vocab.items()}


def decode_ids(model_path: str | Path, ids: Sequence[int]) -> str | None:
    """The text the ids spell in the model's tokenizer; None when it has no vocab.json."""
    folder = Path(model_path) / "tokenizer"
    vocab_file = folder / "vocab.json" if (folder / "vocab.json").is_file() else folder / "tokenizer.json"
    try:
        table = _id_to_token(str(vocab_file), vocab_file.stat().st_mtime_ns)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    decoder = _byte_decoder()
    raw = bytearray()
    for i in ids:
        token = table.get(int(i))
        if token is None or token.startswith("<|"):
            return "\ufffd"  # unknown or special id: spells nothing
        word_end = token.endswith("</w>")
        for ch in token.removesuffix("</w>"):
            if ch not in decoder:
                return "\ufffd"
            raw.append(decoder[ch])
        if word_end:
            raw.append(ord(" "))
    return raw.decode("utf-8", errors="replace").strip()


def check_word_ids(model_path: str | Path, word: str, ids: Sequence[int], source: str, model: str) -> None:
    """Refuse token ids that do not spell ``word`` in the base model's tokenizer."""
    spelled = decode_ids(model_path, ids)
    if spelled is None:
        return
    if " ".join(spelled.split()) != " ".join(word.lower().split()):
        raise InvalidResidualError(
            f"{source}: token ids {list(ids)} spell {spelled!r} in the tokenizer of {model}, not the word {word!r}; "
            "refused (made for another tokenizer, or edited)"
        )


def encode_word(model_path: str | Path, word: str) -> list[int]:
    """The token ids of ``word`` alone (no BOS/EOS) in the base model's tokenizer.

    With a ``tokenizer/tokenizer.json`` the ``tokenizers`` library encodes it (a few ms to
    import) exactly as transformers' fast CLIPTokenizer, which is built on the same file;
    a folder with only ``vocab.json``/``merges.txt`` goes through transformers.
    """
    folder = Path(model_path) / "tokenizer"
    if not (folder / "tokenizer.json").is_file():
        from transformers import CLIPTokenizer

        from .residual import word_token_ids

        return word_token_ids(CLIPTokenizer.from_pretrained(str(folder)), word)
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(folder / "tokenizer.json")).encode(word, add_special_tokens=False).ids
    if not ids:
        raise TokenLocationError(f"subject word {word!r} tokenizes to nothing")
    return list(ids)
