"""``cones2 import-reference``: the reference implementation's inference configs as compositions.

The reference (ali-vilab/Cones-V2) reads a JSON list of objects such as::

    {"prompt": "a mug and a dog on the beach",
     "residual_dict": {"dog": "residuals/dog.pt", "mug": "residuals/mug.pt"},
     "color_context": {"255,192,0": ["mug", 2.5], "255,0,0": ["dog", 2.5]},
     "guidance_steps": 50, "guidance_weight": 0.08, "weight_negative": -1e8,
     "layout": "layouts/layout_example.png", "subject_list": [["mug", 2], ["dog", 5]]}

Paths are relative to the config. Each ``.pt`` residual is imported into the registry
under its word (the legacy reader refuses anything but a bare tensor), and each object
becomes a composition pinned to those versions, with the layout image matched by exact
colour and the ``reference`` sampler preset. ``subject_list`` gives token positions by
hand (BOS = 0); every one is checked against the position cones2 finds, and a
disagreement is refused with both shown. Everything is checked before anything is
imported or written.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from ..errors import CompositionError, Cones2Error, TokenLocationError
from ..sampler.layout import DEFAULT_WEIGHT_OUT
from ..sampler.presets import resolve_settings
from .model import SUFFIX, Composition, LayoutSpec, SubjectSpec

KNOWN = {"prompt", "residual_dict", "color_context", "guidance_steps", "guidance_weight", "weight_negative", "layout",
         "subject_list"}


def _subject_name(word: str) -> str:
    from ..registry.names import validate_name

    name = re.sub(r"[^a-z0-9-]+", "-", word.lower()).strip("-") or "subject"
    return validate_name(name)


def _entry(config: Path, i: int, item: Any, tokenizer: Any) -> dict[str, Any]:
    from ..residual import locate_word

    where = f"{config.name}[{i}]"
    if not isinstance(item, dict):
        raise CompositionError(f"{where}: expected an object")
    unknown = sorted(set(item) - KNOWN)
    if unknown:
        raise CompositionError(f"{where}.{unknown[0]}: unknown field (known: {', '.join(sorted(KNOWN))})")
    for needed in ("prompt", "residual_dict"):
        if needed not in item:
            raise CompositionError(f"{where}.{needed}: missing")
    prompt = item["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise CompositionError(f"{where}.prompt: must be a non-empty string")
    residuals = item["residual_dict"]
    if not isinstance(residuals, dict) or not residuals:
        raise CompositionError(f"{where}.residual_dict: expected {{word: path}}")
    files = {}
    for word, rel in residuals.items():
        path = (config.parent / str(rel)).resolve()
        if not path.is_file():
            raise CompositionError(f"{where}.residual_dict.{word}: no such file {path}")
        files[word] = path
    found: dict[str, list[int]] = {}
    for word in residuals:
        try:
            found[word] = locate_word(tokenizer, prompt, word)
        except Cones2Error as exc:
            raise TokenLocationError(f"{where}.residual_dict.{word}: {exc}") from None
    for pair in item.get("subject_list", []) or []:
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str) and isinstance(pair[1], int)):
            raise CompositionError(f"{where}.subject_list: expected [[word, position], ...], got {pair!r}")
        word, position = pair
        try:
            positions = found.get(word) or locate_word(tokenizer, prompt, word)
        except Cones2Error as exc:
            raise TokenLocationError(f"{where}.subject_list: {word!r}: {exc}") from None
        if position not in positions:
            raise TokenLocationError(
                f"{where}.subject_list: {word!r} is at token {position} in the config, but cones2 finds it at "
                f"{positions} in {prompt!r} (BOS = 0)"
            )
    weight_out = item.get("weight_negative", DEFAULT_WEIGHT_OUT)
    if isinstance(weight_out, bool) or not isinstance(weight_out, (int, float)) or math.isnan(weight_out):
        raise CompositionError(f"{where}.weight_negative: expected a number")
    layout = None
    if item.get("layout") is not None:
        image = (config.parent / str(item["layout"])).resolve()
        if not image.is_file():
            raise CompositionError(f"{where}.layout: no such file {image}")
        context = item.get("color_context") or {}
        if not isinstance(context, dict) or not context:
            raise CompositionError(f"{where}.color_context: a layout needs {{\"R,G,B\": [word, weight]}}")
        colours = []
        for colour, target in context.items():
            if not (isinstance(target, list) and len(target) == 2 and isinstance(target[0], str)):
                raise CompositionError(f"{where}.color_context.{colour}: expected [word, weight]")
            colours.append((colour, target[0], float(target[1])))
        words = list(dict.fromkeys(w for _, w, _ in colours))
        weights = () if weight_out == DEFAULT_WEIGHT_OUT else tuple(
            (w, next(x for _, ww, x in colours if ww == w), float(weight_out)) for w in words)
        layout = LayoutSpec(image=str(image), colours=tuple(colours), weights=weights)
    overrides = {k: item[k] for k in ("guidance_steps", "guidance_weight") if k in item}
    try:
        sampler = resolve_settings("reference", **overrides)
    except Cones2Error as exc:
        raise CompositionError(f"{where}: {exc}") from None
    return {"prompt": prompt, "files": files, "layout": layout, "sampler": sampler}


def import_reference_config(config: str | Path, output_dir: str | Path = ".", *, model: str | None = None) -> dict[str, Any]:
    """Import a reference config's residuals and write one composition per object; see the module docstring."""
    from ..base_model import model_info
    from ..fsutil import check_writable_folder
    from ..registry import open_catalogue
    from .resolve import load_tokenizer

    config = Path(config)
    try:
        items = json.loads(config.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompositionError(f"{config}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CompositionError(f"{config}: not a readable JSON config ({exc})") from None
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, list) or not items:
        raise CompositionError(f"{config}: expected a JSON list of inference objects")
    info = model_info(model)
    tokenizer = load_tokenizer(info.path)
    entries = [_entry(config, i, item, tokenizer) for i, item in enumerate(items)]
    out = Path(output_dir)
    check_writable_folder(out)
    stem = config.stem
    names = [stem if len(entries) == 1 else f"{stem}-{i}" for i in range(len(entries))]
    targets = [out / f"{n}{SUFFIX}" for n in names]
    for t in targets:
        if t.exists():
            raise CompositionError(f"{t} already exists (remove it or choose another --output-dir)")
    imported: dict[Path, Any] = {}
    with open_catalogue() as cat:
        for e in entries:
            for word, path in e["files"].items():
                if path not in imported:
                    imported[path] = cat.add(path, _subject_name(word), word=word, base=model,
                                             metadata={"imported_from": str(path.name)})
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for e, name, target in zip(entries, names, targets, strict=True):
        subjects = tuple(SubjectSpec(word, ref=imported[p].ref) for word, p in e["files"].items())
        comp = Composition(prompt=e["prompt"], subjects=subjects, layout=e["layout"], sampler=e["sampler"],
                           base_model=model, name=name)
        comp.save(target)
        written.append(str(target))
    return {
        "subjects": [{"ref": r.ref, "word": r.word, "sha256": r.sha256, "path": str(p)} for p, r in imported.items()],
        "compositions": written,
    }
