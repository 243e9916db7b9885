"""Regenerate the demo tokenizer files shipped in cones2/assets/tokenizer/.

Run from the repository root: ``python tools/make_demo_tokenizer.py``. The vocabulary is
the 256 byte symbols of CLIP's byte-level BPE (plain and word-final), one merge chain per
word of WORDS so each listed word is a single token, and the two special tokens. Words
that are not listed fall back to shorter pieces or single bytes, like rare words do in the
real CLIP vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

# Words of the demo, the tests and the prompt templates. Some subject words are
# deliberately left out (e.g. "teapot", "sunglasses") so multi-token words get exercised.
WORDS = """
a an the of in on at with and or to for by from is it this that my our your its
photo photograph picture rendering cropped close up closeup bright dark clean dirty
good nice small large big weird cool one two three left right top bottom middle side
dog cat mug cup bowl vase plant flower flowers tree house car boy girl man woman person
beach park street room table grass snow forest city mountain lake sky garden kitchen
red green blue yellow white black orange pink purple brown
sitting standing lying next near beside front behind under over playing sleeping
portrait painting drawing sculpture style art oil watercolor sketch
""".split()

SPECIALS = ("<|startoftext|>", "<|endoftext|>")


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes used by byte-level BPE.

    Ordered like CLIP's vocabulary: printable bytes first (so "!" is id 0, the id the
    SD 2 tokenizer pads with), then the remapped control and space bytes.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    remapped = [chr(256 + i) for i, b in enumerate(b for b in range(256) if b not in printable)]
    return [chr(b) for b in printable] + remapped


def encode_with(merges: dict[tuple[str, str], int], pieces: list[str]) -> list[str]:
    """Apply ranked merges to a list of symbols, lowest rank first, like BPE does."""
    while len(pieces) > 1:
        ranked = [(merges.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(pieces, pieces[1:], strict=False))]
        rank, i = min(ranked)
        if rank == 1 << 30:
            break
        pieces = pieces[:i] + [pieces[i] + pieces[i + 1]] + pieces[i + 2 :]
    return pieces


def build() -> tuple[dict[str, int], list[str]]:
    symbols = byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols]
    merges: dict[tuple[str, str], int] = {}
    for word in dict.fromkeys(WORDS):
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        pieces = encode_with(merges, pieces)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            merges[pair] = len(merges)
            vocab_list.append(pair[0] + pair[1])
            pieces = encode_with(merges, pieces)
    vocab_list = list(dict.fromkeys(vocab_list)) + list(SPECIALS)
    vocab = {token: i for i, token in enumerate(vocab_list)}
    merge_lines = [f"{a} {b}" for (a, b), _ in sorted(merges.items(), key=lambda kv: kv[1])]
    return vocab, merge_lines


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "cones2" / "assets" / "tokenizer"
    out.mkdir(parents=True, exist_ok=True)
    vocab, merge_lines = build()
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merge_lines) + "\n", encoding="utf-8")
    print(f"{len(vocab)} tokens, {len(merge_lines)} merges -> {out}")


if __name__ == "__main__":
    main()
