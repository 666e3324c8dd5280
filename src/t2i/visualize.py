"""Figures of the forward process: an image along q(x_t | x_0), and its pixels at t = T."""

from __future__ import annotations

import math

import torch
from PIL import Image, ImageDraw

from .diffusion import Diffusion
from .images import make_grid
from .plots import font, histogram_plot

FORWARD_FRACTIONS = (0, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1)  # of T: 0, 50, ..., 800, 999 for T = 1000
HISTOGRAM_VALUES = 2**22  # pixel values drawn for the histogram at most: 16 MiB a copy, whatever the image size


def forward_timesteps(num_timesteps: int) -> list[int]:
    """The timesteps the figure shows: the same fractions of the process whatever its length, ending at T-1."""
    return sorted({min(round(f * num_timesteps), num_timesteps - 1) for f in FORWARD_FRACTIONS})


def forward_process_figure(x0: torch.Tensor, diffusion: Diffusion, timesteps=None,
                           seed: int = 0, histogram_draws: int = 64) -> tuple[Image.Image, dict]:
    """One image [3, H, W] diffused to each of `timesteps` (labelled; by default `forward_timesteps`), over
    the histogram of its pixels at t = T-1 (from `histogram_draws` draws of its noise, fewer past
    HISTOGRAM_VALUES) against the N(0, 1) density. Returns the figure and the moments
    of those pixels (mean, std; both should be ≈ 0 and 1)."""
    generator = torch.Generator().manual_seed(seed)
    timesteps = forward_timesteps(diffusion.num_timesteps) if timesteps is None else \
        [t for t in timesteps if t < diffusion.num_timesteps]
    batch = x0.expand(len(timesteps), *x0.shape)
    noisy = diffusion.q_sample(batch, torch.tensor(timesteps), torch.randn(batch.shape, generator=generator))
    strip = make_grid(noisy, ncols=len(timesteps))
    cell = max(96, x0.shape[-1])
    width = cell * len(timesteps)
    strip = strip.resize((width, int(width * strip.height / strip.width)), Image.NEAREST)
    labelled = Image.new("RGB", (strip.width, strip.height + 20), "white")
    labelled.paste(strip, (0, 20))
    draw = ImageDraw.Draw(labelled)
    for i, t in enumerate(timesteps):
        draw.text((i * cell + cell / 2, 10), f"t = {t}", fill="black", font=font(), anchor="mm")

    histogram_draws = max(1, min(histogram_draws, HISTOGRAM_VALUES // x0.numel()))  # a large image needs fewer
    last = torch.full((histogram_draws,), diffusion.num_timesteps - 1)
    pixels = diffusion.q_sample(x0.expand(histogram_draws, *x0.shape), last,
                                torch.randn((histogram_draws, *x0.shape), generator=generator)).flatten()
    edges = torch.linspace(-4, 4, 41)
    counts = torch.histc(pixels, bins=40, min=-4, max=4)
    density = counts / (pixels.numel() * (edges[1] - edges[0]))
    xs = torch.linspace(-4, 4, 200)
    pdf = torch.exp(-xs**2 / 2) / math.sqrt(2 * math.pi)
    stats = {"mean": pixels.mean().item(), "std": pixels.std().item()}
    hist = histogram_plot(edges.tolist(), density.tolist(), (xs.tolist(), pdf.tolist()),
                          f"pixels at t = {diffusion.num_timesteps - 1}: "
                          f"mean {stats['mean']:.3f}, std {stats['std']:.3f}",
                          "pixel value", "N(0, 1) density")
    figure = Image.new("RGB", (max(labelled.width, hist.width), labelled.height + hist.height), "white")
    figure.paste(labelled, (0, 0))
    figure.paste(hist, ((figure.width - hist.width) // 2, labelled.height))
    return figure, stats


