"""``train_subject``: learn one subject's residual and register it (METHOD.md section 1).

The whole text encoder is tuned on the bare class word; UNet and VAE stay frozen (in
half precision under ``mixed_precision``). Every random draw — data order, latent
samples, flips, noise, timesteps — comes from one CPU generator seeded with
``config.seed`` whose state is checkpointed, so a resumed run continues exactly as an
uninterrupted one. At the end the residual (template mean of the tuned encoder's change
at the word's tokens) becomes a new version of NAME in the catalogue; the tuned encoder
is dropped unless ``keep_encoder`` names a folder for it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TrainingInterrupted, UsageError
from .checkpoint import TrainState, find_checkpoint, load_checkpoint, save_checkpoint
from .checks import check_base_folder, check_catalogue, check_word, foreign_errors
from .config import TrainConfig


@dataclass(frozen=True)
class TrainStep:
    """Progress of one finished optimisation step (what ``on_step`` receives)."""

    step: int
    total: int
    loss: float
    diffusion: float
    bos: float
    rest: float
    elapsed_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainResult:
    """What a finished training run produced."""

    name: str
    version: int
    sha256: str
    word: str
    token_ids: list[int]
    steps: int
    resumed_from: str | None
    output_dir: str
    checkpoints: list[str] = field(default_factory=list)
    validation_images: list[str] = field(default_factory=list)
    encoder_dir: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ref": self.ref}


def default_output_dir(name: str) -> Path:
    """Where checkpoints and validation images of NAME go by default."""
    from ..config import home

    return home() / "training" / name.replace("/", "--")


def loss_summary(losses: list[float]) -> dict[str, Any]:
    """A short description of the loss curve: first/last, min/max and ten bucket means."""
    if not losses:
        return {}
    buckets = min(10, len(losses))
    size = len(losses) / buckets
    means = [sum(chunk) / len(chunk) for chunk in (losses[round(i * size) : round((i + 1) * size)] for i in range(buckets)) if chunk]
    return {
        "first": losses[0],
        "last": losses[-1],
        "min": min(losses),
        "max": max(losses),
        "mean": sum(losses) / len(losses),
        "bucket_means": [round(m, 6) for m in means],
    }


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[dict[str, bool]]:
    """In the main thread, a first Ctrl-C only sets a flag that the loop checks at the step boundary."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if flag["stop"]:  # a second Ctrl-C: stop now
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag["stop"] = True

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """No per-file progress bars from transformers/diffusers while models load (ours is the one bar)."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    states = [(m, m.is_progress_bar_enabled()) for m in (diffusers_logging, transformers_logging)]
    for module, _ in states:
        module.disable_progress_bar()
    try:
        yield
    finally:
        for module, enabled in states:
            if enabled:
                module.enable_progress_bar()


class _Sampler:
    """Draws batches (image indices, latent noise, flips, noise, timesteps) from one generator."""

    def __init__(self, n_images: int, generator: Any, order: list[int]) -> None:
        self.n, self.gen, self.order = n_images, generator, list(order)

    def indices(self, count: int) -> list[int]:
        import torch

        picked = []
        for _ in range(count):
            if not self.order:
                self.order = [int(i) for i in torch.randperm(self.n, generator=self.gen)]
            picked.append(self.order.pop(0))
        return picked


def _adamw(encoder: Any, device: Any, cfg: TrainConfig) -> Any:
    """AdamW with diffusers' training-script settings, its fused kernel where torch has one for the device."""
    import torch

    settings = {"lr": cfg.lr, "betas": (cfg.adam_beta1, cfg.adam_beta2), "weight_decay": cfg.adam_weight_decay,
                "eps": cfg.adam_epsilon}
    fused = torch.device(device).type in ("cpu", "cuda")
    return torch.optim.AdamW(encoder.parameters(), fused=fused, **settings)


