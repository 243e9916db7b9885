"""``Cones2Pipeline``: Stable Diffusion with composed subject residuals and layout guidance.

It is a diffusers :class:`~diffusers.StableDiffusionPipeline` (same components, same
``from_pretrained``, same prompt encoding, latents, decoding and progress bar) that owns
its denoising loop for the two things Cones 2 adds (METHOD.md sections 2 and 3):

* subject residuals added to the conditional prompt embeddings at their words' tokens;
* during the first ``guidance_steps`` steps, when a layout is given: the cross-attention
  bias (see :mod:`cones2.sampler.attention`) on the conditional half of one batched
  ``[uncond, cond]`` UNet call, and self-recurrence -- after the step ``x_t -> x_{t-1}``
  the result is re-noised to ``x_t``'s level with fresh noise of standard deviation
  ``sqrt(sigma_t^2 - sigma_{t-1}^2)``, the scheduler's state is restored and the step is
  taken again (one extra UNet evaluation per guided step).

Every call samples with one :class:`~cones2.sampler.presets.SamplerSettings`: a preset
(``reference``, the default: what the reference code renders; or ``cones2``) with single
settings overridden by keyword. The scheduler is chosen per call from the settings
(:mod:`cones2.sampler.schedules`; ``scheduler="default"`` uses ``pipe.scheduler``) and
``pipe.scheduler`` is left as it was.

Seeds: with ``seed``, image ``k`` of the batch draws all its random numbers from its own
CPU generator seeded ``seed + k``, and the attention std is taken per image, so image
``k`` equals the single image rendered with seed ``seed + k``, bit for bit on CPU.

Sigmas come from ``scheduler.sigmas`` when the scheduler has one per step, else from
``alphas_cumprod`` (``sqrt((1 - a) / a)``). Schedulers whose latents are variance
preserving (DDIM, PNDM, DPM-Solver: ``init_noise_sigma == 1``) hold
``x / sqrt(1 + sigma^2)``; the re-noising converts to sigma space and back.

With no subjects and no layout, ``scheduler="default"`` and the same generators, the
pipeline computes exactly what ``StableDiffusionPipeline`` computes.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from ..errors import TokenLocationError, UsageError
from ..world import components as _world_components  # noqa: F401 -- lets from_pretrained load world-model folders
from .attention import GuidanceCall, install, restore
from .attention_maps import AttentionRecorder
from .layout import Layout, latent_grids
from .presets import SamplerSettings, resolve_settings
from .schedules import guidance_sigmas, image_generators, scheduler_for


def check_settings(*, height: int | None = None, width: int | None = None, **numbers: float | None) -> None:
    """Refuse an image size that is not a positive multiple of 8 and non-finite numbers, in one line."""
    for label, value in numbers.items():
        if value is not None and not math.isfinite(float(value)):
            raise UsageError(f"{label} must be a finite number, not {value}")
    for label, size in (("height", height), ("width", width)):
        if size is not None and (size < 8 or size % 8):
            raise UsageError(f"{label} must be a positive multiple of 8 (pixels), not {size}")


@dataclass
class Cones2PipelineOutput(BaseOutput):
    """Images, the safety flags (None without a checker), attention maps and a run record.

    ``attention_maps``: ``{subject key: (images, h, w) float32}`` at latent resolution when
    ``return_attention_maps`` was set. ``info``: subjects (word, token positions, source,
    name/version/sha256 for registry refs), guided steps, UNet evaluations, sigmas.
    """

    images: Any
    nsfw_content_detected: list[bool] | None = None
    attention_maps: dict[str, np.ndarray] | None = None
    info: dict[str, Any] | None = None


def _copy_state(state: dict[str, Any]) -> dict[str, Any]:
    """Copy of a scheduler's attribute dict; lists and dicts copied one level deep (tensors are
    replaced, not modified in place, by diffusers' schedulers)."""
    out = {}
    for k, v in state.items():
        if isinstance(v, list):
            v = list(v)
        elif isinstance(v, dict) and k != "_internal_dict":
            v = dict(v)
        out[k] = v
    return out


def _snapshot(scheduler: Any) -> dict[str, Any]:
    """The scheduler's mutable state (step index, LMS derivatives, PNDM ets, DPM model outputs)."""
    return _copy_state(scheduler.__dict__)


