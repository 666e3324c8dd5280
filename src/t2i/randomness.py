"""Noise drawn from one generator per example, so that an example's draws do not depend on the batch.

Sampling draws each image's noise from its own seed (an image is the same whatever batch it is made
in); training draws each example's timestep and noise from a seed of (run, step, position), so
that a step computes the same whether one process takes the whole batch or eight take a share each.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .errors import UserError

Generators = torch.Generator | Sequence[torch.Generator] | None


def randn(shape: Sequence[int], generator: Generators = None, device=None, dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of `shape`, drawn on the CPU so that seeds agree across devices.

    With a list of generators, sample i is drawn from generator i alone, so an image
    depends on its own seed and not on the batch it was generated in.
    """
    if generator is None or isinstance(generator, torch.Generator):
        noise = torch.randn(tuple(shape), generator=generator, dtype=dtype)
    else:
        if len(generator) != shape[0]:
            raise UserError(f"got {len(generator)} generators for a batch of {shape[0]}")
        noise = torch.stack([torch.randn(tuple(shape[1:]), generator=g, dtype=dtype) for g in generator])
    return noise.to(device)


def randint(high: int, generators: Sequence[torch.Generator], device=None) -> torch.Tensor:
    """One integer in [0, high) from each generator, [B] (torch.long)."""
    return torch.cat([torch.randint(high, (1,), generator=g) for g in generators]).to(device)


def rand(generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One uniform number in [0, 1) from each generator, [B]."""
    return torch.cat([torch.rand(1, generator=g) for g in generators])