def train_subject(
    images: Iterable[str | os.PathLike[str]],
    word: str,
    name: str,
    *,
    base: str | os.PathLike[str] | None = None,
    config: TrainConfig | None = None,
    output_dir: str | os.PathLike[str] | None = None,
    resume: str | None = None,
    keep_encoder: str | os.PathLike[str] | None = None,
    description: str | None = None,
    device: str | None = None,
    on_step: Callable[[TrainStep], None] | None = None,
) -> TrainResult:
    """Learn the subject shown in ``images`` as class ``word`` and register it as a new version of ``name``.

    ``images``: files and folders (their images). ``base``: model folder or Hub id
    (default: configured, else the demo model). ``output_dir``: checkpoints and
    validation images (default ``$CONES2_HOME/training/<name>``). ``resume``: ``"latest"``
    or a checkpoint. ``on_step`` is called after every step. Ctrl-C writes a checkpoint
    and raises :class:`~cones2.errors.TrainingInterrupted`.
    """
    from ..base_model import model_info
    from ..fsutil import check_writable_folder
    from ..registry import validate_name
    from ..residual import template_set
    from .data import load_images

    config = config or TrainConfig()
    if not isinstance(config, TrainConfig):
        raise UsageError(f"config must be a TrainConfig, not {type(config).__name__}")
    validate_name(name)
    with foreign_errors("reading training images"):
        pictures = load_images(images, config.resolution)
    info = model_info(None if base is None else str(base))
    check_base_folder(info.path, info.source)
    with foreign_errors("loading the tokenizer"):
        tokenizer = _load_tokenizer(Path(info.path))
    word_ids = check_word(tokenizer, word, template_set(config.templates))
    check_catalogue(name, word, info.fingerprint, info.source)
    out = Path(output_dir) if output_dir is not None else default_output_dir(name)
    check_writable_folder(out)
    if keep_encoder is not None:
        check_writable_folder(keep_encoder)
    checkpoint = find_checkpoint(out, resume) if resume else None
    identity = {"config": config.identity(), "base": info.fingerprint, "word": word,
                "images": [p.sha256 for p in pictures]}
    run = _Run(config, info, tokenizer, word, word_ids, pictures, out, identity, device)
    with foreign_errors("training"):
        run.setup(checkpoint)
        run.loop(on_step)
        tuned = run.finish(keep_encoder)
    return _register(run, tuned, name, description, checkpoint)


def _is_world(root: Path) -> bool:
    from ..world.model import is_world_model

    return is_world_model(root)


def _load_tokenizer(root: Path) -> Any:
    """The base model's tokenizer: CLIP's, or the world model's word-level one."""
    from ..base_model import load_tokenizer

    return load_tokenizer(root)


