"""What every training run is configured by, and what a resumed run may change of it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..checks import MAX_SIDE
from ..data import SHAPES_SOURCES
from ..errors import UserError
from ..models.config import ModelConfig, check_divisible

STEPS = (1, 100_000_000)


@dataclass
class RunConfig(ModelConfig):
    """What every training run has; a training's config adds its own fields (and defaults), and
    their ranges to `RANGES` (checked when the config is made: `ModelConfig`)."""

    data: str = "shapes"
    image_size: int = 32
    batch_size: int = 64  # the batch of a step, whatever the number of processes that compute it
    micro_batch_size: int | None = None  # what one process computes at once (None: its whole share)
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

    # What a resumed run may take from the call resuming it: a longer run, a new learning rate
    # after a divergence or a plateau, a cooldown to end on, and where it runs (the micro-batch size
    # too: the steps are the same with any). The rest is the run's own.
    RESUME_CHANGES = ("max_steps", "lr", "cooldown_steps", "device", "num_workers", "micro_batch_size")
    RANGES = {"image_size": (1, MAX_SIDE), "batch_size": (1, 65536), "micro_batch_size": (1, 65536),
              "max_steps": STEPS, "lr": (0.0, 10.0, "above"),
              "warmup_steps": (0, STEPS[1]), "cooldown_steps": (0, STEPS[1]), "grad_clip": (0.0, 1e6),
              "ema_decay": (0.0, 1.0), "save_every": STEPS, "sample_every": STEPS, "log_every": STEPS,
              "num_samples": (1, 1024), "seed": (0, 2**63 - 1), "num_workers": (0, 256)}

    def __post_init__(self):
        super().__post_init__()
        if self.data not in SHAPES_SOURCES and Path(self.data).is_dir():  # whole, so it resumes from any folder
            self.data = str(Path(self.data).resolve())
        if self.ema_decay == 1:
            raise UserError("ema_decay must be below 1: at 1 the EMA never moves from the initial weights")

    @classmethod
    def resumed(cls, saved: dict, changes: dict, source: str = "the run's config.json, section train"):
        """The saved config of a run with `changes` (settings by name) applied; any change
        outside `RESUME_CHANGES` is refused, since the run's steps so far were taken without it.
        A bad saved value is named as the file's (`source`), a bad change as the caller's."""
        refused = sorted(set(changes) - set(cls.RESUME_CHANGES))
        if refused:
            raise UserError(f"a resumed run keeps its {', '.join(refused)}; it may change only "
                            f"{', '.join(cls.RESUME_CHANGES)}")
        return dataclasses.replace(cls.from_dict(saved, source), **changes)


def check_image_size(image_size: int, factor: int, why: str) -> None:
    """Refuse an image side that the networks cannot halve down evenly (`factor` = 2^halvings)."""
    check_divisible(image_size, image_size, factor, "image_size", f"{why}, so training needs", "choose another")
