"""The end-to-end demo behind ``cones2 quickstart``: runs on the demo model, offline.

1. Makes two subject residuals (from stand-in "tuned" encoders: copies of the base
   encoder whose word embedding is nudged, since training is not part of the demo) and
   saves them as residual files.
2. Registers them in the catalogue (``dog-max``, ``mug-red``; re-running is a no-op).
3. Composes them into one prompt's embeddings, reporting which tokens moved.
4. Renders the prompt with both subjects placed by boxes (layout-guided sampling),
   with the layout preview and per-subject attention maps beside the image.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEMO_SUBJECTS = {"dog": "dog-max", "mug": "mug-red"}
DEMO_PROMPT = "a dog and a mug on the beach"
DEMO_BOXES = ("dog=0.05,0.3,0.5,0.95", "mug=0.55,0.5,0.95,0.95")


@dataclass
class QuickstartResult:
    model: str
    fingerprint: str
    prompt: str
    residual_files: dict[str, str]
    residual_sizes: dict[str, int]
    changed_positions: dict[str, list[int]]
    change_norms: dict[str, float]
    unchanged_max_abs: float
    registered: dict[str, str] = field(default_factory=dict)
    render: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def stand_in_tuned_encoder(encoder: Any, token_ids: list[int], seed: int, strength: float = 0.5) -> Any:
    """A copy of ``encoder`` whose embeddings of ``token_ids`` are shifted at random."""
    import torch

    tuned = copy.deepcopy(encoder)
    gen = torch.Generator().manual_seed(seed)
    emb = tuned.get_input_embeddings().weight
    with torch.no_grad():
        for t in token_ids:
            emb[t] += strength * torch.randn(emb.shape[1], generator=gen) * emb[t].std()
    return tuned


def run_quickstart(
    out_dir: str | Path, model: str | None = None, seed: int = 0, steps: int = 20, render: bool = True, progress: bool = True
) -> QuickstartResult:
    import torch

    from .base_model import load_text_encoder, model_info
    from .residual import apply_residuals, compute_residual, word_token_ids
    from .residual_file import make_residual, read_residual

    info = model_info(model)
    tokenizer, encoder = load_text_encoder(info.path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    sizes: dict[str, int] = {}
    residuals = {}
    for i, (word, name) in enumerate(DEMO_SUBJECTS.items()):
        ids = word_token_ids(tokenizer, word)
        tuned = stand_in_tuned_encoder(encoder, ids, seed=seed + i)
        delta = compute_residual(encoder, tuned, tokenizer, word, templates="reference")
        rf = make_residual(delta, word, ids, info.fingerprint, {"name": name, "demo": True}, templates="reference")
        path = rf.save(out_dir / f"{name}.safetensors")
        files[word], sizes[word] = str(path), path.stat().st_size
        residuals[word] = read_residual(path)
    ids = tokenizer([DEMO_PROMPT], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        base = encoder(ids)[0]
    composed = apply_residuals(base, ids, residuals, tokenizer=tokenizer)
    diff = (composed - base)[0].norm(dim=-1)
    changed = [int(p) for p in torch.nonzero(diff).flatten()]
    positions = {w: [p for p in changed if p in _positions(tokenizer, w)] for w in DEMO_SUBJECTS}
    norms = {w: float(diff[positions[w]].norm()) for w in DEMO_SUBJECTS}
    unchanged = [p for p in range(ids.shape[1]) if p not in changed]

    from .registry import open_catalogue

    registered = {}
    with open_catalogue() as catalogue:
        for word, name in DEMO_SUBJECTS.items():
            # base=info: labelled as the user named it ("demo", a Hub id), not by its folder
            record = catalogue.add(files[word], name, base=info, description=f"quickstart demo subject ({word})")
            registered[word] = f"{record.name}@{record.version}"
    rendered: dict[str, Any] = {}
    if render:
        from .sampler.generate import composition_from_options, generate, layout_spec
        from .sampler.presets import resolve_settings

        composition = composition_from_options(
            DEMO_PROMPT,
            subjects=tuple(f"{w}={n}" for w, n in DEMO_SUBJECTS.items()),
            layout=layout_spec(boxes=DEMO_BOXES),
            settings=resolve_settings("reference", steps=steps),
            model=model,  # labelled as the user named it (None: the configured model)
            seed=seed,
            name="quickstart",
        )
        rendered = generate(composition, output=str(out_dir / "quickstart.png"), attention_dir=str(out_dir / "attention"))
    return QuickstartResult(
        model=info.source,
        fingerprint=info.fingerprint,
        prompt=DEMO_PROMPT,
        residual_files=files,
        residual_sizes=sizes,
        changed_positions=positions,
        change_norms=norms,
        unchanged_max_abs=float((composed - base)[0, unchanged].abs().max()),
        registered=registered,
        render=rendered,
        extra={"is_demo": info.is_demo, "token_count": int((ids[0] != tokenizer.pad_token_id).sum())},
    )


def _positions(tokenizer: Any, word: str) -> list[int]:
    from .residual import locate_word

    return locate_word(tokenizer, DEMO_PROMPT, word)
