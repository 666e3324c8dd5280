"""The training loop every model of t2i shares, around a step function each training gives it.

`run_steps` owns what runs have in common: the batches of each step (`step_loader`), the
seed of each step, the loss log and the progress bar, when to save, probe, keep and sample
(`Hooks`), a stop on Ctrl-C or SIGTERM (after saving a checkpoint), on bad input met by a
step (after saving the steps taken since the last checkpoint) and on a loss that is not
finite (before saving, so the last checkpoint stays intact). A save that fails (a full disk)
stops it with the error `run_folder.save_checkpoint` raises. A resumed run is the same call
from the state its checkpoint holds (`run_folder.restore`): since the batches and the
randomness of step k depend only on (seed, k), it takes the steps the uninterrupted run would.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from .batches import step_loader, step_seed
from .config import RunConfig
from .distributed import World
from .loss_log import LossLog
from .optimization import scheduled_lr

# step(batch, k): update the networks on the batch of step k; returns the losses it took, by name
StepFn = Callable[[Any, int], Mapping[str, torch.Tensor]]


@dataclass
class Hooks:
    """What a training does besides its steps, each after step k: `save` every `save_every` steps,
    at the last and on a stop request; `sample` every `sample_every` steps and at the last;
    `probe` and `keep` at their own periods. Probing and sampling are not training time. `save`
    comes last, so that a run stopped after a checkpoint has what the steps before it made."""

    save: Callable[[dict], None]  # write the checkpoint of the training state {"step", "seconds", "loss_window"}
    sample: Callable[[int], None]  # write what the model makes at step k
    probe: Callable[[int], dict[str, float]] | None = None  # losses to log, every `probe_every` steps
    probe_every: int = 0
    keep: Callable[[int, float], None] | None = None  # keep the model of step k, every `keep_every` steps
    keep_every: int = 0


@dataclass
class TrainResult:
    """What a call to train did: the run folder `out`, the step it started at and the one it
    reached, and whether a stop request ended it before `max_steps` (with a checkpoint saved)."""

    out: Path
    start: int
    step: int
    max_steps: int
    stopped: bool = False

    @property
    def already_done(self) -> bool:
        """The run was at `max_steps` already: nothing was trained."""
        return self.start >= self.max_steps

    def __str__(self) -> str:
        if self.stopped:
            return f"stopped at step {self.step}: checkpoint saved in {self.out}; resume the run to continue"
        if self.already_done:
            return f"{self.out} is already at step {self.start} of {self.max_steps}: raise max_steps to train further"
        return f"trained to step {self.step}: model saved in {self.out}"


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


def due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def check_finite(losses: dict[str, float], step: int, saved_step: int, lr: float) -> None:
    """Stop on a loss that is not finite, before anything of this step is saved."""
    for name, value in losses.items():
        if not math.isfinite(value):
            what = "the loss" if name == "loss" else f"the {name} loss"
            advice = (f"the last checkpoint (step {saved_step}) is intact: resume from it" if saved_step
                      else "no checkpoint was saved yet: start again")
            raise UserError(f"{what} became {value} at step {step}; {advice} with a lower lr (now {lr})")


def run_steps(step: StepFn, dataset, config: RunConfig, out: Path, state: dict, hooks: Hooks, *,
              columns: tuple[str, ...], device: torch.device, weights: torch.Tensor | None = None,
              desc: str = "train", title: str = "training loss", world: World = World()) -> TrainResult:
    """Train from `state` ({"step", "seconds"}) to `config.max_steps` on batches of `dataset`
    (drawn by `weights` if given), logging the losses `columns` (those `step` returns, then
    those `hooks.probe` returns) to loss.csv every `config.log_every` steps. In a `world` of several
    processes each takes its share of every batch, the losses logged are the whole batch's, and
    rank 0 alone logs, probes, samples and saves (`training.distributed`)."""
    start = state["step"]
    if world.main:
        out.mkdir(parents=True, exist_ok=True)
    log = LossLog(out, columns, start) if world.main else None
    if start >= config.max_steps:
        return TrainResult(out, start, start, config.max_steps)
    batches = iter(step_loader(dataset, config, start, device, weights, world.share(config.batch_size)))
    k, saved_step, seconds = start, start, state["seconds"]
    # the losses since the last row, saved with a checkpoint: a resumed run logs the rows a straight one does
    window = {name: list(values) for name, values in state.get("loss_window", {}).items()}
    clock = time.perf_counter() - seconds
    # the seeds count epochs, a run counts steps: the plot says how many steps an epoch is
    x_label = f"step (an epoch of {len(dataset):,} images is {math.ceil(len(dataset) / config.batch_size):,} steps)"

    def save() -> None:  # every rank waits for rank 0's checkpoint and learns if it failed (`World.on_main`)
        nonlocal saved_step
        world.on_main(lambda: (hooks.save({"step": k, "seconds": seconds, "loss_window": window}),
                               log.plot(title, x_label)))
        saved_step = k

    with tqdm(total=config.max_steps, initial=start, desc=desc, dynamic_ncols=True,
              disable=not world.main) as bar, GracefulStop() as stop:
        while k < config.max_steps:
            try:  # a step meets bad input (an unreadable image) before it changes the networks
                batch, failure = next(batches), None
            except UserError as error:
                batch, failure = None, UserError(worker_message(str(error)))
            if world.any(failure is not None):  # every process stops, not only the one whose share was bad
                failure = failure or UserError(f"another process met bad input at step {k} (its log says which)")
                if k > saved_step:  # all wait for it: torchrun ends the group when the first process exits failing
                    try:
                        save()
                    except Exception as error:  # both said: the input to fix, and what the save left
                        raise UserError(f"{failure}; {error}") from None
                if k == 0:
                    raise failure
                raise UserError(f"{failure}; the checkpoint of step {k} is saved: resume once that is fixed") from None
            torch.manual_seed(step_seed(config.seed, k))  # dropout, reproducible across resume
            losses = world.mean({name: loss.item() for name, loss in step(batch, k).items()})
            check_finite(losses, k, saved_step, config.lr)
            k += 1
            for name, value in losses.items():
                window.setdefault(name, []).append(value)
            bar.update(1)
            seconds = time.perf_counter() - clock
            row = {}
            if due(k, config.log_every) or k == config.max_steps:
                row = {name: sum(values) / len(values) for name, values in window.items()}
                bar.set_postfix({name: f"{mean:.4g}" for name, mean in row.items()},
                                lr=f"{scheduled_lr(k, config):.2e}")
                if due(k, config.log_every):  # the last step's row (off the period) leaves its window open
                    window = {}
            # rank 0's own work, on every rank's same steps, so that a failure of it reaches all (`World.on_main`)
            if due(k, hooks.probe_every):
                probing_started = time.perf_counter()
                row.update(world.on_main(lambda: hooks.probe(k) if hooks.probe is not None else {}) or {})
                clock += time.perf_counter() - probing_started
            if row and world.main:
                log.append(k, seconds, row)
            # what step k keeps and draws comes before its checkpoint: a run stopped in between takes it again
            if hooks.keep is not None and due(k, hooks.keep_every):
                world.on_main(lambda: hooks.keep(k, seconds))
            if due(k, config.sample_every) or k == config.max_steps:
                sampling_started = time.perf_counter()
                world.on_main(lambda: hooks.sample(k))
                clock += time.perf_counter() - sampling_started
            stopping = world.any(stop.requested)
            if due(k, config.save_every) or k == config.max_steps or stopping:
                save()
            if stopping:
                return TrainResult(out, start, k, config.max_steps, stopped=True)
    return TrainResult(out, start, k, config.max_steps)


def worker_message(message: str) -> str:
    """A data-loader process's error as its own line: PyTorch re-raises it in the main process with "Caught
    UserError in DataLoader worker process N" and the worker's traceback, whose last line is the error's."""
    if not message.startswith("Caught ") or "Traceback" not in message:
        return message
    last = message.strip().split("\n")[-1]
    return last.split(": ", 1)[1] if last.startswith(("UserError: ", "t2i.errors.UserError: ")) else last