def _restore(scheduler: Any, state: dict[str, Any]) -> None:
    scheduler.__dict__.update(_copy_state(state))


class Cones2Pipeline(StableDiffusionPipeline):
    """Stable Diffusion 1.x/2.x with Cones 2 subjects and layout guidance; see the module docstring."""

    _cones2_fingerprint: str | None = None

    # ------------------------------------------------------------------ base model facts

    @property
    def base_fingerprint(self) -> str | None:
        """Fingerprint of this pipeline's text encoder + tokenizer (None when unknown)."""
        if self._cones2_fingerprint is None:
            self._cones2_fingerprint = self._find_fingerprint()
        return self._cones2_fingerprint

    @base_fingerprint.setter
    def base_fingerprint(self, value: str | None) -> None:
        self._cones2_fingerprint = value

    def _find_fingerprint(self) -> str | None:
        from ..base_model import fingerprint, resolve_model_path

        name = getattr(self.config, "_name_or_path", None) or ""
        if not name:
            return None
        try:
            if Path(name).is_dir():
                return fingerprint(name)
            _, folder = resolve_model_path(name)
            return fingerprint(folder)
        except Exception:  # an unknown origin only disables the compatibility check
            return None

    @property
    def is_demo_model(self) -> bool:
        from ..demo_model import is_demo_model

        name = getattr(self.config, "_name_or_path", None) or ""
        return bool(name) and Path(name).is_dir() and is_demo_model(name)

    # ------------------------------------------------------------------ subjects

    def resolve_subjects(self, subjects: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """Turn ``{key: ResidualFile | path | registry ref | tensor}`` into residuals + a record."""
        from ..residual import SubjectKey, word_token_ids
        from ..residual_file import ResidualFile, ensure_compatible, read_residual

        residuals: dict[str, Any] = {}
        record: dict[str, dict[str, Any]] = {}
        hidden = int(self.text_encoder.config.hidden_size)
        fp = self.base_fingerprint
        for key, value in (subjects or {}).items():
            word = SubjectKey.parse(key).word
            info: dict[str, Any] = {"word": word}
            if isinstance(value, (str, os.PathLike)):
                text = str(value)
                if Path(text).expanduser().is_file():
                    value = read_residual(Path(text).expanduser())
                    info.update(source="file", path=str(Path(text).expanduser().resolve()))
                else:
                    value, reg = _load_from_registry(text, fp)
                    info.update(source="registry", ref=text, **reg)
            if isinstance(value, ResidualFile):
                info.setdefault("source", "object")
                info["sha256"] = info.get("sha256") or value.sha256()
                # without a known fingerprint (a pipeline built from loose components) only the
                # hidden size can be checked
                ensure_compatible(value, fp or value.base_fingerprint, hidden, source=f"subject {key!r}")
                expected = word_token_ids(self.tokenizer, word)
                if list(value.token_ids) != expected:
                    if value.word.lower() != word.lower():
                        why = f"the residual was learned for the word {value.word!r}, not {word!r}"
                    else:
                        why = f"the residual's token ids {list(value.token_ids)} are not {word!r} in this tokenizer ({expected})"
                    raise TokenLocationError(f"subject {key!r}: {why}")
                info["residual_word"] = value.word
            else:
                info.setdefault("source", "tensor")
            residuals[key] = value
            record[key] = info
        return residuals, record

    # ------------------------------------------------------------------ sampling helpers

    def _sigmas(self, timesteps: torch.Tensor) -> list[float]:
        """``sigma`` of each step's input and, last, of the final output (``len(timesteps) + 1``)."""
        sch = self.scheduler
        n = len(timesteps)
        sigmas = getattr(sch, "sigmas", None)
        if sigmas is not None and len(sigmas) == n + 1:
            return [float(s) for s in sigmas]
        alphas = getattr(sch, "alphas_cumprod", None)
        if alphas is None:
            raise UsageError(f"scheduler {type(sch).__name__} has neither sigmas nor alphas_cumprod")
        alphas = alphas.float().cpu()
        final = getattr(sch, "final_alpha_cumprod", alphas[0])
        a = [float(alphas[int(t)]) for t in timesteps] + [float(final)]
        return [math.sqrt((1.0 - x) / x) for x in a]

    def _sigma_space(self) -> bool:
        """True when latents live in sigma space (Euler, LMS), False when variance preserving."""
        return float(getattr(self.scheduler, "init_noise_sigma", 1.0)) > 1.0 + 1e-6

    def _renoise(self, x: torch.Tensor, sigma_from: float, sigma_to: float, generator: Any) -> torch.Tensor:
        """Bring ``x`` (noise level ``sigma_from``) back up to ``sigma_to`` with fresh noise."""
        std = math.sqrt(max(sigma_to**2 - sigma_from**2, 0.0))
        noise = randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if self._sigma_space():
            return x + std * noise
        up = math.sqrt(1.0 + sigma_from**2)
        down = math.sqrt(1.0 + sigma_to**2)
        return (x * up + std * noise) / down

    def _denoise_step(
        self,
        latents: torch.Tensor,
        t: Any,
        embeds: torch.Tensor,
        negative: torch.Tensor | None,
        call: GuidanceCall | None,
        separate_cfg: bool,
        extra_step_kwargs: dict[str, Any],
        timestep_cond: Any,
    ) -> torch.Tensor:
        kwargs = {"cones2": call} if call is not None else None
        if negative is None:
            inp = self.scheduler.scale_model_input(latents, t)
            noise = self.unet(inp, t, encoder_hidden_states=embeds, timestep_cond=timestep_cond,
                              cross_attention_kwargs=kwargs, return_dict=False)[0]
        elif separate_cfg:
            inp = self.scheduler.scale_model_input(latents, t)
            uncond = self.unet(inp, t, encoder_hidden_states=negative, timestep_cond=timestep_cond,
                               cross_attention_kwargs={"cones2": None} if call is not None else None, return_dict=False)[0]
            text = self.unet(inp, t, encoder_hidden_states=embeds, timestep_cond=timestep_cond,
                             cross_attention_kwargs=kwargs, return_dict=False)[0]
            noise = uncond + self.guidance_scale * (text - uncond)
        else:
            inp = self.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            pred = self.unet(inp, t, encoder_hidden_states=torch.cat([negative, embeds]), timestep_cond=timestep_cond,
                             cross_attention_kwargs=kwargs, return_dict=False)[0]
            uncond, text = pred.chunk(2)
            noise = uncond + self.guidance_scale * (text - uncond)
        return self.scheduler.step(noise, t, latents, **extra_step_kwargs, return_dict=False)[0]

    # ------------------------------------------------------------------ call

    @staticmethod
    def call_settings(settings: SamplerSettings | None = None, preset: str | None = None, **overrides: Any) -> SamplerSettings:
        """The settings of one call: ``settings`` or the named ``preset`` (default ``reference``),
        with every override that is not None applied (pipeline names accepted:
        ``num_inference_steps`` = ``steps``)."""
        if settings is not None and preset is not None:
            raise UsageError("give either settings or preset, not both")
        if settings is not None and not isinstance(settings, SamplerSettings):
            raise UsageError(f"settings must be a SamplerSettings, not {type(settings).__name__}")
        if "num_inference_steps" in overrides:
            overrides["steps"] = overrides.pop("num_inference_steps")
        return resolve_settings(settings if settings is not None else (preset or "reference"), **overrides)

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        subjects: Mapping[str, Any] | None = None,
        layout: Layout | None = None,
        *,
        settings: SamplerSettings | None = None,
        preset: str | None = None,
        guidance_weight: float | None = None,
        guidance_steps: int | None = None,
        self_recurrence: bool | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        scheduler: str | None = None,
        guidance_sigma: str | None = None,
        layout_resize: str | None = None,
        colour_match: str | None = None,
        colour_tolerance: float | None = None,
        occurrences: str | None = None,
        **kwargs: Any,
    ) -> Cones2PipelineOutput | tuple:
        """Generate images with one call's :class:`SamplerSettings`.

        ``settings`` (or ``preset``, default ``"reference"``) gives every sampler setting;
        the keyword arguments after it override single ones (None = the preset's value).
        ``subjects`` maps a subject key (``"dog"``, ``"dog#2"``) to a residual: a
        :class:`~cones2.residual_file.ResidualFile`, a path to a residual file, a registry
        ref (``dog-max``, ``dog-max@3``, ``dog-max:stable``) or a tensor. ``layout`` gives
        their regions; guidance (weight ``guidance_weight``, the first ``guidance_steps``
        steps, default all) and self-recurrence only run with a layout. The other keyword
        arguments are those of :meth:`sample`.
        """
        chosen = self.call_settings(
            settings, preset, guidance_weight=guidance_weight, guidance_steps=guidance_steps,
            self_recurrence=self_recurrence, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
            scheduler=scheduler, guidance_sigma=guidance_sigma, layout_resize=layout_resize, colour_match=colour_match,
            colour_tolerance=colour_tolerance, occurrences=occurrences,
        )
        own = self.scheduler
        sampler, step_kwargs = scheduler_for(own, chosen.scheduler)
        if sampler is not own:
            self.scheduler = sampler
        try:
            if self._one_at_a_time(prompt, kwargs):
                return self._sample_each(prompt, subjects, layout, chosen, step_kwargs, kwargs)
            return self.sample(prompt, subjects, layout, settings=chosen, step_kwargs=step_kwargs, **kwargs)
        finally:
            if self.scheduler is not own:
                self.scheduler = own

    def _one_at_a_time(self, prompt: str | list[str], kwargs: dict[str, Any]) -> bool:
        """A batch on CPU is rendered image by image (same result as single calls, bit for bit;
        batched CPU kernels round differently). A single generator shared by the batch, or an
        accelerator, keeps the batched path."""
        n = (1 if isinstance(prompt, str) else len(prompt)) * int(kwargs.get("num_images_per_prompt", 1))
        gen = kwargs.get("generator")
        if n < 2 or self._execution_device.type != "cpu" or (gen is not None and not isinstance(gen, list)):
            return False
        return gen is not None or kwargs.get("seed") is not None

    def _sample_each(self, prompt: str | list[str], subjects: Any, layout: Any, settings: SamplerSettings,
                     step_kwargs: dict[str, Any], kwargs: dict[str, Any]) -> Cones2PipelineOutput | tuple:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        per = int(kwargs.pop("num_images_per_prompt", 1))
        negative, gens = kwargs.pop("negative_prompt", None), kwargs.pop("generator", None)
        seed, latents = kwargs.pop("seed", None), kwargs.pop("latents", None)
        return_dict = kwargs.pop("return_dict", True)
        outs = []
        for k in range(len(prompts) * per):
            one = dict(kwargs, negative_prompt=negative[k // per] if isinstance(negative, list) else negative)
            if gens is not None:
                one["generator"] = gens[k]
            else:
                one["seed"] = int(seed) + k
            if latents is not None:
                one["latents"] = latents[k : k + 1]
            outs.append(self.sample(prompts[k // per], subjects, layout, settings=settings, step_kwargs=step_kwargs, **one))
        first = outs[0]
        if isinstance(first.images, list):
            images: Any = [im for o in outs for im in o.images]
        elif isinstance(first.images, np.ndarray):
            images = np.concatenate([o.images for o in outs])
        else:
            images = torch.cat([o.images for o in outs])
        nsfw = None if first.nsfw_content_detected is None else [x for o in outs for x in o.nsfw_content_detected]
        if not return_dict:
            return (images, nsfw)
        maps = None
        if first.attention_maps is not None:
            maps = {key: np.concatenate([o.attention_maps[key] for o in outs]) for key in first.attention_maps}
        info = dict(first.info, unet_evaluations=sum(o.info["unet_evaluations"] for o in outs), images_one_at_a_time=True)
        return Cones2PipelineOutput(images=images, nsfw_content_detected=nsfw, attention_maps=maps, info=info)

    def sample(  # noqa: C901 - one readable loop
        self,
        prompt: str | list[str],
        subjects: Mapping[str, Any] | None,
        layout: Layout | None,
        *,
        settings: SamplerSettings,
        step_kwargs: dict[str, Any] | None = None,
        negative_prompt: str | list[str] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        seed: int | None = None,
        num_images_per_prompt: int = 1,
        height: int | None = None,
        width: int | None = None,
        eta: float = 0.0,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        return_attention_maps: bool = False,
        attention_words: Sequence[str] | None = None,
        separate_cfg: bool = False,
        eager_attention: bool = False,
    ) -> Cones2PipelineOutput | tuple:
        """Sample with ``settings`` on the scheduler now in ``self.scheduler`` (see :meth:`__call__`).

        ``seed`` makes one CPU generator per image, seeded ``seed + k``, when ``generator``
        is not given. ``separate_cfg`` and ``eager_attention`` re-create the reference's
        execution scheme (two UNet calls per step, eager attention everywhere) for benchmarks.
        """
        num_inference_steps, guidance_scale = settings.steps, settings.guidance_scale
        guidance_weight, guidance_steps = settings.guidance_weight, settings.guidance_steps
        self_recurrence = settings.self_recurrence
        if layout is not None and not isinstance(layout, Layout):
            raise UsageError(f"layout must be a cones2 Layout, not {type(layout).__name__}")
        check_settings(height=height, width=width, guidance_scale=guidance_scale, guidance_weight=guidance_weight, eta=eta)
        if not height or not width:
            size = self.unet.config.sample_size
            size = size if isinstance(size, int) else size[0]
            height = height or size * self.vae_scale_factor
            width = width or size * self.vae_scale_factor
        self.check_inputs(prompt, height, width, None, negative_prompt, None, None, None, None, None)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if generator is None and seed is not None:
            generator = image_generators(int(seed), len(prompts) * num_images_per_prompt)

        self._guidance_scale = guidance_scale
        self._guidance_rescale = 0.0
        self._clip_skip = None
        self._cross_attention_kwargs = None
        self._interrupt = False
        if isinstance(negative_prompt, str):
            negative_prompt = [negative_prompt] * len(prompts)
        device = self._execution_device
        do_cfg = self.do_classifier_free_guidance

        # -- prompt embeddings + residuals (conditional rows only)
        residuals, subject_record = self.resolve_subjects(subjects)
        embeds, negative = self.encode_prompt(prompts, device, 1, do_cfg, negative_prompt)
        max_len = self.tokenizer.model_max_length
        ids = self.tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt").input_ids
        if residuals:
            from ..residual import apply_residuals, subject_positions, word_token_ids

            embeds = apply_residuals(embeds, ids, residuals, tokenizer=self.tokenizer, prompts=prompts)
            words = {k: word_token_ids(self.tokenizer, v["word"]) for k, v in subject_record.items()}
            for key, pos in subject_positions(ids, words, tokenizer=self.tokenizer, prompts=prompts)[0].items():
                subject_record[key]["positions"] = pos
        if num_images_per_prompt > 1:
            embeds = embeds.repeat_interleave(num_images_per_prompt, dim=0)
            negative = negative.repeat_interleave(num_images_per_prompt, dim=0) if negative is not None else None
        if not do_cfg:
            negative = None

        # -- timesteps, latents, sigmas
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device)
        batch = len(prompts) * num_images_per_prompt
        latents = self.prepare_latents(batch, self.unet.config.in_channels, height, width, embeds.dtype, device, generator, latents)
        extra_step_kwargs = {**self.prepare_extra_step_kwargs(generator, eta), **(step_kwargs or {})}
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:
            scale_tensor = torch.tensor(self.guidance_scale - 1).repeat(batch)
            timestep_cond = self.get_guidance_scale_embedding(
                scale_tensor, embedding_dim=self.unet.config.time_cond_proj_dim
            ).to(device=device, dtype=latents.dtype)
        sigmas = self._sigmas(timesteps) if (layout is not None) else None

        # -- layout weight maps and attention recording
        lh, lw = latents.shape[-2:]
        grids = latent_grids(lh, lw, len(self.unet.config.block_out_channels) + 1)
        call: GuidanceCall | None = None
        recorder: AttentionRecorder | None = None
        if layout is not None:
            layout = layout.matched(settings.colour_match, settings.colour_tolerance)
            layout.check_size(height, width)
            maps = layout.weight_maps(self.tokenizer, prompts, grids, num_tokens=embeds.shape[1],
                                      resize=settings.layout_resize, occurrences=settings.occurrences,
                                      image_size=(height, width))
            if len(prompts) > 1 or num_images_per_prompt > 1:
                maps = {q: (w if w.shape[0] == 1 else w.repeat_interleave(num_images_per_prompt, dim=0)) for q, w in maps.items()}
            call = GuidanceCall(weight_maps=maps, eta=guidance_weight, cond="all" if (separate_cfg or not do_cfg) else "cfg")
        if return_attention_maps:
            from ..residual import SubjectKey, locate_word

            keys = list(attention_words or dict.fromkeys([*(subjects or {}), *(layout.subjects if layout else [])]))
            rows = []
            for p in prompts:
                row = {}
                for k in keys:
                    key = SubjectKey.parse(k)
                    row[k] = locate_word(self.tokenizer, p, key.word, key.occurrence)
                rows.extend([row] * num_images_per_prompt)
            recorder = AttentionRecorder(rows, {h * w: (h, w) for h, w in grids}, (lh, lw))
            if call is None:
                call = GuidanceCall(weight_maps=None, active=False, cond="all" if (separate_cfg or not do_cfg) else "cfg")
            call.recorder = recorder

        n_guided = 0 if layout is None else min(num_inference_steps if guidance_steps is None else guidance_steps, len(timesteps))
        if n_guided and self_recurrence and getattr(self.scheduler, "order", 1) != 1:
            raise UsageError(
                f"self-recurrence needs a first-order or multistep scheduler, not {type(self.scheduler).__name__} "
                f"(order {self.scheduler.order}); use another scheduler or self_recurrence=False"
            )
        bias_sigmas = guidance_sigmas(settings.guidance_sigma, self.scheduler.config, sigmas or [], n_guided)
        evaluations = {"unet": 0}

        def count(*_: Any) -> None:
            evaluations["unet"] += 1

        hook = self.unet.register_forward_pre_hook(count)
        old = install(self.unet, eager=eager_attention, eager_self_attention=eager_attention) if (call is not None or eager_attention) else None
        if call is None and eager_attention:
            call = GuidanceCall(weight_maps=None, active=False)
        try:
            num_warmup_steps = len(timesteps) - num_inference_steps * self.scheduler.order
            self._num_timesteps = len(timesteps)
            with self.progress_bar(total=num_inference_steps) as progress_bar:
                for i, t in enumerate(timesteps):
                    guided = i < n_guided
                    if call is not None:
                        call.active = guided and call.weight_maps is not None
                        call.sigma = bias_sigmas[i] if guided else 0.0
                        if recorder is not None:
                            recorder.enabled = True
                    state = _snapshot(self.scheduler) if (guided and self_recurrence) else None
                    out = self._denoise_step(latents, t, embeds, negative, call, separate_cfg, extra_step_kwargs, timestep_cond)
                    if state is not None:
                        again = self._renoise(out, sigmas[i + 1], sigmas[i], generator)
                        _restore(self.scheduler, state)
                        if recorder is not None:
                            recorder.enabled = False  # maps average the first pass of each step
                        out = self._denoise_step(again, t, embeds, negative, call, separate_cfg, extra_step_kwargs, timestep_cond)
                    latents = out
                    if i == len(timesteps) - 1 or ((i + 1) > num_warmup_steps and (i + 1) % self.scheduler.order == 0):
                        progress_bar.update()
        finally:
            hook.remove()
            if old is not None:
                restore(self.unet, old)

        # -- decode
        if output_type != "latent":
            image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False, generator=generator)[0]
            image, nsfw = self.run_safety_checker(image, device, embeds.dtype)
        else:
            image, nsfw = latents, None
        do_denormalize = [True] * image.shape[0] if nsfw is None else [not x for x in nsfw]
        if output_type != "latent":
            image = self.image_processor.postprocess(image, output_type=output_type, do_denormalize=do_denormalize)
        self.maybe_free_model_hooks()

        attention = recorder.maps() if recorder is not None else None
        info = {
            "subjects": subject_record,
            "layout": layout.describe() if layout is not None else None,
            "guided_steps": n_guided,
            "self_recurrence": bool(self_recurrence and n_guided),
            "unet_evaluations": evaluations["unet"],
            "sigmas": sigmas,
            "guidance_sigmas": bias_sigmas,
            "scheduler": type(self.scheduler).__name__,
            "settings": settings.to_dict(),
            "height": height,
            "width": width,
        }
        if not return_dict:
            return (image, nsfw)
        return Cones2PipelineOutput(images=image, nsfw_content_detected=nsfw, attention_maps=attention, info=info)


def _load_from_registry(ref: str, fingerprint: str | None) -> tuple[Any, dict[str, Any]]:
    """Load a residual through the catalogue (imported lazily; it may not be installed)."""
    try:
        from ..registry import open_catalogue
    except ImportError:
        raise UsageError(f"subject {ref!r}: no such residual file, and the subject registry is not available") from None
    with open_catalogue() as cat:
        record, residual = cat.load(ref, base_fingerprint=fingerprint)
    info = {k: getattr(record, k, None) for k in ("name", "version", "sha256")}
    return residual, info
