"""Reproducible compositions: a :class:`Composition`, its TOML file and lock, rendering.

``Composition.load("beach.cones2.toml")`` -> :func:`resolve` (exact versions, sha256) ->
lock (``beach.cones2.toml.lock``) -> :func:`render` (PNGs whose metadata hold the
composition and its resolution). Nothing here imports torch until a render starts.
"""

from __future__ import annotations

from .lock import LockResult, check_lock, lock_composition, locked_resolution, read_lock
from .model import Composition, LayoutSpec, SubjectSpec, read_png_record
from .render import RenderJob, RenderOptions, RenderResult, render
from .resolve import Resolution, ResolvedSubject, resolve

__all__ = [
    "Composition", "LayoutSpec", "LockResult", "RenderJob", "RenderOptions", "RenderResult", "Resolution",
    "ResolvedSubject", "SubjectSpec", "check_lock", "lock_composition", "locked_resolution", "read_lock",
    "read_png_record", "render", "resolve",
]
