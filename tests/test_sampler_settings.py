"""SamplerSettings: presets, overrides, validation and the dict round trip."""

from __future__ import annotations

import pytest

from cones2.errors import UsageError
from cones2.sampler.presets import PRESETS, SamplerSettings, resolve_settings


def test_reference_preset_is_the_papers_setting() -> None:
    ref = PRESETS["reference"]
    assert (ref.scheduler, ref.steps, ref.guidance_scale, ref.guidance_weight) == ("reference", 50, 7.5, 0.08)
    assert ref.guidance_steps is None and ref.self_recurrence is True
    assert (ref.guidance_sigma, ref.layout_resize, ref.colour_match, ref.occurrences) == ("schedule", "bilinear", "exact", "all")


def test_cones2_preset_differs_in_the_refinements_only() -> None:
    assert set(PRESETS["cones2"].differences()) == set()
    diff = {k for k in PRESETS["cones2"].to_dict() if PRESETS["cones2"].to_dict()[k] != PRESETS["reference"].to_dict()[k]}
    assert diff == {"preset", "scheduler", "guidance_sigma", "layout_resize", "colour_match", "occurrences"}


def test_overrides_keep_the_preset_name_and_are_reported() -> None:
    s = resolve_settings("cones2", steps=10, guidance_weight=None)
    assert s.preset == "cones2" and s.steps == 10 and s.guidance_weight == 0.08
    assert s.differences() == {"steps": 10}
    assert SamplerSettings.from_dict(s.to_dict()) == s


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: resolve_settings("fast"), "preset 'fast': choose one of reference, cones2"),
        (lambda: resolve_settings(steps=0), "steps must be a whole number >= 1"),
        (lambda: resolve_settings(guidance_weight=float("nan")), "guidance_weight must be a finite number"),
        (lambda: resolve_settings(scheduler="heun"), "scheduler 'heun': choose one of"),
        (lambda: resolve_settings(colour_tolerance=-1.0), "colour_tolerance must be >= 0"),
        (lambda: resolve_settings(guidance_steps=-2), "guidance_steps must be a whole number >= 0"),
        (lambda: resolve_settings(sampler="x"), "unknown sampler setting(s): sampler"),
        (lambda: SamplerSettings.from_dict({"occurrences": "first"}), "occurrences 'first': choose one of all, named"),
    ],
)
def test_bad_settings_are_one_line_usage_errors(call, message: str) -> None:
    with pytest.raises(UsageError) as err:
        call()
    assert message in str(err.value) and "\n" not in str(err.value)
