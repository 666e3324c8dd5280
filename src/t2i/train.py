"""Training a diffusion model: one readable loop (Algorithm 1) with EMA, checkpoints and resume.

A run folder holds the model (`config.json` + one safetensors file per network, the EMA
weights that inference uses), `training/` (raw weights, optimizer, step: what `--resume`
reads), `loss.csv` and `loss.png`, and `samples/step_NNNNNN.png`. Randomness at step k is
seeded from (seed, k), so a resumed run takes the same steps the uninterrupted one would.

Given a `TextEncoderConfig`, the run is text-to-image: the dataset's captions make a word
tokenizer, a text encoder τ_θ is trained jointly with the U-Net (as in Rombach et al.
2022, §3.3), and each caption is replaced by the empty one with probability `p_uncond`,
so that the same network learns ε_θ(x_t, t, ∅) for classifier-free guidance.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import signal
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .checkpoints import (build_components, diffusion_from_config, load_optimizer, load_state, load_weights,
                          model_config, read_config, replace_dir, save_model, save_optimizer, save_weights,
                          weights_path, write_json)
from .data import captions_of, load_dataset
from .errors import UserError
from .images import make_grid, save_png
from .models.text import TextEncoderConfig
from .models.tokenizers import Tokenizer, WordTokenizer, load_tokenizer
from .models.unet import UNetConfig
from .pipeline import Pipeline, resolve_device, text_condition
from .plots import line_plot

TRAINING_DIR = "training"


@dataclass
class TrainConfig:
    """Everything a training run depends on besides the network; saved in config.json."""

    data: str = "shapes"
    image_size: int = 32
    batch_size: int = 64
    max_steps: int = 10_000
    lr: float = 5e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    schedule: str = "linear"
    num_timesteps: int = 1000
    prediction_type: str = "epsilon"
    min_snr_gamma: float | None = None
    p_uncond: float = 0.1
    save_every: int = 1000
    sample_every: int = 1000
    log_every: int = 10
    num_samples: int = 16
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class StepBatchSampler(torch.utils.data.Sampler):
    """Index batches for steps start..max_steps-1; the batch of step k depends only on (seed, k).

    Each epoch is a fresh permutation seeded by (seed, epoch); the last partial batch of
    an epoch is dropped so that every batch has the same size.
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int, stop: int):
        if size < batch_size:
            raise UserError(f"the dataset has {size} images, fewer than one batch of {batch_size}: lower --batch-size")
        self.size, self.batch_size, self.seed, self.start, self.stop = size, batch_size, seed, start, stop
        self.per_epoch = size // batch_size

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        epoch, perm = -1, None
        for step in range(self.start, self.stop):
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            offset = (step % self.per_epoch) * self.batch_size
            yield perm[offset: offset + self.batch_size].tolist()


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to `lr`, then constant."""
    return config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))


def read_step(state_dir: Path) -> int:
    path = state_dir / "state.json"
    if not path.is_file():
        raise UserError(f"{str(state_dir)!r} has no state.json: the training state is incomplete")
    return int(json.loads(path.read_text())["step"])


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**63)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """θ_ema ← decay θ_ema + (1 - decay) θ."""
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1.0 - decay)


def ema_decay_at(step: int, decay: float) -> float:
    """A short warm-up of the EMA so early checkpoints are not dominated by the random init."""
    return min(decay, (1 + step) / (10 + step))


def save_checkpoint(out: Path, step: int, model: torch.nn.ModuleDict, ema: torch.nn.ModuleDict, optimizer,
                    config: dict) -> None:
    """The EMA networks as the run's model folder, and the training state beside it."""
    tmp = out / (TRAINING_DIR + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_weights(tmp / "model.safetensors", model.state_dict())
    save_optimizer(tmp / "optimizer.safetensors", optimizer)
    write_json(tmp / "state.json", {"step": step})
    replace_dir(tmp, out / TRAINING_DIR)
    save_model(out, ema, {**config, "step": step})


def read_loss_log(path: Path, up_to_step: int | None = None) -> list[tuple[int, float]]:
    if not path.is_file():
        return []
    with path.open() as f:
        rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
    return [r for r in rows if up_to_step is None or r[0] <= up_to_step]


def write_loss_log(path: Path, rows: list[tuple[int, float]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "loss"])
        writer.writerows(rows)


def plot_loss(rows: list[tuple[int, float]], path: Path) -> None:
    if rows:
        steps, losses = zip(*rows)
        line_plot({"L_simple": (steps, losses)}, "training loss", "step", "loss (log scale)", log_y=True).save(path)


@torch.no_grad()
def save_sample_grid(path: Path, pipe: Pipeline, prompts: list[str], config: TrainConfig, step: int) -> None:
    """A fixed-seed grid of EMA samples (DDIM, 50 steps; guided for a text model) to watch training."""
    steps = min(50, pipe.diffusion.num_timesteps)
    images = pipe(prompts, sampler="ddim", steps=steps, seed=config.seed, progress=False)
    parameters = {"step": step, "sampler": "ddim", "steps": steps, "seed": config.seed, "cfg": pipe.defaults["cfg"]}
    if any(prompts):
        parameters["prompts"] = prompts
    save_png(make_grid(images), path, parameters)


def sample_prompts(config: TrainConfig, captioned: bool) -> list[str]:
    """What the sample grids show: captions of the first test images, or nothing (unconditional)."""
    if not captioned:
        return [""] * config.num_samples
    test = load_dataset(config.data, config.image_size, "test", captioned=True)
    return [test.caption(i % len(test)) for i in range(config.num_samples)]


def make_tokenizer(dataset, text_config: TextEncoderConfig) -> Tokenizer:
    """A word tokenizer over every caption of the training set, as long as the encoder reads."""
    captions = captions_of(dataset)
    tokenizer = WordTokenizer.build(captions, max_length=text_config.max_length)
    longest = max(len(tokenizer.encode(c)) for c in captions)
    if longest > text_config.max_length:
        warnings.warn(f"the longest caption is {longest} tokens and the text encoder reads "
                      f"{text_config.max_length}: longer captions are cut (raise --text-length)", stacklevel=2)
    return tokenizer


def train(unet_config: UNetConfig, config: TrainConfig, out_dir: str | Path, resume: bool = False,
          text_config: TextEncoderConfig | None = None) -> Path:
    """Train ε_θ on L_simple (Algorithm 1), text-conditioned if `text_config` is given, and
    write the run folder `out_dir`.

    For a text run the U-Net's `context_dim` is set to the encoder's width, and so is its
    `pooled_dim` if that is set at all (any value turns the pooled embedding on).
    """
    out = Path(out_dir)
    tokenizer = None
    if resume:
        saved = read_config(out)
        unet_config = UNetConfig.from_dict(saved["unet"])
        config = TrainConfig.from_dict({**saved["train"], "max_steps": config.max_steps})
        if "text_encoder" in saved:
            text_config = TextEncoderConfig.from_dict(saved["text_encoder"])
            tokenizer = load_tokenizer(saved["tokenizer"], out)
    elif (out / TRAINING_DIR).exists():
        raise UserError(f"{str(out)!r} already holds a training run: pass --resume to continue it, or pick a new --out")
    if not 0 <= config.p_uncond < 1:
        raise UserError(f"p_uncond is a probability below 1, got {config.p_uncond}")
    captioned = text_config is not None
    device = resolve_device(config.device)
    dataset = load_dataset(config.data, config.image_size, "train", captioned=captioned)
    if captioned and tokenizer is None:
        tokenizer = make_tokenizer(dataset, text_config)
        text_config = dataclasses.replace(text_config, vocab_size=tokenizer.vocab_size,
                                          eos_token_id=tokenizer.eos_id)
        unet_config = dataclasses.replace(unet_config, context_dim=text_config.width,
                                          pooled_dim=text_config.width if unet_config.pooled_dim else None)
    diffusion_settings = {"schedule": config.schedule, "num_timesteps": config.num_timesteps,
                          "prediction_type": config.prediction_type}
    run_config = model_config(unet_config, diffusion_settings, text_config, tokenizer, image_size=config.image_size,
                              train=dataclasses.asdict(config))
    diffusion = diffusion_from_config(run_config)

    torch.manual_seed(config.seed)
    model = build_components(run_config).to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval()
    ema_pipe = Pipeline(ema["unet"], diffusion, config.image_size, ema["text_encoder"] if captioned else None,
                        tokenizer, name=str(out))
    prompts = sample_prompts(config, captioned)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start = 0
    if resume:
        state_dir = out / TRAINING_DIR
        load_state(model, load_weights(state_dir / "model.safetensors"), state_dir)
        for name, module in ema.items():
            load_state(module, load_weights(weights_path(out, name)), out)
        load_optimizer(state_dir / "optimizer.safetensors", optimizer)
        start = read_step(state_dir)

    out.mkdir(parents=True, exist_ok=True)
    (out / "samples").mkdir(exist_ok=True)
    log_path, plot_path = out / "loss.csv", out / "loss.png"
    log_rows = read_loss_log(log_path, start)
    if start >= config.max_steps:
        print(f"{out} is already at step {start} of {config.max_steps}: raise --max-steps to train further")
        return out

    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=StepBatchSampler(len(dataset), config.batch_size, config.seed, start, config.max_steps),
        num_workers=config.num_workers, pin_memory=device.type == "cuda",
    )
    model.train()
    step, window, saved_step = start, [], start
    bar = tqdm(total=config.max_steps, initial=start, desc="train", dynamic_ncols=True)
    with GracefulStop() as stop:
        for batch in loader:
            x0, captions = batch if captioned else (batch, None)
            x0 = x0.to(device, non_blocking=True)
            torch.manual_seed(step_seed(config.seed, step))  # dropout, reproducible across resume
            generator = torch.Generator().manual_seed(step_seed(config.seed, step))
            cond = {}
            if captioned:
                dropped = (torch.rand(len(captions), generator=generator) < config.p_uncond).tolist()
                ids = tokenizer(["" if drop else c for c, drop in zip(captions, dropped)], truncate=True)
                cond = text_condition(model["text_encoder"], ids.to(device), unet_config)
            loss = diffusion.training_loss(model["unet"], x0, generator=generator, min_snr_gamma=config.min_snr_gamma,
                                           **cond).mean()
            if not torch.isfinite(loss):
                raise UserError(
                    f"the loss became {loss.item()} at step {step}; the last checkpoint (step {saved_step}) is "
                    f"intact: resume from it with a lower --lr (now {config.lr})"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, config)
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            update_ema(ema, model, ema_decay_at(step, config.ema_decay))
            step += 1
            window.append(loss.item())
            bar.update(1)
            if step % config.log_every == 0 or step == config.max_steps:
                log_rows.append((step, sum(window) / len(window)))
                bar.set_postfix(loss=f"{log_rows[-1][1]:.4f}", lr=f"{learning_rate(step, config):.2e}")
                window = []
            if step % config.save_every == 0 or step == config.max_steps or stop.requested:
                save_checkpoint(out, step, model, ema, optimizer, run_config)
                saved_step = step
                write_loss_log(log_path, log_rows)
                plot_loss(log_rows, plot_path)
            if step % config.sample_every == 0 or step == config.max_steps:
                save_sample_grid(out / "samples" / f"step_{step:06d}.png", ema_pipe, prompts, config, step)
            if stop.requested:
                bar.close()
                print(f"\nstopped at step {step}: checkpoint saved in {out}; continue with --resume")
                return out
    bar.close()
    return out


class GracefulStop:
    """Ctrl-C or SIGTERM (a stopped job or session) ask the loop to save and stop after the
    current step; a second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False
        self.previous = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "GracefulStop":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