class _Run:
    """One training run's models and state (kept apart from the checks above)."""

    def __init__(self, config: TrainConfig, info: Any, tokenizer: Any, word: str, word_ids: list[int],
                 pictures: list[Any], out: Path, identity: dict[str, Any], device: str | None) -> None:
        self.config, self.info, self.tokenizer, self.word, self.word_ids = config, info, tokenizer, word, word_ids
        self.pictures, self.out, self.identity, self.device_name = pictures, out, identity, device
        self.losses: list[float] = []
        self.step = 0
        self.checkpoints: list[str] = []
        self.validation_images: list[str] = []
        self.encoder_dir: str | None = None
        self.residual: Any = None
        self.started = time.perf_counter()

    # ------------------------------------------------------------------ setup

    def setup(self, checkpoint: Path | None, components: dict[str, Any] | None = None) -> None:
        """Load the models (or take ``components``: unet, vae, text_encoder, scheduler), cache latents, restore a checkpoint."""
        import torch
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from diffusers import DDPMScheduler

        from .data import encode_latents

        cfg = self.config
        # accelerate keeps its settings process-wide; each run sets its own (a long-lived process
        # trains with other settings next), keeping the distributed setup of `accelerate launch`
        AcceleratorState._reset_state(reset_partial_state=False)
        self.accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=self.device_name == "cpu")
        device = self.accelerator.device
        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.mixed_precision, torch.float32)
        if components is None:
            components = self._load()
        self.scheduler = DDPMScheduler.from_config(components["scheduler"].config)
        encoder, unet, vae = components["text_encoder"], components["unet"], components["vae"]
        for frozen in (unet, vae):
            frozen.requires_grad_(False)
            frozen.eval()
            frozen.to(device, dtype=weight_dtype)
        self.latents = encode_latents(vae, self.pictures, device=device, dtype=weight_dtype)
        # the VAE is only needed again to decode validation images
        self.vae = vae if cfg.validate_every else None
        self.unet = unet
        if cfg.gradient_checkpointing:
            encoder.gradient_checkpointing_enable()
            unet.enable_gradient_checkpointing()
        encoder.requires_grad_(True)
        encoder.train()
        encoder.to(device)
        prompt = self.tokenizer(self.word, padding="max_length", truncation=True,
                                max_length=self.tokenizer.model_max_length, return_tensors="pt").input_ids
        self.prompt_ids = prompt.to(device)
        with torch.no_grad():
            # E0(p): the base encoder's output for the training prompt, fixed for the run
            self.base_embeds = encoder(self.prompt_ids)[0].detach().float()
        optimizer = _adamw(encoder, device, cfg)
        self.generator = torch.Generator(device="cpu").manual_seed(cfg.seed)
        order: list[int] = []
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, encoder, optimizer, self.generator, self.identity)
            self.step, order, self.losses = state.step, state.order, list(state.losses)
        self.encoder, self.optimizer = self.accelerator.prepare(encoder, optimizer)
        self.sampler = _Sampler(len(self.pictures), self.generator, order)

    def _load(self) -> dict[str, Any]:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel

        root = Path(self.info.path)
        if _is_world(root):  # the world model (cones2.world): its own encoder, VAE and tokenizer classes
            from ..world.model import load_world_pipeline

            with _quiet_loading():
                pipe = load_world_pipeline(root)
            return {"scheduler": pipe.scheduler, "text_encoder": pipe.text_encoder, "unet": pipe.unet, "vae": pipe.vae}
        with _quiet_loading():
            return {
                "scheduler": DDPMScheduler.from_pretrained(str(root), subfolder="scheduler"),
                "text_encoder": CLIPTextModel.from_pretrained(str(root / "text_encoder")),
                "unet": UNet2DConditionModel.from_pretrained(str(root), subfolder="unet"),
                "vae": AutoencoderKL.from_pretrained(str(root), subfolder="vae"),
            }

    # ------------------------------------------------------------------ loop

    def train_step(self) -> dict[str, float]:
        import torch

        from .loss import loss_terms

        cfg, acc = self.config, self.accelerator
        world, rank = acc.num_processes, acc.process_index
        total = cfg.batch_size * world  # every process draws the whole batch, keeps its slice
        indices = self.sampler.indices(total)
        shape = (total, *self.latents.mean.shape[1:])
        latent_noise = torch.randn(shape, generator=self.generator)
        flips = (torch.rand(total, generator=self.generator) < 0.5).tolist() if cfg.flip else [False] * total
        noise = torch.randn(shape, generator=self.generator)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (total,), generator=self.generator)
        mine = slice(rank * cfg.batch_size, (rank + 1) * cfg.batch_size)
        device = acc.device
        latents = self.latents.sample(indices[mine], latent_noise[mine], flips[mine])
        with acc.autocast():
            embeds = self.encoder(self.prompt_ids)[0].expand(cfg.batch_size, -1, -1)
            terms = loss_terms(unet=self.unet, scheduler=self.scheduler, embeds=embeds, base_embeds=self.base_embeds,
                               word_tokens=len(self.word_ids), latents=latents, noise=noise[mine].to(device),
                               timesteps=timesteps[mine].to(device), bos_weight=cfg.bos_weight, rest_weight=cfg.rest_weight)
        loss = terms.mean()
        acc.backward(loss)
        if cfg.max_grad_norm > 0:
            acc.clip_grad_norm_(self.encoder.parameters(), cfg.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return terms.summary()

    def loop(self, on_step: Callable[[TrainStep], None] | None) -> None:
        cfg = self.config
        inside_step = False
        try:
            with _deferred_interrupt() as flag:
                while self.step < cfg.steps:
                    inside_step = True
                    summary = self.train_step()
                    self.step += 1
                    self.losses.append(summary["loss"])
                    inside_step = False
                    if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                        self.save()
                    if cfg.validate_every and self.step % cfg.validate_every == 0:
                        self.validate()
                    if on_step is not None:
                        on_step(TrainStep(self.step, cfg.steps, summary["loss"], summary["diffusion"], summary["bos"],
                                          summary["rest"], time.perf_counter() - self.started))
                    if flag["stop"]:
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            # the one boundary; a first Ctrl-C arrives between steps, a second one may cut a step short
            if inside_step:
                raise TrainingInterrupted(
                    f"training stopped inside step {self.step + 1} of {cfg.steps}; no checkpoint written for it "
                    "(resume from an earlier checkpoint with --resume latest, if there is one)"
                ) from None
            path = self.save()
            raise TrainingInterrupted(
                f"training interrupted after step {self.step} of {cfg.steps}; resume with --resume latest ({path})"
            ) from None

    def save(self) -> Path:
        acc = self.accelerator
        acc.wait_for_everyone()
        path = Path(self.out) / f"checkpoint-{self.step}"
        if acc.is_main_process:
            state = TrainState(self.step, list(self.sampler.order), list(self.losses), self.identity)
            path = save_checkpoint(self.out, acc.unwrap_model(self.encoder), self.optimizer, self.generator, state,
                                   self.config.checkpoints_total_limit)
            self.checkpoints.append(str(path))
        return path

    # ------------------------------------------------------------------ residual, validation

    def base_encoder(self) -> Any:
        if getattr(self, "_base", None) is None:
            from transformers import CLIPTextModel

            with _quiet_loading():
                if _is_world(Path(self.info.path)):
                    from ..base_model import load_text_encoder

                    base = load_text_encoder(self.info.path)[1]
                else:
                    base = CLIPTextModel.from_pretrained(str(Path(self.info.path) / "text_encoder"))
            base.requires_grad_(False)
            self._base = base.eval().to(self.accelerator.device)
        return self._base

    def current_residual(self) -> Any:
        from ..residual import compute_residual

        tuned = self.accelerator.unwrap_model(self.encoder)
        was_training = tuned.training
        tuned.eval()
        try:
            return compute_residual(self.base_encoder(), tuned, self.tokenizer, self.word, templates=self.config.templates)
        finally:
            tuned.train(was_training)

    def validate(self) -> None:
        """Render the validation prompt with the residual so far, at a fixed seed, through Cones2Pipeline."""
        if not self.accelerator.is_main_process:
            return
        import torch
        from diffusers import DDIMScheduler

        from ..residual_file import make_residual
        from ..sampler import Cones2Pipeline

        residual = make_residual(self.current_residual(), self.word, self.word_ids, self.info.fingerprint,
                                 templates=self.config.templates)
        pipe = Cones2Pipeline(vae=self.vae, text_encoder=self.base_encoder(), tokenizer=self.tokenizer, unet=self.unet,
                              scheduler=DDIMScheduler.from_config(self.scheduler.config), safety_checker=None,
                              feature_extractor=None, requires_safety_checker=False)
        pipe.base_fingerprint = self.info.fingerprint
        pipe.set_progress_bar_config(disable=True)
        prompt = (self.config.validation_prompt or "a photo of a {}").format(self.word)
        with torch.no_grad(), self.accelerator.autocast():  # UNet/VAE may be half precision, the base encoder not
            image = pipe(prompt, {self.word: residual}, None, seed=self.config.seed, height=self.config.resolution,
                         width=self.config.resolution, num_inference_steps=self.config.validation_steps).images[0]
        folder = Path(self.out) / "validation"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step-{self.step:06d}.png"
        image.save(path)
        self.validation_images.append(str(path))

    def finish(self, keep_encoder: str | os.PathLike[str] | None) -> Any:
        self.accelerator.wait_for_everyone()
        tuned = self.accelerator.unwrap_model(self.encoder)
        self.residual = self.current_residual()
        if keep_encoder is not None and self.accelerator.is_main_process:
            tuned.save_pretrained(str(keep_encoder), safe_serialization=True)
            self.encoder_dir = str(Path(keep_encoder))
        return tuned


def _register(run: _Run, tuned: Any, name: str, description: str | None, checkpoint: Path | None) -> TrainResult:
    import diffusers
    import torch

    from .. import __version__
    from ..registry import open_catalogue
    from ..residual import template_set
    from ..residual_file import make_residual

    cfg, info = run.config, run.info
    training = {
        "images": [{"file": Path(p.path).name, "sha256": p.sha256} for p in run.pictures],
        "steps": cfg.steps,
        "lr": cfg.lr,
        "batch_size": cfg.batch_size,
        "seed": cfg.seed,
        "resolution": cfg.resolution,
        "flip": cfg.flip,
        "mixed_precision": cfg.mixed_precision,
        "preservation": {"bos": cfg.bos_weight, "rest": cfg.rest_weight},
        "loss": loss_summary(run.losses),
        "base_model": info.source,
        "base_fingerprint": info.fingerprint,
        "templates": {"set": cfg.templates, "count": len(template_set(cfg.templates))},
        "resumed_from": checkpoint.name if checkpoint is not None else None,
        "software": {"cones2": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__},
    }
    residual = make_residual(run.residual, run.word, run.word_ids, info.fingerprint, {"training": training},
                             templates=cfg.templates)
    del tuned  # the tuned encoder is dropped here unless it was saved with keep_encoder
    with open_catalogue() as catalogue:
        record = catalogue.add(residual, name, base=info, description=description)
    return TrainResult(
        name=record.name, version=record.version, sha256=record.sha256, word=run.word, token_ids=list(run.word_ids),
        steps=run.step, resumed_from=str(checkpoint) if checkpoint is not None else None, output_dir=str(run.out),
        checkpoints=run.checkpoints, validation_images=run.validation_images, encoder_dir=run.encoder_dir,
        metadata=training,
    )
