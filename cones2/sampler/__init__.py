"""Layout-guided multi-subject sampling (METHOD.md section 3).

Every name loads its module on first use, so importing the package (as the CLI does
to build its options) costs nothing; torch and diffusers load only with what needs them.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DEFAULT_WEIGHT_IN",
    "DEFAULT_WEIGHT_OUT",
    "AttentionRecorder",
    "Cones2AttnProcessor",
    "Cones2Pipeline",
    "Cones2PipelineOutput",
    "GuidanceCall",
    "Layout",
    "Region",
    "guidance_bias",
    "heatmap_overlay",
    "latent_grids",
    "parse_box",
    "parse_colour",
    "render_layout_preview",
    "save_attention_maps",
]

_LAZY = {
    "DEFAULT_WEIGHT_IN": "layout",
    "DEFAULT_WEIGHT_OUT": "layout",
    "Layout": "layout",
    "Region": "layout",
    "latent_grids": "layout",
    "parse_box": "layout",
    "parse_colour": "layout",
    "Cones2Pipeline": "pipeline",
    "Cones2PipelineOutput": "pipeline",
    "Cones2AttnProcessor": "attention",
    "GuidanceCall": "attention",
    "guidance_bias": "attention",
    "AttentionRecorder": "attention_maps",
    "heatmap_overlay": "attention_maps",
    "save_attention_maps": "attention_maps",
    "render_layout_preview": "preview",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
