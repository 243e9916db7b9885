"""Per-call scheduler choice, the guidance sigma rule and per-image random generators.

Helpers of :class:`~cones2.sampler.pipeline.Cones2Pipeline` that turn a
:class:`~cones2.sampler.presets.SamplerSettings` into what one call samples with:

* :func:`scheduler_for` -- ``reference``: an LMS scheduler built from the model's
  scheduler config with linspace timesteps, stepped with order 1 (that is Euler), as the
  reference code samples; ``default``: the pipeline's own scheduler; a family name
  (``ddim``, ``euler``, ``lms``, ``pndm``, ``dpm``): that diffusers scheduler from the
  model's config.
* :func:`guidance_sigmas` -- the sigma in the attention bias of each guided step:
  ``current`` takes the sampling step's own sigma; ``schedule`` (the reference) takes
  sigma ``i`` of a second LMS schedule (linspace, the model's betas) that is only
  ``guidance_steps`` long, so guidance on 4 of 10 steps fades to ~0 by step 4.
* :func:`image_generators` -- the seed rule: image ``k`` of a batch (prompts times
  images per prompt, in order) draws all its random numbers (initial latents and
  self-recurrence noise) from its own CPU generator seeded ``seed + k``, so it is the
  image a single-image call with seed ``seed + k`` renders.
"""

from __future__ import annotations

from typing import Any

SCHEDULER_CLASSES = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
}


def scheduler_for(base: Any, name: str) -> tuple[Any, dict[str, Any]]:
    """``(scheduler, extra keyword arguments of its step())`` for the setting ``name``."""
    if name == "default":
        return base, {}
    import diffusers

    if name == "reference":
        return diffusers.LMSDiscreteScheduler.from_config(base.config, timestep_spacing="linspace"), {"order": 1}
    return getattr(diffusers, SCHEDULER_CLASSES[name]).from_config(base.config), {}


def lms_sigmas(config: Any, steps: int) -> list[float]:
    """Sigmas (``steps + 1``, ending in 0) of an LMS schedule with linspace timesteps."""
    from diffusers import LMSDiscreteScheduler

    sch = LMSDiscreteScheduler.from_config(config, timestep_spacing="linspace")
    sch.set_timesteps(steps)
    return [float(s) for s in sch.sigmas]


def guidance_sigmas(rule: str, config: Any, sampling: list[float], n_guided: int) -> list[float]:
    """Sigma of the attention bias for each of the ``n_guided`` first steps."""
    if n_guided <= 0:
        return []
    if rule == "current":
        return sampling[:n_guided]
    return lms_sigmas(config, n_guided)[:n_guided]


def image_generators(seed: int, count: int) -> list[Any]:
    """One CPU generator per image, seeded ``seed + k`` (see the module docstring)."""
    import torch

    return [torch.Generator(device="cpu").manual_seed(int(seed) + k) for k in range(count)]
