"""Evaluation on held-out data: negative log-likelihood in bits per dimension."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .diffusion import Diffusion, Model


@dataclass
class NLLResult:
    bits_per_dim: float
    standard_error: float
    num_images: int
    num_timesteps: int | None  # terms of the bound evaluated per image; None: all T

    def __str__(self) -> str:
        how = "all" if self.num_timesteps is None else f"L_0 and {self.num_timesteps - 1} random KL"
        return (f"NLL {self.bits_per_dim:.3f} ± {self.standard_error:.3f} bits/dim "
                f"({self.num_images} images, {how} terms of the bound)")


@torch.no_grad()
def nll_on_dataset(model: Model, diffusion: Diffusion, dataset, num_images: int = 256, batch_size: int = 64,
                   num_timesteps: int | None = None, variance: str = "beta", seed: int = 0,
                   device="cpu", progress: bool = True) -> NLLResult:
    """The variational bound (`Diffusion.nll_bits_per_dim`) averaged over the first images of `dataset`."""
    generator = torch.Generator().manual_seed(seed)
    num_images = min(num_images, len(dataset))
    values = []
    batches = range(0, num_images, batch_size)
    for start in tqdm(batches, desc="nll", disable=not progress):
        x0 = torch.stack([dataset[i] for i in range(start, min(start + batch_size, num_images))]).to(device)
        values.append(diffusion.nll_bits_per_dim(model, x0, num_timesteps, variance, generator, progress=progress))
    bpd = torch.cat(values).double()
    stderr = bpd.std().item() / math.sqrt(len(bpd)) if len(bpd) > 1 else float("nan")
    return NLLResult(bpd.mean().item(), stderr, len(bpd), num_timesteps)
