"""What every training loop of t2i shares: a run folder that survives being stopped.

A run folder holds the model to use (`config.json` + one safetensors file per network:
the EMA weights), `training/` (raw weights, optimizer states, step and elapsed time:
what `--resume` reads), `loss.csv` and `loss.png`. Randomness at step k is seeded from
(seed, k) and the batches of step k depend only on (seed, k), so a resumed run takes the
same steps the uninterrupted one would. Ctrl-C or SIGTERM save a checkpoint and stop.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import signal
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from .checkpoints import (load_optimizer, load_state, load_weights, replace_dir, save_model, save_optimizer,
                          save_weights, write_json)
from .errors import UserError
from .plots import line_plot

TRAINING_DIR = "training"


@dataclass
class RunConfig:
    """What every training run has; a loop's config adds its own fields (and defaults)."""

    data: str = "shapes"
    image_size: int = 32
    batch_size: int = 64
    max_steps: int = 10_000
    lr: float = 5e-4
    warmup_steps: int = 200
    cooldown_steps: int = 0  # the last steps, over which the learning rate falls linearly to zero
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    save_every: int = 1000
    sample_every: int = 1000
    log_every: int = 10
    num_samples: int = 16
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"

    @classmethod
    def from_dict(cls, values: dict):
        """The config saved in a run's config.json (keys of older versions are ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class StepBatchSampler(torch.utils.data.Sampler):
    """Index batches for steps start..stop-1; the batch of step k depends only on (seed, k).

    Each epoch is a fresh permutation seeded by (seed, epoch); the last partial batch of
    an epoch is dropped so that every batch has the same size. With `weights` (one per
    image), an epoch is instead `size` draws with replacement, image i with probability
    ∝ weights[i].
    """

    def __init__(self, size: int, batch_size: int, seed: int, start: int, stop: int,
                 weights: torch.Tensor | None = None):
        if size < batch_size:
            raise UserError(f"the dataset has {size} images, fewer than one batch of {batch_size}: lower --batch-size")
        if weights is not None and len(weights) != size:
            raise ValueError(f"{len(weights)} weights for {size} images")
        self.size, self.batch_size, self.seed, self.start, self.stop = size, batch_size, seed, start, stop
        self.per_epoch, self.weights = size // batch_size, weights

    def epoch_order(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        if self.weights is None:
            return torch.randperm(self.size, generator=generator)
        return torch.multinomial(self.weights, self.size, replacement=True, generator=generator)

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self):
        epoch, perm = -1, None
        for step in range(self.start, self.stop):
            if step // self.per_epoch != epoch:
                epoch = step // self.per_epoch
                perm = self.epoch_order(epoch)
            offset = (step % self.per_epoch) * self.batch_size
            yield perm[offset: offset + self.batch_size].tolist()


def group_weights(labels: Sequence) -> torch.Tensor:
    """A weight per item, 1 / (number of items with its label): drawn by these weights,
    every label comes up equally often, however many items it has."""
    counts = Counter(labels)
    return torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.float64)


def step_loader(dataset, config: RunConfig, start: int, device: torch.device,
                weights: torch.Tensor | None = None) -> torch.utils.data.DataLoader:
    """The batches of steps start..max_steps-1 (see `StepBatchSampler`)."""
    sampler = StepBatchSampler(len(dataset), config.batch_size, config.seed, start, config.max_steps, weights)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=config.num_workers,
                                       pin_memory=device.type == "cuda")


def already_done(out: Path, start: int, max_steps: int) -> bool:
    if start >= max_steps:
        print(f"{out} is already at step {start} of {max_steps}: raise --max-steps to train further")
    return start >= max_steps


def scheduled_lr(step: int, config: RunConfig) -> float:
    """Warm-up, stable, decay: linear warm-up to `config.lr`, constant, then a linear fall to zero
    over the last `config.cooldown_steps` of `config.max_steps` (Hägele et al. 2024: a cooldown at
    the end matches a cosine schedule without fixing the run's length from its first step, so a run
    can be lengthened on resuming and cooled when its budget ends)."""
    warmup = min(1.0, (step + 1) / max(1, config.warmup_steps))
    cooldown = min(1.0, (config.max_steps - step) / config.cooldown_steps) if config.cooldown_steps else 1.0
    return config.lr * warmup * max(0.0, cooldown)


def optimize(optimizer: torch.optim.Optimizer, loss: torch.Tensor, parameters, lr: float, grad_clip: float) -> None:
    """One step of gradient descent on `loss`: gradients, learning rate, clipping, update."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    for group in optimizer.param_groups:
        group["lr"] = lr
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(list(parameters), grad_clip)
    optimizer.step()


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


