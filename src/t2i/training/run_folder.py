"""A run folder, which survives being stopped.

It holds the model to use (`config.json` + one safetensors file per network: the EMA
weights), `training/` (raw weights, optimizer states, step and elapsed time: what resuming
reads), `loss.csv` and `loss.png`, and the training's own `samples/`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from ..checkpoints import (load_optimizer, load_state, load_weights, replace_dir, save_model, save_optimizer,
                           save_weights, weights_path)
from ..errors import UserError
from ..files import read_json, write_json

TRAINING_DIR = "training"


def new_state() -> dict:
    """The training state of a run that has not taken a step."""
    return {"step": 0, "seconds": 0.0}


def read_state(out: Path) -> dict:
    """The saved {"step", "seconds"} of a run's training state."""
    path = out / TRAINING_DIR / "state.json"
    state = read_json(path, "the training state is incomplete")
    return {"step": int(state["step"]), "seconds": float(state.get("seconds", 0.0))}


def check_new_run(out: Path) -> None:
    if (out / TRAINING_DIR).exists():
        raise UserError(f"{str(out)!r} already holds a training run: resume it, or choose another out_dir")


def save_checkpoint(out: Path, state: dict, model: torch.nn.Module, ema: Mapping[str, torch.nn.Module],
                    optimizers: Mapping[str, torch.optim.Optimizer], config: dict) -> None:
    """The EMA networks as the run's model folder, and the training state (`state` holds
    "step" and "seconds") beside it. The state is written to a temporary folder and swapped
    in whole, so a run stopped while saving keeps its previous checkpoint."""
    tmp = out / (TRAINING_DIR + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_weights(tmp / "model.safetensors", model.state_dict())
    for name, optimizer in optimizers.items():
        save_optimizer(tmp / f"{name}.safetensors", optimizer)
    write_json(tmp / "state.json", state)
    replace_dir(tmp, out / TRAINING_DIR)
    save_model(out, ema, {**config, "step": state["step"]})


def restore(out: Path, model: torch.nn.Module, ema: Mapping[str, torch.nn.Module],
            optimizers: Mapping[str, torch.optim.Optimizer]) -> dict:
    """Load the raw weights, optimizers and EMA networks a checkpoint saved; returns its state."""
    state_dir = out / TRAINING_DIR
    load_state(model, load_weights(state_dir / "model.safetensors"), state_dir)
    for name, optimizer in optimizers.items():
        load_optimizer(state_dir / f"{name}.safetensors", optimizer)
    for name, module in ema.items():
        load_state(module, load_weights(weights_path(out, name)), out)
    return read_state(out)
