"""Negative log-likelihood in bits per dimension on held-out data: the variational bound
(Ho et al. 2020, eq. 5) averaged over a dataset's first images."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..checks import whole_number
from ..diffusion import Diffusion, Model


@dataclass
class NLLResult:
    bits_per_dim: float
    standard_error: float
    num_images: int
    num_timesteps: int | None  # terms of the bound evaluated per image; None: all T
    conditional: bool = False  # the bound is on -log p(x | y), each image given its caption

    def __str__(self) -> str:
        how = "all" if self.num_timesteps is None else f"L_0 and {self.num_timesteps - 1} random KL"
        text = (f"NLL {self.bits_per_dim:.3f} ± {self.standard_error:.3f} bits/dim "
                f"({self.num_images} images, {how} terms of the bound)")
        return text + (", of each image given its caption" if self.conditional else "")


@torch.no_grad()
def nll_on_dataset(model: Model, diffusion: Diffusion, dataset, num_images: int = 256, batch_size: int = 64,
                   num_timesteps: int | None = None, variance: str = "beta", seed: int = 0,
                   device="cpu", progress: bool = True,
                   condition: Callable[[list[str]], dict] | None = None) -> NLLResult:
    """The variational bound (`Diffusion.nll_bits_per_dim`) averaged over the first images of `dataset`.

    For a captioned dataset (items `(image, caption)`), `condition(captions)` gives the
    model's condition, e.g. `{"context": τ_θ(y)}`, and the bound is on -log p(x | y).
    """
    if num_timesteps is not None:  # more terms than T would be reported as random terms of a full bound
        whole_number("the number of terms", num_timesteps, 2, diffusion.num_timesteps)
    generator = torch.Generator().manual_seed(seed)
    num_images = min(num_images, len(dataset))
    values = []
    batches = range(0, num_images, batch_size)
    for start in tqdm(batches, desc="nll", disable=not progress):
        items = [dataset[i] for i in range(start, min(start + batch_size, num_images))]
        cond = {}
        if condition is not None:
            items, captions = zip(*items)
            cond = condition(list(captions))
        x0 = torch.stack(items).to(device)
        values.append(diffusion.nll_bits_per_dim(model, x0, num_timesteps, variance, generator, progress=progress,
                                                 **cond))
    bpd = torch.cat(values).double()
    stderr = bpd.std().item() / math.sqrt(len(bpd)) if len(bpd) > 1 else float("nan")
    return NLLResult(bpd.mean().item(), stderr, len(bpd), num_timesteps, condition is not None)