def read_state(out: Path) -> dict:
    """The saved {"step", "seconds"} of a run's training state."""
    path = out / TRAINING_DIR / "state.json"
    if not path.is_file():
        raise UserError(f"{str(path.parent)!r} has no state.json: the training state is incomplete")
    state = json.loads(path.read_text())
    return {"step": int(state["step"]), "seconds": float(state.get("seconds", 0.0))}


def check_new_run(out: Path) -> None:
    if (out / TRAINING_DIR).exists():
        raise UserError(f"{str(out)!r} already holds a training run: pass --resume to continue it, or pick a new --out")


def save_checkpoint(out: Path, state: dict, model: torch.nn.ModuleDict, ema: Mapping[str, torch.nn.Module],
                    optimizers: Mapping[str, torch.optim.Optimizer], config: dict) -> None:
    """The EMA networks as the run's model folder, and the training state (`state` holds
    "step" and "seconds") beside it."""
    tmp = out / (TRAINING_DIR + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_weights(tmp / "model.safetensors", model.state_dict())
    for name, optimizer in optimizers.items():
        save_optimizer(tmp / f"{name}.safetensors", optimizer)
    write_json(tmp / "state.json", state)
    replace_dir(tmp, out / TRAINING_DIR)
    save_model(out, ema, {**config, "step": state["step"]})


def load_training_state(out: Path, model: torch.nn.Module, optimizers: Mapping[str, torch.optim.Optimizer]) -> dict:
    """Restore the raw weights and optimizers a checkpoint saved; returns its state."""
    state_dir = out / TRAINING_DIR
    load_state(model, load_weights(state_dir / "model.safetensors"), state_dir)
    for name, optimizer in optimizers.items():
        load_optimizer(state_dir / f"{name}.safetensors", optimizer)
    return read_state(out)


class LossLog:
    """loss.csv (step, seconds of training so far, then one column per loss) and its plot."""

    def __init__(self, out: Path, columns: tuple[str, ...], up_to_step: int | None = None):
        self.path, self.plot_path, self.columns = out / "loss.csv", out / "loss.png", columns
        self.rows: list[dict] = []
        if self.path.is_file():
            with self.path.open() as f:
                self.rows = [{k: float(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
            self.rows = [r for r in self.rows if up_to_step is None or r["step"] <= up_to_step]

    def append(self, step: int, seconds: float, values: dict[str, float]) -> None:
        """Values of a step already logged join its row."""
        if self.rows and self.rows[-1]["step"] == step:
            self.rows[-1].update(values)
        else:
            self.rows.append({"step": step, "seconds": round(seconds, 2), **values})

    def write(self, title: str) -> None:
        with self.path.open("w", newline="") as f:
            writer = csv.DictWriter(f, ["step", "seconds", *self.columns], extrasaction="ignore")
            writer.writeheader()
            writer.writerows({**r, "step": int(r["step"])} for r in self.rows)
        curves = {c: ([r["step"] for r in self.rows if c in r], [r[c] for r in self.rows if c in r])
                  for c in self.columns}
        curves = {c: xy for c, xy in curves.items() if xy[0] and min(xy[1]) > 0}
        if curves:
            line_plot(curves, title, "step", "loss (log scale)", log_y=True).save(self.plot_path)


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
