"""Where and in what precision networks run: one choice, shared by generation and training."""

from __future__ import annotations

import torch

from .errors import UserError


def resolve_device(name: str | torch.device) -> torch.device:
    """"auto" (a GPU if there is one, else the CPU) or a device torch knows."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise UserError(f"unknown device {name!r}: {error}") from None
