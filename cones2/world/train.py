"""Train the world model on procedural scenes: deterministic, checkpointed, resumable.

``python -m cones2.world.train --out DIR --steps N [--resume]``

Every step's data is a pure function of ``(seed, step)``: the scenes, the dropped
captions, the timesteps and the noise. A checkpoint holds the weights, their EMA, the
optimiser state and the step, so a run stopped at any point and resumed from its last
checkpoint computes the same weights as one that never stopped. Checkpoints
(``DIR/checkpoint-NNNNNN``) are written to a temporary folder and renamed into place;
each contains ``pipeline/``, a from_pretrained-loadable world model with the EMA weights.
``DIR/train.log`` gets one JSON line per logged step (loss, lr, seconds) and per
evaluation (caption accuracy of the EMA weights on fixed prompts).

Objective (WORLD-NOTES): cosine schedule, v-prediction, min-SNR-5 weighting, AdamW with
warm-up, gradient clipping, 10 % caption dropout, EMA. Optional cosine learning-rate
decay from ``lr`` to ``lr * decay_final`` over steps ``decay_start`` .. ``decay_end``; it
may be added to a resumed run as long as it starts at or after the resumed step (the steps
already taken keep their learning rate), e.g.
``--resume --decay-start 1900 --decay-end 8000 --decay-final 0.1``. ``--init-from CHECKPOINT``
starts a new run from another run's weights (a fine-tune, e.g. with ``--pattern-rate``);
the checkpoint's path is part of the new run's settings.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UsageError

CHECKPOINT_FORMAT = "cones2-world-checkpoint"
CHECKPOINT_VERSION = 1
# settings that do not change the weights: a resumed run may change them
_SCHEDULE_FIELDS = ("checkpoint_every", "keep", "eval_every", "eval_prompts")
# the learning-rate decay: a resumed run may add or change it from its resumed step on
_DECAY_FIELDS = ("decay_start", "decay_end", "decay_final")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that changes the trained weights (plus how often to checkpoint/evaluate)."""

    seed: int = 0
    encoder: str = "phrase"
    batch_size: int = 32
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    ema_decay: float = 0.998
    caption_dropout: float = 0.1
    min_snr: float = 5.0
    checkpoint_every: int = 250
    keep: int = 2
    eval_every: int = 0
    eval_prompts: int = 32
    decay_start: int = 0  # cosine decay of the learning rate: off while decay_end <= decay_start
    decay_end: int = 0
    decay_final: float = 0.1  # the learning rate at decay_end, as a fraction of lr
    pattern_rate: float = 0.0  # chance of an uncaptioned pattern on each object (see scenes.sample_scene)
    init_from: str = ""  # a checkpoint folder of another run: start from its weights (not its optimiser or step)

    def __post_init__(self) -> None:
        from .model import ENCODERS

        if self.encoder not in ENCODERS:
            raise UsageError(f"encoder {self.encoder!r}: choose one of {', '.join(ENCODERS)}")
        for name in ("batch_size", "checkpoint_every", "keep"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1")
        if not 0.0 <= self.pattern_rate <= 1.0:
            raise UsageError("pattern_rate must be between 0 and 1")
        if not 0.0 <= self.decay_final <= 1.0:
            raise UsageError("decay_final must be between 0 and 1")
        if self.decay_start < 0 or self.decay_end < 0:
            raise UsageError("decay_start and decay_end must be >= 0")

    def lr_at(self, step: int) -> float:
        """The learning rate of (0-based) ``step``: linear warm-up, then constant or cosine decay."""
        factor = min(1.0, (step + 1) / max(1, self.warmup))
        if self.decay_end > self.decay_start and step >= self.decay_start:
            progress = min(1.0, (step - self.decay_start) / (self.decay_end - self.decay_start))
            factor *= self.decay_final + (1.0 - self.decay_final) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.lr * factor

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


# --------------------------------------------------------------------------- data


def make_batch(config: TrainConfig, step: int, tokenizer: Any) -> tuple[Any, Any, Any, Any]:
    """``(images in [-1, 1], input_ids, timesteps, noise)`` of one step; a function of (seed, step)."""
    import torch

    from .scenes import scene_batch

    b = config.batch_size
    base = config.seed * 1_000_000_000 + step * b
    images, captions, _ = scene_batch(range(base, base + b), pattern_rate=config.pattern_rate)
    drop = np.random.default_rng([config.seed, step, 1]).random(b) < config.caption_dropout
    captions = ["" if d else c for c, d in zip(captions, drop, strict=True)]
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    g = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
    t = torch.randint(0, 1000, (b,), generator=g)
    noise = torch.randn(x.shape, generator=g)
    return x, ids, t, noise


# --------------------------------------------------------------------------- state


class Trainer:
    """Models, EMA copies and optimiser of one run."""

    def __init__(self, config: TrainConfig) -> None:
        import copy

        import torch

        from .model import build_scheduler, build_text_encoder, build_tokenizer, build_unet

        self.config = config
        self.tokenizer = build_tokenizer()
        self.unet = build_unet(config.seed + 1)
        self.text_encoder = build_text_encoder(self.tokenizer, config.encoder, config.seed)
        self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.ema_text_encoder = copy.deepcopy(self.text_encoder).requires_grad_(False)
        self.scheduler = build_scheduler()
        self.alphas = self.scheduler.alphas_cumprod.float()
        params = list(self.unet.parameters()) + list(self.text_encoder.parameters())
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0

    def lr_at(self, step: int) -> float:
        return self.config.lr_at(step)

    def train_step(self) -> float:
        import torch

        c = self.config
        x, ids, t, noise = make_batch(c, self.step, self.tokenizer)
        a = self.alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x
        self.unet.train()
        self.text_encoder.train()
        cond = self.text_encoder(ids)[0]
        pred = self.unet(xt, t, encoder_hidden_states=cond).sample
        snr = self.alphas[t] / (1 - self.alphas[t])
        weight = torch.clamp(snr, max=c.min_snr) / (snr + 1)
        loss = (weight * ((pred - target) ** 2).mean(dim=(1, 2, 3))).mean()
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        self.optimizer.step()
        decay = min(c.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for model, ema in ((self.unet, self.ema_unet), (self.text_encoder, self.ema_text_encoder)):
                for p, e in zip(model.parameters(), ema.parameters(), strict=True):
                    e.mul_(decay).add_(p.detach(), alpha=1 - decay)
        self.step += 1
        return loss.item()

    def ema_pipeline(self) -> Any:
        from .model import assemble

        pipe = assemble(self.ema_unet, self.ema_text_encoder, self.tokenizer)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # ------------------------------------------------------------------ checkpoints

    def _tensors(self) -> dict[str, Any]:
        out = {}
        for prefix, model in (("unet.", self.unet), ("text_encoder.", self.text_encoder),
                              ("ema_unet.", self.ema_unet), ("ema_text_encoder.", self.ema_text_encoder)):
            out.update({prefix + k: v.detach().contiguous().clone() for k, v in model.state_dict().items()})
        return out

    def save(self, out: Path) -> Path:
        """Write ``checkpoint-NNNNNN`` atomically (temporary folder, then rename); prune old ones."""
        import torch
        from safetensors.torch import save_file

        from .model import save_world_pipeline

        final = out / f"checkpoint-{self.step:06d}"
        tmp = out / f".tmp-checkpoint-{self.step:06d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(self._tensors(), str(tmp / "weights.safetensors"))
        torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
        info = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, "step": self.step,
                "config": asdict(self.config)}
        save_world_pipeline(self.ema_pipeline(), tmp / "pipeline",
                            {"name": "cones2-world", "encoder": self.config.encoder, "seed": self.config.seed,
                             "step": self.step, "weights": "ema"})
        (tmp / "state.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoints(out)[: -self.config.keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def load(self, folder: Path) -> None:
        import torch

        info = self.load_weights(folder)
        self.optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
        self.step = int(info["step"])

    def load_weights(self, folder: Path) -> dict[str, Any]:
        """The weights (raw and EMA) of checkpoint ``folder``; returns its state."""
        from safetensors.torch import load_file

        info = read_state(folder)
        if info["config"].get("encoder", "phrase") != self.config.encoder:
            raise UsageError(f"{folder}: a {info['config'].get('encoder')!r}-encoder checkpoint, "
                             f"not {self.config.encoder!r}")
        tensors = load_file(str(folder / "weights.safetensors"))
        for prefix, model in (("unet.", self.unet), ("text_encoder.", self.text_encoder),
                              ("ema_unet.", self.ema_unet), ("ema_text_encoder.", self.ema_text_encoder)):
            model.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        return info


def read_state(folder: Path) -> dict[str, Any]:
    path = folder / "state.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        raise UsageError(f"{folder}: not a world checkpoint (no readable state.json)") from None
    if info.get("format") != CHECKPOINT_FORMAT or info.get("format_version") != CHECKPOINT_VERSION:
        raise UsageError(f"{folder}: unknown checkpoint format {info.get('format')!r} v{info.get('format_version')!r}")
    return info


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints in ``out``, oldest first."""
    if not out.is_dir():
        return []
    return sorted(p for p in out.glob("checkpoint-*") if (p / "state.json").is_file())


# --------------------------------------------------------------------------- run


def train(
    out: str | Path,
    steps: int,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    log_every: int = 25,
) -> Trainer:
    """Train until ``steps`` (total, counting resumed ones); returns the trainer."""
    out = Path(out)
    found = checkpoints(out) if resume else []
    if found:
        saved = TrainConfig.from_dict(read_state(found[-1])["config"])
        if config is not None:
            skip = _SCHEDULE_FIELDS + _DECAY_FIELDS
            changed = sorted(k for k, v in asdict(config).items() if k not in skip and asdict(saved)[k] != v)
            if changed:
                raise UsageError(f"{out}: resuming with different settings ({', '.join(changed)}); use a new --out")
            at = int(read_state(found[-1])["step"])
            if any(config.lr_at(s) != saved.lr_at(s) for s in range(at)):
                raise UsageError(f"{out}: the new learning-rate decay changes steps already taken; "
                                 f"start it at step {at} or later")
        config = config or saved
    config = config or TrainConfig()
    trainer = Trainer(config)
    if found:
        trainer.load(found[-1])
    elif checkpoints(out):
        raise UsageError(f"{out} already holds checkpoints: pass --resume, or use a new folder")
    elif config.init_from:
        trainer.load_weights(Path(config.init_from))
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "train.log").open("a")
    losses: list[float] = []
    started = time.perf_counter()
    try:
        while trainer.step < steps:
            loss = trainer.train_step()
            losses.append(loss)
            if on_step is not None:
                on_step(trainer.step, loss)
            if trainer.step % log_every == 0 or trainer.step == steps:
                log.write(json.dumps({"step": trainer.step, "loss": float(np.mean(losses)), "lr": trainer.lr_at(trainer.step - 1),
                                      "seconds": round(time.perf_counter() - started, 1)}) + "\n")
                log.flush()
                losses = []
            if trainer.step % config.checkpoint_every == 0 or trainer.step == steps:
                trainer.save(out)
            if config.eval_every and trainer.step % config.eval_every == 0:
                from .evaluate import caption_accuracy

                result = caption_accuracy(trainer.ema_pipeline(), n=config.eval_prompts)
                log.write(json.dumps({"step": trainer.step, "eval": result.summary()}) + "\n")
                log.flush()
    finally:
        log.close()
    return trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cones2.world.train", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="run folder (checkpoints, train.log)")
    parser.add_argument("--steps", type=int, default=8000, help="total steps (default 8000)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--export", metavar="DIR", help="after training, copy the newest pipeline/ to DIR")
    parser.add_argument("--export-weights", metavar="FILE",
                        help="after training, write the newest EMA weights as one safetensors file (the shipped "
                             "cones2/world/weights/world.safetensors is made this way)")
    for f in fields(TrainConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
    try:
        found = checkpoints(Path(args.out)) if args.resume else []
        if found:  # resuming: the saved settings, with the ones given on the command line changed
            saved = TrainConfig.from_dict(read_state(found[-1])["config"])
            config = replace(saved, **given) if given else None
        else:
            config = TrainConfig(**given)
        trainer = train(args.out, args.steps, config, resume=args.resume)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code if hasattr(exc, "exit_code") else 2
    if args.export:
        newest = checkpoints(Path(args.out))[-1] / "pipeline"
        shutil.copytree(newest, args.export, dirs_exist_ok=True)
    if args.export_weights:
        from .pretrained import export_weights

        export_weights(checkpoints(Path(args.out))[-1] / "pipeline", args.export_weights)
    print(json.dumps({"step": trainer.step, "out": str(args.out)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
