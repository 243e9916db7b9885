"""Sampler settings and their named presets.

One frozen :class:`SamplerSettings` carries every setting that changes the image the
sampler draws (apart from the prompt, subjects, layout, size and seed, which belong to a
composition). Two presets name complete sets of them:

* ``reference`` (the default): what the reference implementation of Cones 2 renders --
  an LMS scheduler stepped with order 1 (Euler) on linspace timesteps, 50 steps, CFG 7.5,
  guidance weight 0.08 on all steps, self-recurrence on; with fewer guided steps than
  sampling steps the bias's sigma comes from a second schedule of ``guidance_steps``
  length; colour layouts match colours exactly; the weight map is resized to each
  attention resolution bilinearly with aligned corners; a word's weight goes to every
  occurrence of its tokens.
* ``cones2``: cones2's refinements -- the model's own scheduler, the current step's
  sigma, nearest-colour matching within a tolerance, area-based resizing (a cell is
  inside at >= 50 % cover) and only the named occurrence of a word (``dog#2``).

Any single setting can be overridden by name on top of a preset
(:func:`resolve_settings`); the result records the preset it started from.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..errors import UsageError

PRESET_NAMES = ("reference", "cones2")
SCHEDULER_NAMES = ("reference", "default", "ddim", "euler", "lms", "pndm", "dpm")
GUIDANCE_SIGMAS = ("schedule", "current")
LAYOUT_RESIZES = ("bilinear", "area")
COLOUR_MATCHES = ("exact", "nearest")
OCCURRENCE_RULES = ("all", "named")


@dataclass(frozen=True)
class SamplerSettings:
    """Every sampler setting that changes the image; validated at construction.

    ``scheduler``: ``reference`` (LMS order 1 = Euler, linspace timesteps), ``default``
    (the model's configured scheduler) or a diffusers scheduler family.
    ``guidance_steps``: None guides every step.
    ``guidance_sigma``: ``schedule`` (the reference: sigma from an LMS schedule of
    ``guidance_steps`` length) or ``current`` (the sampling step's own sigma).
    ``layout_resize``: ``bilinear`` (reference) or ``area``.
    ``colour_match``: ``exact`` (reference) or ``nearest`` within ``colour_tolerance``.
    ``occurrences``: ``all`` (reference: every occurrence of a word) or ``named``.
    """

    preset: str = "reference"
    scheduler: str = "reference"
    steps: int = 50
    guidance_scale: float = 7.5
    guidance_weight: float = 0.08
    guidance_steps: int | None = None
    self_recurrence: bool = True
    guidance_sigma: str = "schedule"
    layout_resize: str = "bilinear"
    colour_match: str = "exact"
    colour_tolerance: float = 60.0
    occurrences: str = "all"

    def __post_init__(self) -> None:
        _choice("preset", self.preset, PRESET_NAMES)
        _choice("scheduler", self.scheduler, SCHEDULER_NAMES)
        _choice("guidance_sigma", self.guidance_sigma, GUIDANCE_SIGMAS)
        _choice("layout_resize", self.layout_resize, LAYOUT_RESIZES)
        _choice("colour_match", self.colour_match, COLOUR_MATCHES)
        _choice("occurrences", self.occurrences, OCCURRENCE_RULES)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise UsageError(f"steps must be a whole number >= 1, not {self.steps!r}")
        if self.guidance_steps is not None and (
            isinstance(self.guidance_steps, bool) or not isinstance(self.guidance_steps, int) or self.guidance_steps < 0
        ):
            raise UsageError(f"guidance_steps must be a whole number >= 0 or None (all steps), not {self.guidance_steps!r}")
        if not isinstance(self.self_recurrence, bool):
            raise UsageError(f"self_recurrence must be true or false, not {self.self_recurrence!r}")
        for name in ("guidance_scale", "guidance_weight", "colour_tolerance"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UsageError(f"{name} must be a finite number, not {value!r}")
        if self.colour_tolerance < 0:
            raise UsageError(f"colour_tolerance must be >= 0, not {self.colour_tolerance}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-able values (``guidance_steps`` None stays None)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplerSettings:
        """Settings from :meth:`to_dict`'s shape; a missing field takes the named preset's value."""
        data = dict(data)
        preset = data.pop("preset", "reference")
        return resolve_settings(preset, **data)

    def differences(self) -> dict[str, Any]:
        """The settings that differ from this object's preset (what a user overrode)."""
        base = PRESETS[self.preset]
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(base, f.name)}


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise UsageError(f"{name} {value!r}: choose one of {', '.join(allowed)}")


PRESETS: dict[str, SamplerSettings] = {
    "reference": SamplerSettings(),
    "cones2": SamplerSettings(
        preset="cones2",
        scheduler="default",
        guidance_sigma="current",
        layout_resize="area",
        colour_match="nearest",
        occurrences="named",
    ),
}

SETTING_NAMES = tuple(f.name for f in fields(SamplerSettings) if f.name != "preset")


def resolve_settings(preset: str | SamplerSettings = "reference", **overrides: Any) -> SamplerSettings:
    """A preset (by name, or settings to start from) with single settings overridden by name.

    Overrides whose value is None are ignored, except ``guidance_steps`` given explicitly
    as None, which means "all steps" -- pass it only when you mean that. Unknown names
    are refused in one line naming them.
    """
    if isinstance(preset, SamplerSettings):
        base = preset
    else:
        _choice("preset", preset, PRESET_NAMES)
        base = PRESETS[preset]
    unknown = sorted(set(overrides) - set(SETTING_NAMES))
    if unknown:
        raise UsageError(f"unknown sampler setting(s): {', '.join(unknown)} (known: {', '.join(SETTING_NAMES)})")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return replace(base, **changes) if changes else base
